"""Export and verify on tiny models (CPU only): an AE and a MobileNetV2 trained for seconds on
the small fan corpus, exported to every artifact, checked by the agent's bundle reader and
scored through the agent's scorer against torch fp32."""

import json
import shutil

import numpy as np
import pytest
import torch

from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.scorer import BundleScorer
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.cli import main as export_main
from harken.export.graphs import ExportError, fold_batchnorm, load_graph
from harken.export.verify import verify
from harken.training.data.corpus import scan
from harken.training.methods import METHODS, make_method
from tests.export.per_artifact import assert_float_refit_is_the_runs, assert_int8_scores_with_its_own

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_export_bundle")

# Seconds of training, but enough batch-norm updates that the embedding is not constant.
TINY = {"ae": ["epochs=2"],
        "mobilenetv2": ["epochs=2", "windows_per_epoch=512", "batch_size=16", "width=0.35",
                        "kmeans=4"],
        "mobilenetv2-dual": ["epochs=2", "windows_per_epoch=512", "batch_size=16",
                             "width=0.35", "kmeans=4"]}
# A seconds-old MobileNetV2's clip embeddings differ by less than int8 rounding, so its
# score order says nothing about quantization; its int8 artifacts are checked at the output
# level instead (test_int8_classifier_outputs_follow_fp32). docs/results.md has the
# trained models' score-level figures.
MIN_INT8_SPEARMAN = {"ae": 0.9}


@pytest.fixture(scope="module")
def runs(small_fan, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    clips = scan(small_fan, ["fan"], "train")
    for name, sets in TINY.items():
        make_method(name, sets).train(clips, root / name / "fan", progress=False)
    return root


@pytest.fixture(scope="module")
def bundles(runs, small_fan, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    for name in TINY:
        write_bundle(runs / name / "fan", out / name, small_fan, ExportOptions(precision="both"))
    return out


def test_the_mobilenet_family_and_the_mse_ae_keep_the_runs_arrays(bundles):
    """No arrays per artifact (docs/export.md "Rule arrays per artifact"): a k-means bank
    refitted on int8 embeddings has other centres, which put the int8 scores further from
    torch's, not nearer; the mse rule holds no statistics."""
    for name in TINY:
        assert open_bundle(bundles / name).manifest.scoring.per_artifact == {}, name


def test_an_ae_mahalanobis_int8_artifact_scores_with_moments_of_its_own_residuals(
        small_fan, tmp_path):
    """The selective Mahalanobis rule's means and precisions: refitted on the float
    artifact's residuals (input minus reconstruction) of the fit clips they are the run's;
    the int8 artifact ships its own."""
    make_method("ae-mahalanobis", ["epochs=2"]).train(scan(small_fan, ["fan"], "train"),
                                                      tmp_path / "run", progress=False)
    out = write_bundle(tmp_path / "run", tmp_path / "b", small_fan,
                       ExportOptions(formats=("onnx",), precision="both"))
    method = METHODS["ae-mahalanobis"].load(tmp_path / "run")
    assert method.device_rule() == "mahalanobis"
    assert_float_refit_is_the_runs(out, method, small_fan, "fan", rtol=1e-3)
    assert_int8_scores_with_its_own(out, {"means", "precisions"})


def test_a_run_trained_skipping_a_damaged_clip_exports_from_its_own_corpus(small_fan,
                                                                            tmp_path, capsys):
    """Was: int8 calibration, the rule arrays per artifact and the clip length scanned the
    run's corpus without leaving out what training had: export refused the run's own
    corpus ('... pass --skip-bad-clips', a flag export does not have)."""
    from harken.training.cli import main as train_main
    corpus = tmp_path / "corpus"
    shutil.copytree(small_fan, corpus, symlinks=True)
    (corpus / "fan" / "train" / "section_00_source_train_normal_9999.wav").write_bytes(
        b"RIFF, not a WAV")
    run = tmp_path / "runs"
    assert train_main(["train", "--method", "ae-mahalanobis", "--data", str(corpus),
                       "--machine", "fan", "--out", str(run), "--set", "epochs=1",
                       "--skip-bad-clips", "--quiet"]) == 0
    out = tmp_path / "b"
    assert export_main([str(run / "fan"), "--out", str(out), "--calib", str(corpus),
                        "--formats", "onnx", "--precision", "both"]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["threshold"]["interval_s"] == 10.0     # the clip length was read
    method = METHODS["ae-mahalanobis"].load(run / "fan")
    # refitted on training's clips, split as training split them
    assert_float_refit_is_the_runs(out, method, corpus, "fan", rtol=1e-3, skip_bad=True)
    assert_int8_scores_with_its_own(out, {"means", "precisions"})


def test_folding_batchnorm_keeps_the_outputs(runs):
    for name in TINY:
        graph = load_graph(runs / name / "fan")
        original = graph.method.model.eval()
        x = torch.randn((3, *graph.input_shape[1:]))
        assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                       for m in graph.module.modules())
        with torch.no_grad():
            a, b = original(x), graph.module(x)
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        for u, v in zip(a, b):
            assert torch.allclose(u, v, atol=1e-4, rtol=1e-4)
    assert fold_batchnorm(original) is not original


def test_bundle_holds_every_artifact_with_checked_files(bundles):
    for name, outputs, rule in (("ae", ["reconstruction"], "mse"),
                                ("mobilenetv2", ["logits", "embedding"], "embedding"),
                                ("mobilenetv2-dual", ["logits", "embedding"], "embedding")):
        bundle = open_bundle(bundles / name)
        m = bundle.manifest.model_dump()
        assert set(bundle.artifacts) == {"onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"}
        assert m["outputs"] == outputs and m["scoring"]["rule"] == rule
        assert m["model"]["machine"] == "fan" and m["model"]["sections"] == [0, 1]
        assert m["threshold"]["value"] == pytest.approx(m["normal_scores"]["threshold"])
        assert m["artifacts"]["onnx-int8"]["calibration"]["windows"] == 300
        for entry in [*m["artifacts"].values(), *m["arrays"].values()]:
            assert len(entry["sha256"]) == 64 and entry["size"] > 0
        fp32 = bundle.artifacts["onnx-fp32"].path.stat().st_size
        for kind in ("onnx-int8", "tflite-int8"):
            assert bundle.artifacts[kind].path.stat().st_size < 0.45 * fp32
    tflite = open_bundle(bundles / "mobilenetv2").artifacts["tflite-int8"]
    assert tflite.input_shape == (1, 128, 64, 1)          # NHWC, float I/O by default
    # the dual-input network's image: 128 mel rows, then the 513 spectrum bins
    assert open_bundle(bundles / "mobilenetv2-dual").artifacts["tflite-int8"].input_shape == \
        (1, 128 + 513, 64, 1)


def test_verify_scores_every_artifact_like_torch(bundles, small_fan):
    for name in TINY:
        checks = {c.artifact: c for c in verify(open_bundle(bundles / name), small_fan,
                                                max_clips=24, progress=False)}
        assert set(checks) == {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-int8",
                               "tflite-fp32"}
        for kind in ("onnx-fp32", "tflite-fp32"):
            assert checks[kind].spearman > 0.999 and checks[kind].max_rel_error < 1e-3, kind
        for kind in ("onnx-int8", "tflite-int8"):
            if name in MIN_INT8_SPEARMAN:
                assert checks[kind].spearman > MIN_INT8_SPEARMAN[name], (kind, checks[kind])
                assert abs(checks[kind].official - checks["torch-fp32"].official) < 0.05
            assert np.isfinite(checks[kind].official)
            assert checks[kind].latency_ms > 0
            assert 0 < checks[kind].size_vs_onnx_fp32 < 0.45


def test_int8_classifier_outputs_follow_fp32(bundles, small_fan):
    from harken.agent.features import windows
    from harken.agent.model.scorer import model_input
    from harken.training.data.windows import clip_features
    bundle = open_bundle(bundles / "mobilenetv2")
    feats = clip_features(scan(small_fan, ["fan"], "test")[:3], bundle.spec, progress=False)
    ws = np.concatenate([windows(f, bundle.spec)[::8] for f in feats])
    out = {}
    for kind in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        scorer = BundleScorer(bundle, 0, kind)
        out[kind] = np.stack([scorer.backend.run(model_input(w, scorer.artifact.input_shape))
                              ["logits"][0] for w in ws])
    ref = out["onnx-fp32"]
    for kind in ("onnx-int8", "tflite-int8"):
        err = np.abs(out[kind] - ref).max()
        assert err < 0.1 * np.ptp(ref), (kind, err, np.ptp(ref))
        assert np.corrcoef(out[kind].ravel(), ref.ravel())[0, 1] > 0.99


def test_cli_export_tar_and_verify_json(runs, small_fan, tmp_path, capsys):
    out = tmp_path / "b"
    assert export_main([str(runs / "ae" / "fan"), "--out", str(out), "--calib", str(small_fan),
                        "--formats", "tflite", "--int8-io", "--tar"]) == 0
    printed = capsys.readouterr().out
    assert "tflite-int8" in printed and "tarball:" in printed
    bundle = open_bundle(tmp_path / "b.tar.gz", extract_to=tmp_path / "unpacked")
    art = bundle.artifacts["tflite-int8"]
    assert art.input_dtype == "int8" and art.input_quant[0] > 0
    assert set(bundle.artifacts) == {"tflite-int8"}       # onnx-fp32 only as a reference: gone
    # 8 clips of an AE trained for seconds, int8 input and output: tolerances to suit it
    # (the defaults, official within 0.01 and Spearman >= 0.99, are for trained models)
    assert export_main(["verify", str(out), "--data", str(small_fan), "--max-clips", "8",
                        "--json", "--official-tolerance", "0.2", "--min-spearman", "0.8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["artifact"] for r in rows] == ["torch-fp32", "tflite-int8"]
    assert rows[1]["spearman"] > 0.8 and rows[1]["verdict"] == "PASS"


def test_scorer_refuses_a_section_the_bundle_does_not_have(bundles):
    with pytest.raises(BundleError, match="section 07 is not among them"):
        BundleScorer(open_bundle(bundles / "ae"), section=7)


# -- refusals ------------------------------------------------------------------------------

def _copy(bundles, tmp_path, name="ae"):
    target = tmp_path / name
    shutil.copytree(bundles / name, target)
    return target


def _edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def test_corrupt_file_is_refused_by_name_and_field(bundles, tmp_path, capsys):
    b = _copy(bundles, tmp_path)
    data = bytearray((b / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: sha256 does not match .*"
                                          r"artifacts\.onnx-int8\.sha256"):
        open_bundle(b)
    assert export_main(["verify", str(b), "--data", str(tmp_path)]) == 2
    assert "sha256 does not match" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema_version=99), "field 'schema_version' is 99"),
    (lambda m: m["feature_spec"].update(log_rule="natural"), "feature_spec"),
    (lambda m: m["feature_spec"].update(n_mels="many"), "n_mels"),
    (lambda m: m["artifacts"]["onnx-int8"]["input"].update(shape=[1, 320]),
     r"artifacts\.onnx-int8\.input\.shape is \[1, 320\]"),
    (lambda m: m["scoring"].update(rule="vibes"), "field 'scoring.rule' is 'vibes'"),
    (lambda m: m["artifacts"]["onnx-int8"].pop("sha256"), "field 'sha256' is missing"),
    (lambda m: m["arrays"].update(evil={"path": "../../etc/passwd", "size": 1, "sha256": "0"}),
     "leaves the bundle"),
])
def test_malformed_manifest_is_refused_naming_the_field(bundles, tmp_path, edit, message):
    b = _copy(bundles, tmp_path)
    _edit_manifest(b, edit)
    with pytest.raises(BundleError, match=message):
        open_bundle(b)


def test_a_section_naming_too_few_arrays_for_its_rule_is_refused_naming_the_manifest(
        bundles, tmp_path):
    b = _copy(bundles, tmp_path, "mobilenetv2")
    # an array no int8 artifact has its own of (the targets' flags are the run's)
    _edit_manifest(b, lambda m: m["scoring"]["sections"]["00"].pop("bank_target"))
    with pytest.raises(BundleError, match=r"manifest\.json: scoring\.sections\.00( with "
                                          r"scoring\.per_artifact\.[a-z0-9-]+\.00)?: score rule "):
        open_bundle(b).rule(0)


def test_model_whose_real_input_differs_from_the_manifest_is_refused(bundles, tmp_path):
    b = _copy(bundles, tmp_path, "mobilenetv2")
    # same number of values, other shape: the manifest check passes, the backend's does not
    _edit_manifest(b, lambda m: m["artifacts"]["tflite-int8"]["input"].update(
        shape=[1, 1, 128, 64]))
    bundle = open_bundle(b)
    with pytest.raises(BundleError, match=r"model input shape is \[1, 128, 64, 1\]"):
        BundleScorer(bundle, 0, "tflite-int8")
    with pytest.raises(BundleError, match="no artifact 'onnx-int9'"):
        bundle.artifact("onnx-int9")


def test_export_refuses_bad_requests(runs, tmp_path, small_fan):
    with pytest.raises(ExportError, match="at least 200 windows"):
        ExportOptions(calibration_windows=50)
    with pytest.raises(ExportError, match="choose from"):
        ExportOptions(formats=("coreml",))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        write_bundle(runs / "ae" / "fan", tmp_path / "full", small_fan)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(ExportError, match="only .* windows"):
        write_bundle(runs / "ae" / "fan", tmp_path / "new", small_fan,
                     ExportOptions(calibration_windows=10 ** 6))


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv2-dual"])
def test_embedding_rule_on_the_device_matches_training(bundles, runs, small_fan, name):
    """The classifier's embedding score through onnx fp32 + agent/model/rules equals training's
    own score of the same clip (the dual-input network's too: the agent's front end gives
    the spectrum rows its spectrum branch reads)."""
    from harken.training.methods import METHODS
    from harken.training.data.windows import clip_features
    bundle = open_bundle(bundles / name)
    clips = scan(small_fan, ["fan"], "test")[:4]
    method = METHODS[name].load(runs / name / "fan")
    expected = method.score(clips, progress=False)
    feats = clip_features(clips, bundle.spec, progress=False)
    got = [BundleScorer(bundle, c.section, "onnx-fp32").score_logmel(f) for c, f in zip(clips, feats)]
    # float32 both ways, but onnxruntime and torch sum in different orders: ~1e-6 relative
    # per layer, ~1e-4 after 17 blocks and a distance to the nearest of ~100 neighbours (a
    # CI run saw 1.3e-4). A wrong rule or wrong bank is off by far more than 1e-3.
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_compacting_the_int8_onnx_changes_no_output_and_drops_the_padding(bundles):
    import onnx
    import onnxruntime as ort

    from harken.export.onnx_export import compact, quantize_int8
    from harken.export.verify import quantization_bytes
    fp32 = bundles / "mobilenetv2" / "model.fp32.onnx"
    calib = np.random.default_rng(0).normal(size=(8, 1, 1, 128, 64)).astype(np.float32)
    raw = quantize_int8(fp32, calib, bundles / "raw.onnx", compacted=False)
    small = bundles / "small.onnx"
    onnx.save(compact(onnx.load(str(raw))), str(small))
    onnx.checker.check_model(str(small))
    model = onnx.load(str(small))
    int32 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    assert int32                                          # quantized biases are there...
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and len(n.input) == 3 and n.input[2] in int32]   # ...without zero points
    assert max(len(i.name) for i in model.graph.initializer) <= 6
    assert small.stat().st_size < 0.95 * raw.stat().st_size
    for x in calib:
        a = ort.InferenceSession(str(raw)).run(None, {"input": x})
        b = ort.InferenceSession(str(small)).run(None, {"input": x})
        assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert 0 < quantization_bytes(small) < quantization_bytes(raw) < raw.stat().st_size
    assert quantization_bytes(fp32) is None
    assert quantization_bytes(bundles / "mobilenetv2" / "model.int8.tflite") > 0


def test_spectral_knn_bundle_is_float_and_scores_as_training_does(small_fan, tmp_path, caplog):
    """A weightless graph (window moments) gets float artifacts, not int8, and says why; the
    agent's scorer, through ONNX Runtime and TFLite, gives the training code's scores."""
    run = tmp_path / "run"
    make_method("spectral-knn").train(scan(small_fan, ["fan"], "train"), run, progress=False)
    with caplog.at_level("INFO", logger="harken.export"):
        bundle = open_bundle(write_bundle(run, tmp_path / "bundle", small_fan, ExportOptions()))
    assert sorted(bundle.artifacts) == ["onnx-fp32", "tflite-fp32"]
    assert any("no weights" in r.getMessage() for r in caplog.records)
    assert "no weights" in bundle.manifest.reference["int8"]["note"]
    assert bundle.rule_name == "spectral-knn" and bundle.manifest.outputs == ["moments"]
    checks = {c.artifact: c for c in verify(bundle, small_fan, run, max_clips=24,
                                            progress=False)}
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert checks[kind].max_rel_error < 1e-3
        assert checks[kind].official == pytest.approx(checks["torch-fp32"].official, abs=1e-6)


def test_int8_onnx_runs_every_convolution_and_addition_alike_on_x86_and_arm64(bundles, tmp_path):
    """docs/export.md "Same scores on x86 and arm64": MobileNetV2's residual blocks read
    their input twice; with int8 activations onnxruntime on x86 left those convolutions in
    float (arm64 runs them integer), and its QLinearAdd rounds differently per CPU."""
    import collections

    import onnx
    import onnxruntime as ort

    from harken.export.onnx_export import quantize_int8
    fp32 = bundles / "mobilenetv2" / "model.fp32.onnx"
    assert any(n.op_type == "Add" for n in onnx.load(str(fp32)).graph.node)   # residuals
    calib = np.random.default_rng(0).normal(size=(8, 1, 1, 128, 64)).astype(np.float32)
    int8 = quantize_int8(fp32, calib, tmp_path / "int8.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "as-run.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ran = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "as-run.onnx")).graph.node)
    assert ran["QLinearConv"] > 0 and ran["Conv"] == 0, ran
    assert ran["Sum"] > 0 and ran["QLinearAdd"] == 0 and ran["Add"] == 0, ran


def test_only_float_additions_become_sums():
    """Sum has no integer form: an index computation's Add stays (the model still runs)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from harken.export.onnx_export import additions_as_sums
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Add", ["s", "zero"], ["s2"]),
             helper.make_node("Reshape", ["a", "s2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.zeros(2, np.int64), "zero")])
    model = additions_as_sums(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in model.graph.node] == ["Sum", "Shape", "Add", "Reshape"]
    onnx.checker.check_model(model)
    out = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.ones((1, 4), np.float32)})
    assert np.array_equal(out[0], np.full((1, 4), 2, np.float32))


def test_calibration_reads_more_clips_when_forty_hold_too_few_windows(small_fan):
    """AEGAN-AD's 128-frame patches: a default run on the standard corpus could not be
    exported (40 clips held 240 windows, 300 needed). The small corpus's clips hold two
    such windows each: 150 need 75 clips, more than all 90 cannot be had."""
    import dataclasses

    from harken.agent.features.spec import FeatureSpec
    from harken.export.graphs import calibration_windows
    spec = dataclasses.replace(FeatureSpec(), window_frames=128, window_hop=128)
    got = calibration_windows(small_fan, "fan", spec, 150)
    assert got.shape == (150, 128, spec.n_features)
    assert np.array_equal(got, calibration_windows(small_fan, "fan", spec, 150))   # seeded
    with pytest.raises(ExportError, match=r"only \d+ windows in all 90 training clips of "
                                          r"'fan' .*; 1000 needed"):
        calibration_windows(small_fan, "fan", spec, 1000)
