"""Rule arrays per artifact (docs/export.md "Rule arrays per artifact"): a method whose device
rule holds statistics of the network's outputs (training/method.py ``RefitsRuleArrays``) has
them fitted again, for each int8 artifact of a bundle, on what that artifact computes for
the run's training clips. The float artifacts keep the run's own arrays (they compute what
torch computed, to float rounding)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harken.agent.features import windows
from harken.agent.model.backends import open_backend
from harken.agent.model.bundle import Bundle
from harken.agent.model.scorer import model_input
from harken.export.graphs import ExportError
from harken.training.data.corpus import CorpusError, scan
from harken.training.data.windows import clip_features
from harken.training.method import RefitsRuleArrays, WindowOutputs

log = logging.getLogger("harken.export")

# what the refit reads of each artifact: its int8 forms (float ones compute as torch)
REFIT_KINDS = ("onnx-int8", "tflite-int8")


def artifact_outputs(bundle: Bundle, kind: str, feats: Sequence[np.ndarray],
                     names: Sequence[str] | None = None, progress: bool = False
                     ) -> list[WindowOutputs]:
    """Per clip, each output of artifact ``kind`` for the clip's windows, as the agent's
    backend gives them (one window per call: the artifacts' batch is 1), and ``input``:
    the model's input (a residual rule's statistics are of input minus output). A model that fails
    on a window or gives a non-finite value is refused naming its file and the clip
    (``names``: the clips' paths), before any statistics are fitted on it."""
    artifact = bundle.artifact(kind)
    backend = open_backend(artifact)
    per_clip = []
    for i, f in enumerate(tqdm(feats, desc=f"rule arrays for {kind}", disable=not progress,
                               leave=False)):
        clip = names[i] if names is not None else f"training clip {i}"
        rows = []
        for w in windows(f, bundle.spec):
            x = model_input(w, artifact.input_shape)
            try:
                rows.append({**backend.run(x), "input": x})
            except Exception as exc:      # noqa: BLE001 - each runtime raises its own types
                raise ExportError(f"{artifact.path}: the model fails on a window of {clip} "
                                  f"({exc})") from None
        out = {name: np.concatenate([np.asarray(r[name], dtype=np.float64).reshape(1, -1)
                                     for r in rows]) for name in rows[0]}
        bad = next((name for name, v in out.items() if not np.isfinite(v).all()), None)
        if bad is not None:
            raise ExportError(f"{artifact.path}: output '{bad}' is not finite on {clip}; "
                              f"its statistics cannot be fitted (export with --precision "
                              f"fp32 to ship the float model only)")
        per_clip.append(out)
    return per_clip


def refit_per_artifact(bundle: Bundle, method: object, root: Path, machine: str,
                       progress: bool = False, skip_bad: bool = False
                       ) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Artifact kind -> section -> the device rule's arrays fitted on that artifact's
    outputs for the training clips of ``machine`` under ``root`` (the clips the run was
    trained on: export has checked the corpus's fingerprint; ``skip_bad`` leaves out the
    clips a ``--skip-bad-clips`` run left out, so the fit clips are training's). Empty
    when the method fits no statistics of its outputs or the bundle has no int8 artifact."""
    kinds = [k for k in REFIT_KINDS if k in bundle.artifacts]
    if not kinds or not isinstance(method, RefitsRuleArrays):
        return {}
    try:
        clips = scan(Path(root), [machine], split="train", skip_bad=skip_bad)
    except CorpusError as exc:
        raise ExportError(f"rule arrays per artifact: {exc}") from None
    found = sorted({c.section for c in clips})
    if found != sorted(bundle.sections):
        raise ExportError(f"rule arrays per artifact: the training clips of '{machine}' under "
                          f"{root} have sections {found}, the run {bundle.sections}; export "
                          f"from the run's own corpus")
    feats = clip_features(clips, bundle.spec, progress=False)
    fitted: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for kind in kinds:
        log.info(f"rule arrays fitted on {kind}'s outputs for {len(clips)} training clips")
        arrays = method.refit_rule_arrays(clips, artifact_outputs(
            bundle, kind, feats, [str(c.path) for c in clips], progress))
        if arrays is None:                # the run's rule holds no statistics to refit
            return {}
        fitted[kind] = arrays
    return fitted
