"""AEGAN-AD as a device bundle (docs/export.md "AEGAN-AD"): each of its nine scores through
its device graph and numpy rule equals the training code's, the TensorFlow graph of each
score family equals torch, the tiny run's bundle (score ``auto`` picks d-lof) verifies, and
the d-lof rule is scikit-learn's LocalOutlierFactor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harken.agent.features import windows
from harken.agent.model.bundle import open_bundle
from harken.agent.model.rules import make_rule, outputs_of
from harken.agent.model.rules.aegan import local_outlier_factor
from harken.agent.model.scorer import BundleScorer, model_input
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.cli import main as export_main
from harken.export.graphs import InferenceGraph
from harken.export.verify import verify
from harken.testkit.data import GENERATIVE
from harken.training.aegan import RULES, AeganMethod
from harken.training.data.corpus import scan
from harken.training.data.windows import clip_features
from harken.training.methods import make_method
from harken.training.runs import RunError
from tests.export.per_artifact import assert_float_refit_is_the_runs, assert_int8_scores_with_its_own

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_aegan_export")

OPTIONS = ExportOptions(precision="both", calibration_windows=200)   # the small corpus: 240


@pytest.fixture(scope="module")
def built(generative_bundle, small_fan, tmp_path_factory):
    """(run, bundle of every artifact): the shared test bundle and the run beside it where
    it was built here, else a run trained and exported here (a prebuilt bundle has no run)."""
    shared = generative_bundle("aegan-ad")
    run = shared.parent / "run"
    if (run / "run.json").is_file() and "onnx-fp32" in open_bundle(shared).artifacts:
        return run, shared
    root = tmp_path_factory.mktemp("aegan")
    make_method("aegan-ad", list(GENERATIVE["aegan-ad"].settings)).train(
        scan(small_fan, ["fan"], "train"), root / "run", progress=False)
    return root / "run", write_bundle(root / "run", root / "bundle", small_fan, OPTIONS)


@pytest.fixture(scope="module")
def method(built):
    return AeganMethod.load(built[0])


@pytest.fixture(scope="module")
def clips(small_fan):
    """Test clips of both sections, normal and anomalous."""
    return scan(small_fan, ["fan"], "test")[::6][:8]


@pytest.fixture
def chosen(method):
    """Set the loaded run's score (as a run trained with ``score=...`` would have it)."""
    before = method.chosen

    def choose(rule: str) -> AeganMethod:
        method.chosen = rule
        return method
    yield choose
    method.chosen = before


@pytest.mark.parametrize("score", RULES)
def test_each_device_rule_on_its_graph_scores_as_training(score, chosen, clips):
    """The device graph (torch) and the numpy rule ``aegan-<score>`` with the run's arrays
    give training's own clip score (same float32 network; the rule in float64)."""
    m = chosen(score)
    graph = m.device_graph()
    assert graph.outputs == outputs_of(m.device_rule()) and m.device_rule() == f"aegan-{score}"
    expected = m.score(clips, progress=False, rule=score)
    got = []
    for clip, feats in zip(clips, clip_features(clips, m.spec, progress=False)):
        rule = make_rule(m.device_rule(), m.rule_arrays(clip.section))
        x = np.concatenate([model_input(w, graph.input_shape) for w in windows(feats, m.spec)])
        with torch.no_grad():
            out = graph.module(torch.from_numpy(x))
        y = np.concatenate([o.numpy().reshape(len(x), -1) for o in out], axis=1)
        assert rule.check_model(x[0].size, y.shape[1]) is None
        got.append(rule.reduce(rule.evidence(x.reshape(len(x), -1), y)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("family", ["x", "z", "d"])
def test_tensorflow_graph_of_each_family_equals_torch(family, chosen, clips):
    from harken.export.tflite_export import nhwc_shape, tf_function
    m = chosen({"x": "x-l2", "z": "z-cos", "d": "d-maha"}[family])
    g = m.device_graph()
    fn = tf_function(InferenceGraph(g.module, g.input_shape, g.outputs, m))
    feats = clip_features(clips[:1], m.spec, progress=False)[0]
    for w in windows(feats, m.spec)[:2]:
        x = model_input(w, g.input_shape)
        with torch.no_grad():
            want = [o.numpy() for o in g.module(torch.from_numpy(x))]
        got = fn(x.reshape(nhwc_shape(g.input_shape)))
        for name, a in zip(g.outputs, want):
            np.testing.assert_allclose(got[name].numpy().reshape(a.shape), a, atol=2e-4, rtol=1e-3,
                                       err_msg=name)


def test_lof_in_numpy_is_scikit_learns(method, clips):
    """The device's LOF from the exported arrays gives scikit-learn's (novelty) score for
    points near the bank and far from it."""
    arrays = method.rule_arrays(0, "d-lof")
    bank = arrays["bank"]
    rng = np.random.default_rng(0)
    points = np.concatenate([bank[:5] + 0.01 * rng.normal(size=bank[:5].shape) * bank.std(0),
                             bank.mean(0) + rng.normal(size=(3, bank.shape[1])) * bank.std(0)])
    expected = -method.lof[0].score_samples(points)
    got = local_outlier_factor(points, bank, arrays["bank_kdist"], arrays["bank_lrd"],
                               int(arrays["k"][0]))
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_d_lof_with_too_few_training_clips_is_refused_at_export(method, monkeypatch):
    monkeypatch.setitem(method.lof, 0, None)
    with pytest.raises(RunError, match="section 00 has .* training clips; d-lof scores every "
                                       "clip 0 with fewer than 3"):
        method.rule_arrays(0, "d-lof")


def test_an_auto_run_carries_its_choice_and_ships_the_rule_it_chose(small_fan, tmp_path):
    """Which rule `auto` picks on a one-epoch run is float noise (it may differ between
    machines); that the bundle ships the chosen one, with the record of the choice, is not."""
    make_method("aegan-ad", ["epochs=1"]).train(scan(small_fan, ["fan"], "train"),
                                                 tmp_path / "run", progress=False)
    bundle = open_bundle(write_bundle(tmp_path / "run", tmp_path / "bundle", small_fan,
                                      ExportOptions(formats=("onnx",), precision="fp32")))
    scoring = bundle.manifest.model_dump()["scoring"]
    chosen = scoring["choice"]["rule"]
    assert chosen in RULES and set(scoring["choice"]["pseudo_anomaly_auc"]) == set(RULES)
    assert bundle.rule_name == f"aegan-{chosen}" and scoring["training_score"] == chosen
    family = {"x": ["reconstruction"], "z": ["latent", "latent_aux"], "d": ["embedding"]}
    assert bundle.manifest.model_dump()["outputs"] == family[chosen[0]]


def test_bundle_carries_its_rule_and_only_the_embedding(built):
    bundle = open_bundle(built[1])
    m = bundle.manifest.model_dump()
    assert set(bundle.artifacts) == {"onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"}
    assert m["outputs"] == ["embedding"] and bundle.rule_name == "aegan-d-lof"
    assert m["scoring"]["training_score"] == "d-lof"
    assert bundle.artifacts["tflite-int8"].input_shape == (1, 128, 128, 1)
    fp32 = bundle.artifacts["onnx-fp32"].path.stat().st_size
    for kind in ("onnx-int8", "tflite-int8"):
        assert bundle.artifacts[kind].path.stat().st_size < 0.45 * fp32


def test_int8_artifacts_score_with_lof_arrays_fitted_on_their_own_embeddings(built, method,
                                                                            small_fan):
    """docs/export.md "Rule arrays per artifact": refitted on the float artifact's
    embeddings the d-lof arrays are the run's own (the refit is training's recipe); each
    int8 artifact ships its own bank, k-distances and densities (k stays the run's)."""
    assert method.default_rule == "d-lof"
    assert_float_refit_is_the_runs(built[1], method, small_fan, "fan")
    assert_int8_scores_with_its_own(built[1], {"bank", "bank_kdist", "bank_lrd"})


def test_verify_fp32_artifacts_score_as_torch(built, small_fan):
    run, b = built
    checks = {c.artifact: c for c in verify(open_bundle(b), small_fan, run, max_clips=24,
                                            progress=False)}
    assert set(checks) == {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"}
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert checks[kind].spearman > 0.999 and checks[kind].max_rel_error < 1e-3, kind
    for kind in ("onnx-int8", "tflite-int8"):
        # a one-epoch GAN's clip embeddings differ by about int8 rounding, and LOF ranks
        # them: its int8 score order says little, so the outputs are checked below
        assert np.isfinite(checks[kind].official) and checks[kind].latency_ms > 0


def test_int8_embeddings_follow_fp32(built, small_fan):
    """As the seconds-trained MobileNet's int8 (test_export_bundle.py): the int8 artifacts'
    outputs against fp32's. Correlation 0.98, not 0.99: the GroupNorm's statistics in int8
    TFLite (mean, square, rsqrt as int8 ops) cost it more than ONNX Runtime's one
    InstanceNormalization (docs/export.md "AEGAN-AD")."""
    bundle = open_bundle(built[1])
    feats = clip_features(scan(small_fan, ["fan"], "test")[:3], bundle.spec, progress=False)
    ws = np.concatenate([windows(f, bundle.spec) for f in feats])
    out = {}
    for kind in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        scorer = BundleScorer(bundle, 0, kind)
        out[kind] = np.stack([scorer.backend.run(model_input(w, scorer.artifact.input_shape))
                              ["embedding"][0] for w in ws])
    ref = out["onnx-fp32"]
    for kind in ("onnx-int8", "tflite-int8"):
        err = np.abs(out[kind] - ref).max()
        assert err < 0.1 * np.ptp(ref), (kind, err, np.ptp(ref))
        assert np.corrcoef(out[kind].ravel(), ref.ravel())[0, 1] > 0.98, kind


def test_cli_exports_and_verifies_a_reconstruction_run(built, small_fan, tmp_path, capsys):
    """``harken-export RUN --out B`` then ``verify``, through the CLI, for a run whose score
    is x-l2 (score=auto changed in its run.json: the graph then ships the reconstruction)."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(built[0], run)
    info = json.loads((run / "run.json").read_text())
    info["score_rule"] = "x-l2"
    (run / "run.json").write_text(json.dumps(info))
    out = tmp_path / "b"
    assert export_main([str(run), "--out", str(out), "--calib", str(small_fan),
                        "--formats", "onnx", "--precision", "fp32"]) == 0
    bundle = open_bundle(out)
    assert bundle.rule_name == "aegan-x-l2" and bundle.manifest.outputs == ["reconstruction"]
    assert bundle.manifest.scoring.training_score == "x-l2"
    capsys.readouterr()
    assert export_main(["verify", str(out), "--data", str(small_fan), "--max-clips", "12",
                        "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["artifact"] for r in rows] == ["torch-fp32", "onnx-fp32"]
    assert rows[1]["verdict"] == "PASS" and rows[1]["max_rel_error"] < 1e-3


def test_with_another_presets_frames_it_fuses_with_spectral_knn(small_fan, tmp_path):
    """``frames=spectral-knn``: the patches are cut from spectral-knn's frames (n_fft 1024,
    128 mels), so a fusion of the two shares one front end; its bundle scores as the fusion
    run does. The aegan-ad preset's own frames (n_fft 2048) are refused as a member."""
    from harken.common.errors import UsageError
    with pytest.raises(UsageError, match="differ in 'n_fft'"):
        make_method("fusion", ["members=spectral-knn,aegan-ad"])
    with pytest.raises(UsageError, match="frames must be a feature preset"):
        make_method("aegan-ad", ["frames=nope"])
    run = tmp_path / "run"
    make_method("fusion", ["members=spectral-knn,aegan-ad", "aegan-ad.frames=spectral-knn",
                           "aegan-ad.epochs=1", "aegan-ad.score=d-knn"]).train(
        scan(small_fan, ["fan"], "train"), run, progress=False)
    member = json.loads((run / "aegan-ad" / "run.json").read_text())
    assert member["feature_spec"]["n_fft"] == 1024 and member["feature_spec"]["window_frames"] == 128
    bundle = open_bundle(write_bundle(run, tmp_path / "bundle", small_fan,
                                      ExportOptions(formats=("onnx",), precision="fp32")))
    assert bundle.is_fused and sorted(bundle.members) == ["aegan-ad", "spectral-knn"]
    assert bundle.members["aegan-ad"].rule_name == "aegan-d-knn"
    checks = {c.artifact: c for c in verify(bundle, small_fan, max_clips=12, progress=False)}
    assert checks["onnx-fp32"].max_abs_error < 1e-4
