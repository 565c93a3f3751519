"""Checks shared by the generative export tests on rule arrays per artifact (docs/export.md
"Rule arrays per artifact")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harken.agent.model.bundle import open_bundle
from harken.export.artifact_arrays import artifact_outputs
from harken.training.data.corpus import scan
from harken.training.data.windows import clip_features


def refit_on(bundle_dir: Path, method, corpus: Path, machine: str, kind: str,
             skip_bad: bool = False) -> dict[int, dict[str, np.ndarray]]:
    """The method's refit of its rule arrays on artifact ``kind``'s outputs for the
    training clips (``skip_bad``: those a ``--skip-bad-clips`` run kept)."""
    bundle = open_bundle(bundle_dir)
    clips = scan(corpus, [machine], "train", skip_bad=skip_bad)
    feats = clip_features(clips, bundle.spec, progress=False)
    return method.refit_rule_arrays(clips, artifact_outputs(bundle, kind, feats))


def assert_float_refit_is_the_runs(bundle_dir: Path, method, corpus: Path, machine: str,
                                   rtol: float = 1e-4, skip_bad: bool = False) -> None:
    """Refitted on the float ONNX artifact's outputs (torch's numbers to float rounding),
    every section's arrays are the run's own: the refit is training's recipe, on the same
    clips in the same order."""
    refit = refit_on(bundle_dir, method, corpus, machine, "onnx-fp32", skip_bad)
    assert sorted(refit) == sorted(open_bundle(bundle_dir).sections)
    for s, arrays in refit.items():
        own = method.rule_arrays(s)
        assert sorted(arrays) == sorted(own)
        for role, a in arrays.items():
            np.testing.assert_allclose(a, own[role], rtol=rtol, atol=rtol * np.abs(
                own[role]).max(), err_msg=f"section {s:02d} array {role}")


def assert_int8_scores_with_its_own(bundle_dir: Path, roles: set[str]) -> None:
    """Each int8 artifact names its own arrays of ``roles`` in every section, which differ
    from the float artifacts' (the run's); the rule the agent builds for it holds them."""
    bundle = open_bundle(bundle_dir)
    per = bundle.manifest.scoring.per_artifact
    int8 = [k for k in bundle.artifacts if k.endswith("int8")]
    assert int8 and sorted(per) == sorted(int8)
    for s in bundle.sections:
        key = f"{s:02d}"
        float_arrays = bundle.rule(s, "onnx-fp32").arrays
        for kind in int8:
            assert set(per[kind][key]) == roles, (kind, per[kind])
            arrays = bundle.rule(s, kind).arrays
            for role in roles:
                np.testing.assert_array_equal(arrays[role], bundle.arrays[per[kind][key][role]])
                assert arrays[role].shape == float_arrays[role].shape
                assert not np.array_equal(arrays[role], float_arrays[role]), (kind, role)
