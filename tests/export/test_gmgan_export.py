"""GMGAN exported (docs/export.md "GMGAN"): tiny runs for each of its three scores trained on
the small fan corpus, written as bundles with every artifact, verified against torch, and
scored through the agent's rules and ``harken score`` as training scores them."""

import json
import shutil

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.features import windows
from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.rules import make_rule
from harken.agent.model.scorer import BundleScorer, model_input
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.verify import verify
from harken.testkit.data import GENERATIVE
from harken.training.data.corpus import scan
from harken.training.data.windows import clip_features
from harken.training.methods import METHODS, make_method
from tests.export.per_artifact import assert_float_refit_is_the_runs, assert_int8_scores_with_its_own

pytestmark = pytest.mark.xdist_group("test_gmgan_export")

SCORES = ("latent", "latent-ldn", "energy")
TINY = GENERATIVE["gmgan"].settings


@pytest.fixture(scope="module")
def runs(small_fan, tmp_path_factory):
    """One tiny run per score: the score picks the device graph (the decoder and auxiliary
    encoder only for ``latent``) and the bundle's rule and arrays."""
    root = tmp_path_factory.mktemp("gmgan_runs")
    clips = scan(small_fan, ["fan"], "train")
    for score in SCORES:
        make_method("gmgan", [*TINY, f"score={score}"]).train(clips, root / score, progress=False)
    return root


@pytest.fixture(scope="module")
def bundles(runs, small_fan, tmp_path_factory):
    """Every artifact for latent and latent-ldn; float ONNX for energy (its graph is
    latent-ldn's, only the rule and arrays differ)."""
    out = tmp_path_factory.mktemp("gmgan_bundles")
    for score in SCORES:
        options = ExportOptions(precision="both") if score != "energy" else \
            ExportOptions(formats=("onnx",), precision="fp32")
        write_bundle(runs / score, out / score, small_fan, options)
    return out


def test_each_score_ships_its_graph_rule_and_arrays(bundles):
    expect = {"latent": (["latent", "latent_aux"], "gmgan-latent", set()),
              "latent-ldn": (["latent"], "latent-ldn",
                             {"code_mean", "code_std", "bank", "bank_density"}),
              "energy": (["latent"], "gmm-energy", {"gmm_phi", "gmm_mu", "gmm_cov", "jitter"})}
    for score, (outputs, rule, roles) in expect.items():
        bundle = open_bundle(bundles / score)
        m = bundle.manifest.model_dump()
        assert m["outputs"] == outputs
        assert m["scoring"]["rule"] == rule and m["scoring"]["training_score"] == score
        assert set(m["scoring"]["sections"]["00"]) == roles
        assert bundle.rule(0).name == rule
    assert set(open_bundle(bundles / "latent").artifacts) == {
        "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"}


def test_latent_ldn_int8_artifacts_score_with_a_bank_of_their_own_codes(bundles, runs,
                                                                        small_fan):
    """docs/export.md "Rule arrays per artifact": refitted on the float artifact's codes
    latent-ldn's arrays are the run's own; each int8 artifact ships its own standardisation,
    bank and densities. ``latent`` holds no arrays: nothing per artifact."""
    method = METHODS["gmgan"].load(runs / "latent-ldn")
    assert_float_refit_is_the_runs(bundles / "latent-ldn", method, small_fan, "fan")
    assert_int8_scores_with_its_own(bundles / "latent-ldn",
                                    {"code_mean", "code_std", "bank", "bank_density"})
    assert open_bundle(bundles / "latent").manifest.scoring.per_artifact == {}


@pytest.mark.parametrize("score", ["latent", "latent-ldn"])
def test_verify_float_artifacts_match_torch_and_int8_stays_close(bundles, small_fan, score):
    checks = {c.artifact: c for c in verify(open_bundle(bundles / score), small_fan,
                                            max_clips=24, progress=False)}
    assert set(checks) == {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"}
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert checks[kind].spearman > 0.999 and checks[kind].max_rel_error < 1e-3, kind
        assert checks[kind].verdict == "PASS"
    for kind in ("onnx-int8", "tflite-int8"):
        # the tiny AE's int8 tolerance (test_export_bundle.py); latent-ldn is a minimum
        # over the bank of distance ratios: a code moved by int8 rounding may change which
        # clip is nearest, so its AUC on 24 clips moves more and only its order is checked
        assert checks[kind].spearman > 0.9, (kind, checks[kind])
        if score == "latent":
            assert abs(checks[kind].official - checks["torch-fp32"].official) < 0.05
        assert 0 < checks[kind].size_vs_onnx_fp32 < 0.45


@pytest.mark.parametrize("score", ["latent", "latent-ldn"])
def test_int8_codes_follow_fp32(bundles, small_fan, score):
    """Output level, as for the seconds-trained MobileNet (test_export_bundle.py): each int8
    code within a tenth of the float code's spread, and correlated with it."""
    bundle = open_bundle(bundles / score)
    feats = clip_features(scan(small_fan, ["fan"], "test")[:6], bundle.spec, progress=False)
    ws = np.concatenate([windows(f, bundle.spec)[::2] for f in feats])
    out = {}
    for kind in ("onnx-fp32", "onnx-int8", "tflite-int8"):
        scorer = BundleScorer(bundle, 0, kind)
        runs = [scorer.backend.run(model_input(w, scorer.artifact.input_shape)) for w in ws]
        out[kind] = {name: np.stack([r[name][0] for r in runs]) for name in bundle.manifest.outputs}
    for kind in ("onnx-int8", "tflite-int8"):
        for name, ref in out["onnx-fp32"].items():
            err = np.abs(out[kind][name] - ref).max()
            assert err < 0.1 * np.ptp(ref), (kind, name, err, np.ptp(ref))
            assert np.corrcoef(out[kind][name].ravel(), ref.ravel())[0, 1] > 0.99, (kind, name)


@pytest.mark.parametrize("score", SCORES)
def test_device_rule_on_float_onnx_scores_as_training_does(bundles, runs, small_fan, score):
    bundle = open_bundle(bundles / score)
    clips = scan(small_fan, ["fan"], "test")[:6]
    method = METHODS["gmgan"].load(runs / score)
    expected = method.score(clips, progress=False)
    feats = clip_features(clips, bundle.spec, progress=False)
    got = [BundleScorer(bundle, c.section, "onnx-fp32").score_logmel(f)
           for c, f in zip(clips, feats)]
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_energy_rule_on_the_ldn_graph_matches_trainings_energy(bundles, runs, small_fan):
    """The one encoder graph serves both scores that read z: the energy rule with the run's
    GMM arrays on latent-ldn's bundle gives training's ``energy`` score."""
    bundle = open_bundle(bundles / "latent-ldn")
    clips = scan(small_fan, ["fan"], "test")[:6]
    method = METHODS["gmgan"].load(runs / "latent-ldn")
    expected = method.score(clips, rule="energy", progress=False)
    feats = clip_features(clips, bundle.spec, progress=False)
    got = [BundleScorer(bundle, c.section, "onnx-fp32",
                        rule=make_rule("gmm-energy", method.rule_arrays(c.section, "energy")))
           .score_logmel(f) for c, f in zip(clips, feats)]
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_harken_score_on_a_wav_matches_torch(bundles, runs, small_fan, capsys):
    """``harken score`` (DC removal, report intervals) on float ONNX against training's own
    score of the same features: a 10 s test clip is one interval."""
    from harken.agent.features.extract import LogMelExtractor
    from harken.agent.sources.dc import remove_dc
    from harken.agent.sources.wavio import read_wav
    clips = [c for c in scan(small_fan, ["fan"], "test") if c.section == 0][:4]
    method = METHODS["gmgan"].load(runs / "latent")
    feats = [LogMelExtractor(method.spec)(remove_dc(read_wav(c.path, 16000)[0], 16000))
             for c in clips]
    expected = method._scores(feats)["latent"]
    assert harken(["score", str(bundles / "latent"), *[str(c.path) for c in clips], "--json",
                   "--artifact", "onnx-fp32", "--threshold", "1e9"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-3)


def test_device_rules_follow_the_runs_score():
    assert [make_method("gmgan", [f"score={s}"]).device_rule() for s in SCORES] == \
        ["gmgan-latent", "latent-ldn", "gmm-energy"]


def test_a_tampered_bank_array_is_refused_naming_its_sha(bundles, tmp_path):
    b = tmp_path / "ldn"
    shutil.copytree(bundles / "latent-ldn", b)
    m = json.loads((b / "manifest.json").read_text())
    path = b / m["arrays"]["bank_00"]["path"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 does not match .*arrays\.bank_00\.sha256"):
        open_bundle(b)


def test_a_gmm_that_is_not_positive_definite_is_refused_when_the_bundle_opens(bundles, tmp_path):
    """A GMM array rewritten with its sha256 updated (a hand-edited bundle) is refused by
    the rule's own check, naming the array, before the first interval."""
    import hashlib
    b = tmp_path / "energy"
    shutil.copytree(bundles / "energy", b)
    m = json.loads((b / "manifest.json").read_text())
    entry = m["arrays"]["gmm_cov_00"]
    cov = np.load(b / entry["path"])
    np.save(b / entry["path"], -cov)
    data = (b / entry["path"]).read_bytes()
    entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest\.json: scoring\.sections\.00: array 'gmm_cov' "
                                          "holds a covariance that is not positive definite"):
        open_bundle(b)


def test_gmgan_on_128_mel_patches_is_a_fusion_member_beside_spectral_knn(small_fan, tmp_path):
    """``patch=128`` gives GMGAN the default presets' frames (128 mels), so one front end
    serves both members of a fused bundle, which scores as the fusion run does."""
    from harken.agent.model.factory import make_scorer
    from harken.training.fusion import Fusion
    run = tmp_path / "fusion"
    make_method("fusion", ["members=spectral-knn,gmgan", *(f"gmgan.{s}" for s in TINY),
                           "gmgan.patch=128"]).train(scan(small_fan, ["fan"], "train"), run,
                                                     progress=False)
    bundle = open_bundle(write_bundle(run, tmp_path / "bundle", small_fan, ExportOptions(
        formats=("onnx",), precision="fp32", calibration_windows=200)))
    assert bundle.is_fused and sorted(bundle.members) == ["gmgan", "spectral-knn"]
    assert bundle.spec.n_mels == 128 and bundle.spec.spectrum
    clips = scan(small_fan, ["fan"], "test")[::6]
    feats = clip_features(clips, bundle.spec, progress=False)
    scorers = {s: make_scorer(bundle, s, "onnx-fp32") for s in bundle.sections}
    got = [scorers[c.section].score_logmel(f) for c, f in zip(clips, feats)]
    np.testing.assert_allclose(got, Fusion.load(run).score(clips, progress=False), atol=1e-3)


def test_a_patch_the_encoder_cannot_halve_to_four_is_refused():
    from harken.common.errors import UsageError
    with pytest.raises(UsageError, match="patch must be a power of two >= 8.*got 96"):
        make_method("gmgan", ["patch=96"])
    assert make_method("gmgan", ["patch=128"]).spec.window_frames == 128
