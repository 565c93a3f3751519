"""A score rule that reads several model outputs (agent/model/rules/base.py
``ScoreRule.outputs``): the scorer joins them per window in the rule's order, the manifest
refuses an artifact without one of them, and ``verify`` scores torch with the manifest's
``scoring.training_score`` when the device rule is named otherwise (issue 42's seam)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from harken.agent.features import windows  # noqa: E402
from harken.agent.model.bundle import BundleError, open_bundle, sha256_file  # noqa: E402
from harken.agent.model.rules import outputs_of  # noqa: E402
from harken.agent.model.rules.base import REGISTRY, ScoreRule, register  # noqa: E402
from harken.agent.model.scorer import BundleScorer, model_input  # noqa: E402

RULE = "test-two-outputs"


@pytest.fixture
def two_output_rule():
    """A test-only rule reading ``latent`` (the window scaled by 2) and ``latent_aux`` (its
    mean): evidence = [mean of the first part, the last value], interval = mean of their sum."""
    @register
    class TwoOutputs(ScoreRule):
        name, output, outputs = RULE, "latent", ("latent", "latent_aux")

        def check_model(self, input_width, output_width):
            return None if output_width == input_width + 1 else f"{input_width + 1} values"

        def evidence(self, inputs, output):
            y = np.asarray(output, dtype=np.float64)
            return np.stack([y[:, :-1].mean(axis=1), y[:, -1]], axis=1)

        def combine(self, evidence):
            return float(evidence.sum(axis=1).mean())
    try:
        yield TwoOutputs
    finally:
        REGISTRY.pop(RULE, None)


def _two_output_onnx(path, width: int) -> None:
    """latent = 2 x (width values), latent_aux = mean(x) (1 value), in that graph order."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])
    a = helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, width])
    b = helper.make_tensor_value_info("latent_aux", TensorProto.FLOAT, [1, 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["input", "two"], ["latent"]),
             helper.make_node("ReduceMean", ["input"], ["latent_aux"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "two", [x], [a, b], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _bundle(ae_bundle, out, outputs=("latent", "latent_aux")):
    """The AE bundle's feature spec and threshold around the two-output model and rule."""
    out.mkdir()
    m = json.loads((ae_bundle / "manifest.json").read_text())
    width = int(np.prod(m["artifacts"]["onnx-int8"]["input"]["shape"]))
    _two_output_onnx(out / "model.onnx", width)
    m["outputs"] = list(outputs)
    m["scoring"] = {"rule": RULE, "output": "latent", "sections": {}}
    m["arrays"], m["reference"] = {}, {}
    m["artifacts"] = {"onnx-fp32": {
        "path": "model.onnx", "size": (out / "model.onnx").stat().st_size,
        "sha256": sha256_file(out / "model.onnx"),
        "input": {"name": "input", "shape": [1, width], "dtype": "float32"},
        "outputs": {o: {"name": o} for o in outputs}}}
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_a_rule_reads_several_outputs_joined_in_order(two_output_rule, ae_bundle, tmp_path, rng):
    assert outputs_of(RULE) == ("latent", "latent_aux")
    assert outputs_of("mse") == ("reconstruction",)          # existing rules unchanged
    bundle = open_bundle(_bundle(ae_bundle, tmp_path / "b"))
    scorer = BundleScorer(bundle, bundle.sections[0], "onnx-fp32")
    logmel = rng.normal(-40, 10, (40, bundle.spec.n_mels)).astype(np.float32)
    got = scorer.score_logmel(logmel)
    xs = [model_input(w, bundle.artifact("onnx-fp32").input_shape).astype(np.float64)
          for w in windows(logmel, bundle.spec)]
    want = np.mean([(2 * x).mean() + x.mean() for x in xs])
    assert got == pytest.approx(want, rel=1e-5)
    rows = scorer.evidence(windows(logmel, bundle.spec))
    assert rows.shape == (len(xs), 2)
    np.testing.assert_allclose(rows[:, 1], [x.mean() for x in xs], rtol=1e-5)


def test_an_artifact_missing_one_of_the_rules_outputs_is_refused(two_output_rule, ae_bundle,
                                                                 tmp_path):
    path = _bundle(ae_bundle, tmp_path / "b", outputs=("latent",))
    with pytest.raises(BundleError, match=r"artifacts.onnx-fp32.outputs has \['latent'\]; "
                                          r"scoring rule 'test-two-outputs' needs 'latent_aux'"):
        open_bundle(path)


def test_a_model_whose_joined_outputs_have_the_wrong_width_is_refused(two_output_rule, ae_bundle,
                                                                     tmp_path):
    path = _bundle(ae_bundle, tmp_path / "b")
    m = json.loads((path / "manifest.json").read_text())
    width = m["artifacts"]["onnx-fp32"]["input"]["shape"][1]
    _two_output_onnx(path / "model.onnx", width)                 # same model, rule wants more
    two_output_rule.check_model = lambda self, i, o: None if o == i + 2 else f"{i + 2} values"
    bundle = open_bundle(path)
    # each output's width named, not only their total
    with pytest.raises(BundleError, match=rf"outputs 'latent' {width}, 'latent_aux' 1 values per "
                                          rf"window, but score rule 'test-two-outputs' .* needs "
                                          rf"{width + 2} values"):
        BundleScorer(bundle, bundle.sections[0], "onnx-fp32")


def test_verify_scores_torch_with_the_training_score_not_the_device_rule_name(small_fan, tmp_path):
    """spectral-knn's device rule is 'spectral-knn'; its run's training score ('fused' here)
    is what the manifest records and what verify scores torch with: with it the device
    artifact agrees with torch, and with another variant written instead it does not."""
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.export.verify import verify
    from harken.training.data.corpus import scan
    from harken.training.methods import make_method
    run = tmp_path / "run"
    make_method("spectral-knn", ["score=fused"]).train(scan(small_fan, ["fan"], "train"), run,
                                                       progress=False)
    opts = ExportOptions(formats=("onnx",), precision="fp32")
    path = write_bundle(run, tmp_path / "bundle", small_fan, opts)
    bundle = open_bundle(path)
    assert bundle.rule_name == "spectral-knn"
    assert bundle.manifest.scoring.training_score == "fused"
    fp32 = {c.artifact: c for c in verify(bundle, small_fan, run, max_clips=8, progress=False)}
    assert fp32["onnx-fp32"].max_rel_error < 1e-3

    other = tmp_path / "other"
    shutil.copytree(path, other)
    m = json.loads((other / "manifest.json").read_text())
    m["scoring"]["training_score"] = "plain"
    (other / "manifest.json").write_text(json.dumps(m))
    checks = {c.artifact: c for c in verify(open_bundle(other), small_fan, run, max_clips=8,
                                            progress=False)}
    assert checks["onnx-fp32"].max_rel_error > 1e-2
    assert checks["torch-fp32"].official != fp32["torch-fp32"].official or \
        checks["onnx-fp32"].spearman < fp32["onnx-fp32"].spearman
