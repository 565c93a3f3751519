"""OEVAE as a device bundle (docs/export.md "OEVAE"): its TensorFlow layers against torch,
the device graph against the training network, the device rules against the training
score on the same numbers, and a run trained for seconds on the fan corpus with outliers
exported to every artifact, verified, and scored by `harken score` like torch scores it
(the device-side checks and refusals: tests/agent/test_oevae_bundle.py)."""

import json

import numpy as np
import pytest
import torch

from harken.agent.cli import main as harken
from harken.common.errors import HarkenError
from harken.agent.model.bundle import open_bundle
from harken.agent.model.rules import make_rule, outputs_of
from harken.agent.model.scorer import BundleScorer, model_input
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.graphs import InferenceGraph, fold_batchnorm, load_graph
from harken.export.verify import verify
from harken.testkit import data
from harken.training.data.corpus import scan
from harken.training.methods import make_method
from harken.training.models.oevae import Oevae, OevaeDevice
from harken.training.oevae import DEVICE_RULES, OevaeMethod
from tests.export.per_artifact import assert_float_refit_is_the_runs, assert_int8_scores_with_its_own

pytestmark = pytest.mark.xdist_group("test_oevae_export")


@pytest.fixture(scope="module")
def corpus(fan_with_outliers):
    return fan_with_outliers


@pytest.fixture(scope="module")
def run(generative_bundle, corpus, tmp_path_factory):
    """The run beside the shared bundle when it was built in this test run, else (a
    prebuilt bundle) one trained here with the same tiny settings."""
    beside = generative_bundle("oevae").parent / "run"
    if (beside / "run.json").exists():
        return beside
    return data.trained(corpus, "oevae", data.GENERATIVE["oevae"].settings,
                        tmp_path_factory.mktemp("oevae") / "run")


@pytest.fixture(scope="module")
def both(run, corpus, tmp_path_factory):
    """Every artifact: fp32 and int8, ONNX and TFLite."""
    out = tmp_path_factory.mktemp("oevae_both") / "bundle"
    return write_bundle(run, out, corpus, ExportOptions(precision="both"))


def _random_oevae() -> Oevae:
    torch.manual_seed(0)
    net = Oevae(width=8, latent=16, domain_dims=4, mean=-30.0, std=12.0)
    for m in net.modules():                 # batch norms that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_device_module_gives_the_training_embedding_and_posterior_mean():
    net = _random_oevae()
    device = fold_batchnorm(OevaeDevice(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in device.modules())
    x = torch.randn(3, 1, 64, 125) * 12 - 30
    with torch.no_grad():
        emb, latent = device(x)
        _, e = net(x)
        mu, _ = net.vae.encoder(e).chunk(2, dim=1)
    torch.testing.assert_close(emb, e, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(latent, mu[:, 4:], atol=1e-4, rtol=1e-4)


def test_tensorflow_graph_matches_torch_on_random_weights():
    """BasicBlock, the zero-padded max pool (after the stem's ReLU), the global mean and
    the sliced encoder, against torch on random weights and batch norms."""
    from harken.export.tflite_export import nhwc_shape, tf_function
    device = fold_batchnorm(OevaeDevice(_random_oevae()))
    x = (np.random.default_rng(0).normal(size=(1, 1, 64, 125)) * 12 - 30).astype(np.float32)
    with torch.no_grad():
        emb, latent = device(torch.from_numpy(x))
    out = tf_function(InferenceGraph(device, (1, 1, 64, 125), ("embedding", "latent"), None))(
        x.reshape(nhwc_shape((1, 1, 64, 125))))
    np.testing.assert_allclose(out["embedding"].numpy(), emb.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["latent"].numpy(), latent.numpy(), atol=1e-5)


def test_tflite_mappings_refuse_what_they_do_not_compute():
    from harken.export.tflite_export import _layer
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        _layer(torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    with pytest.raises(NotImplementedError, match="only output size 1"):
        _layer(torch.nn.AdaptiveAvgPool2d(2))


@pytest.mark.parametrize("score", ["combined", "alpha", "beta"])
@pytest.mark.parametrize("knn_k", [1, 2, 4])
def test_device_rules_give_the_training_score_on_the_same_numbers(score, knn_k):
    """Training's own _segment_scores and _clip_scores (on given embeddings and latents)
    against the agent's rule fed the same numbers as the model outputs, joined as the
    scorer joins them."""
    rng = np.random.default_rng(knn_k)
    method = OevaeMethod(overrides=[f"knn_k={knn_k}", f"score={score}", "omega=0.3",
                                    "latent=16", "domain_dims=4"])
    emb = rng.normal(size=(60, 32))
    zc = rng.normal(size=(60, 12)) * 1.5
    owner = np.repeat(np.arange(6), 10)
    bank = rng.normal(size=(40, 32))
    method.bank = {0: bank / np.linalg.norm(bank, axis=1, keepdims=True)}
    method.stats = np.array([12.0, 3.0, 0.4, 0.05])
    method._embed = lambda feats: (emb, zc, owner)
    method.model = Oevae(width=4, latent=16, domain_dims=4)       # a 32-value embedding

    class Clip:
        section = 0
    alpha, beta = method._segment_scores([None] * 6, [Clip()] * 6)
    expected = method._clip_scores(alpha, beta, score)
    rule = make_rule(DEVICE_RULES[score], method.rule_arrays(0))
    assert rule.name == method.device_rule()
    joined = {"embedding": emb, "latent": zc}
    output = np.concatenate([joined[o] for o in outputs_of(rule.name)], axis=1).astype(np.float32)
    got = [rule.reduce(rule.evidence(None, output[owner == i])) for i in range(6)]
    # the bank ships as float32 and the outputs come as float32: ~1e-7 relative
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert rule.check_model(64 * 125, output.shape[1]) is None


def test_rule_arrays_refuse_an_unknown_section_or_rule(run):
    method = load_graph(run).method
    with pytest.raises(HarkenError, match="section 07 was not in the training data"):
        method.rule_arrays(7)
    with pytest.raises(HarkenError, match="no device rule 'mse'"):
        method.rule_arrays(0, "mse")


def test_bundle_holds_every_artifact_without_float_fallback(both):
    bundle = open_bundle(both)
    m = bundle.manifest.model_dump()
    assert set(bundle.artifacts) == {"onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"}
    assert m["outputs"] == ["embedding", "latent"]
    assert m["scoring"]["rule"] == "oevae" and m["scoring"]["training_score"] == "combined"
    assert m["model"]["sections"] == [0, 1]
    assert bundle.artifacts["tflite-int8"].input_shape == (1, 64, 125, 1)
    fp32 = bundle.artifacts["onnx-fp32"].path.stat().st_size
    for kind in ("onnx-int8", "tflite-int8"):
        assert bundle.artifacts[kind].path.stat().st_size < 0.45 * fp32
    rule = bundle.rule(0)
    assert rule.arrays["bank"].dtype == np.float32 and rule.arrays["knn_k"][0] == 1


def test_int8_artifacts_score_with_a_bank_of_their_own_embeddings(both, run, corpus):
    """docs/export.md "Rule arrays per artifact": refitted on the float artifact's segment
    embeddings the bank is the run's own; each int8 artifact ships a bank of its own
    (k, omega and alpha's and beta's standardisation stay the run's)."""
    assert_float_refit_is_the_runs(both, OevaeMethod.load(run), corpus, "fan")
    assert_int8_scores_with_its_own(both, {"bank"})


def test_an_int8_artifact_that_fails_or_gives_nan_on_a_training_window_is_refused(
        both, corpus, monkeypatch):
    """Before any statistics are fitted on it, in one line naming the model file and the
    clip (it used to be a traceback from the runtime, or scikit-learn's on the NaN)."""
    from harken.export import artifact_arrays
    from harken.export.graphs import ExportError
    bundle = open_bundle(both)
    clips = scan(corpus, ["fan"], "train")[:2]
    from harken.training.data.windows import clip_features
    feats = clip_features(clips, bundle.spec, progress=False)

    class Broken:
        def __init__(self, artifact, threads=1):
            pass

        def run(self, x):
            raise RuntimeError("kernel not implemented")

    class Nan(Broken):
        def run(self, x):
            return {"embedding": np.full((1, 8), np.nan, np.float32),
                    "latent": np.zeros((1, 4), np.float32)}
    for backend, said in ((Broken, "the model fails on a window of .*kernel not implemented"),
                          (Nan, "output 'embedding' is not finite on")):
        monkeypatch.setattr(artifact_arrays, "open_backend", backend)
        with pytest.raises(ExportError, match=r"model\.int8\.onnx: " + said) as e:
            artifact_arrays.artifact_outputs(bundle, "onnx-int8", feats,
                                             [str(c.path) for c in clips])
        assert str(clips[0].path) in str(e.value) and "\n" not in str(e.value)


def test_with_another_corpus_every_artifact_keeps_the_runs_arrays(run, corpus, tmp_path,
                                                                   caplog):
    """--other-corpus: its clips calibrate int8, but they are not the run's training clips,
    so no artifact gets arrays fitted on them (the rule's reference stays the run's)."""
    import logging
    with caplog.at_level(logging.INFO, logger="harken.export"):
        out = write_bundle(run, tmp_path / "b", corpus, ExportOptions(formats=("onnx",)),
                           other_corpus=True)
    bundle = open_bundle(out)
    assert "onnx-int8" in bundle.artifacts and bundle.manifest.scoring.per_artifact == {}
    assert "not the run's training clips" in caplog.text


def test_verify_scores_every_artifact_like_torch(both, corpus):
    checks = {c.artifact: c for c in verify(open_bundle(both), corpus, max_clips=24,
                                            progress=False)}
    torch_official = checks["torch-fp32"].official
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert checks[kind].spearman > 0.999, (kind, checks[kind])
        # the combined score is standardised: a clip's score can sit near 0, where the
        # relative error says nothing; the absolute error is read against the 1e-3 instead
        assert checks[kind].max_abs_error < 1e-3, (kind, checks[kind])
        assert checks[kind].official == pytest.approx(torch_official, abs=1e-6)
    for kind in ("onnx-int8", "tflite-int8"):      # the tiny AE's tolerances
        assert checks[kind].spearman > 0.9, (kind, checks[kind])
        assert abs(checks[kind].official - torch_official) < 0.05


def test_int8_outputs_follow_fp32(both, corpus):
    """Both outputs of the int8 artifacts against onnx fp32, as the MobileNet's are."""
    from harken.agent.features import windows
    from harken.training.data.windows import clip_features
    bundle = open_bundle(both)
    feats = clip_features(scan(corpus, ["fan"], "test")[:4], bundle.spec, progress=False)
    ws = np.concatenate([windows(f, bundle.spec) for f in feats])
    out = {}
    for kind in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        scorer = BundleScorer(bundle, 0, kind)
        runs = [scorer.backend.run(model_input(w, scorer.artifact.input_shape)) for w in ws]
        out[kind] = {o: np.stack([r[o][0] for r in runs]) for o in ("embedding", "latent")}
    for kind in ("onnx-int8", "tflite-int8"):
        for o, ref in out["onnx-fp32"].items():
            err = np.abs(out[kind][o] - ref).max()
            assert err < 0.1 * np.ptp(ref), (kind, o, err, np.ptp(ref))
            assert np.corrcoef(out[kind][o].ravel(), ref.ravel())[0, 1] > 0.99, (kind, o)


def test_harken_score_on_wavs_matches_the_torch_scorer(both, run, corpus, capsys):
    """`harken score` reads the WAV through the agent's front end, which removes DC before
    the log-mel (agent/sources/dc.py) where training's features do not: torch scoring the
    agent's log-mel is what the fp32 artifacts must equal; training's own score of the clip
    differs by that front end only (about 1 % of the scores' spread on these clips)."""
    import scipy.stats
    from harken.agent.features import LogMelExtractor
    from harken.agent.sources.dc import remove_dc
    from harken.agent.sources.wavio import read_wav
    clips = [c for c in scan(corpus, ["fan"], "test") if c.section == 0][:6]
    method = make_method("oevae", []).load(run)
    rate = method.spec.sample_rate
    feats = [LogMelExtractor(method.spec)(remove_dc(read_wav(c.path, rate)[0], rate)) for c in clips]
    alpha, beta = method._segment_scores(feats, clips)
    expected = method._clip_scores(alpha, beta, method.default_rule)
    training = method.score(clips, progress=False)
    got = {}
    for kind in ("onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8"):
        assert harken(["score", str(both), *[str(c.path) for c in clips], "--artifact", kind,
                       "--section", "0", "--json"]) == 0
        got[kind] = np.array([r["score"] for r in json.loads(capsys.readouterr().out)])
    spread = np.ptp(expected)
    for kind in ("onnx-fp32", "tflite-fp32"):
        np.testing.assert_allclose(got[kind], expected, atol=1e-3 * spread)
    assert np.abs(got["onnx-fp32"] - training).max() < 0.05 * spread
    # int8: the agent's scorer of that artifact, with the bank fitted on its own embeddings
    # (docs/export.md "Rule arrays per artifact"); against torch only the order, loosely:
    # six clips of a seconds-trained net (verify checks 24 above)
    bundle = open_bundle(both)
    for kind in ("onnx-int8", "tflite-int8"):
        scorer = BundleScorer(bundle, 0, kind)
        assert scorer.rule.arrays["bank"] is bundle.arrays[
            bundle.manifest.scoring.per_artifact[kind]["00"]["bank"]]
        np.testing.assert_allclose(got[kind], [scorer.score_logmel(f) for f in feats],
                                   rtol=1e-5, atol=1e-6 * spread)
        assert scipy.stats.spearmanr(got[kind], expected).statistic > 0.8, (kind, got[kind], expected)


def test_oevae_on_another_preset_s_frames_fuses_with_that_method(corpus, tmp_path):
    """`frames=spectral-knn` gives OEVAE spectral-knn's frames (2-s segments at its hop), so
    a fusion of the two trains, exports as one fused bundle with a shared front end, and
    scores on the device as training fuses them."""
    from harken.agent.model.factory import make_scorer
    from harken.training.data.windows import clip_features
    from harken.training.fusion import Fusion
    sets = [f"oevae.{s}" for s in data.GENERATIVE["oevae"].settings]
    run = tmp_path / "fusion" / "fan"
    make_method("fusion", ["members=spectral-knn,oevae", "oevae.frames=spectral-knn", *sets]).train(
        scan(corpus, ["fan"], "train"), run, progress=False)
    assert json.loads((run / "oevae" / "run.json").read_text())["feature_spec"]["hop_length"] == 512
    bundle = open_bundle(write_bundle(run, tmp_path / "bundle", corpus,
                                      ExportOptions(precision="fp32", formats=("onnx",))))
    assert bundle.is_fused and sorted(bundle.members) == ["oevae", "spectral-knn"]
    clips = scan(corpus, ["fan"], "test")[::8]
    feats = clip_features(clips, bundle.spec, progress=False)
    scorers = {s: make_scorer(bundle, s, "onnx-fp32") for s in bundle.sections}
    got = [scorers[c.section].score_logmel(f) for c, f in zip(clips, feats)]
    np.testing.assert_allclose(got, Fusion.load(run).score(clips, progress=False), atol=1e-3)
    with pytest.raises(HarkenError, match="frames must be a feature preset"):
        make_method("oevae", ["frames=nope"])
