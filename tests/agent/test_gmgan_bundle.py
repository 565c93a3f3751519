"""GMGAN on the device (agent/model/rules/gmgan.py; docs/export.md "GMGAN"): each device
rule against the training method's own score on the same numbers, the refusals of
malformed arrays when a bundle opens, and the tiny GMGAN bundle (tests/conftest.py
``generative_bundle``) through ``harken score`` and ``harken run`` and its refusals when
tampered with or cut short."""

import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.common.errors import DataError
from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.rules import RuleError, make_rule, outputs_of
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.bundles import copied, flip_byte, truncated_tarball
from harken.testkit.files import write_agent_config
from tests import prebuilt

pytestmark = pytest.mark.xdist_group("test_gmgan_bundle")


def gmm_arrays(rng, k=3, d=4, n=200):
    """A GMM as training fits one (training/models/losses.py gmm_parameters's formulas,
    written out here so the test also runs where torch is not installed)."""
    z = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    gamma = rng.dirichlet(np.ones(k), size=n)
    weight = gamma.sum(0)
    mu = gamma.T @ z / weight[:, None]
    diff = z[:, None, :] - mu[None]
    cov = np.einsum("nk,nki,nkj->kij", gamma, diff, diff) / weight[:, None, None]
    return {"gmm_phi": weight / n, "gmm_mu": mu, "gmm_cov": cov, "jitter": np.array([1e-6])}


# -- the rules against the training method's own numbers -----------------------------------

def test_latent_rule_is_the_window_mean_of_the_squared_re_encoding_error():
    rule = make_rule("gmgan-latent")
    assert outputs_of("gmgan-latent") == ("latent", "latent_aux")
    z = np.array([[1.0, 2.0], [0.0, 0.0]])
    z_aux = np.array([[1.0, 0.0], [3.0, 1.0]])
    ev = rule.evidence(None, np.concatenate([z, z_aux], axis=1))
    np.testing.assert_allclose(ev[:, 0], [4.0, 10.0])           # sums over the code, not means
    assert rule.reduce(ev) == 7.0
    assert rule.check_model(4096, 32) is None and "even" in rule.check_model(4096, 33)


def test_energy_rule_matches_training_gmm_energy():
    prebuilt.workstation_or_skip()
    import torch
    from harken.training.models.losses import gmm_energy
    rng = np.random.default_rng(0)
    arrays = gmm_arrays(rng)
    rule = make_rule("gmm-energy", arrays)
    z = rng.normal(size=(7, 4)) * 3.0                            # some far out in the tails
    expected = gmm_energy(torch.from_numpy(z), *(torch.from_numpy(arrays[k]) for k in
                                                 ("gmm_phi", "gmm_mu", "gmm_cov")), 1e-6).numpy()
    ev = rule.evidence(None, z)
    np.testing.assert_allclose(ev[:, 0], expected, rtol=1e-9)
    assert rule.reduce(ev) == pytest.approx(expected.mean(), rel=1e-9)
    assert rule.check_model(4096, 4) is None and "4 values" in rule.check_model(4096, 5)


def test_energy_rule_survives_a_code_far_from_every_component():
    """Plain exp would underflow to log(0) = -inf here; log-sum-exp keeps it finite."""
    rule = make_rule("gmm-energy", gmm_arrays(np.random.default_rng(1)))
    ev = rule.evidence(None, np.full((1, 4), 1e3))
    assert np.isfinite(ev).all() and ev[0, 0] > 1e4


@pytest.fixture(scope="module")
def ldn_method():
    """A GMGAN method whose latent-ldn bank is fitted by training's own code
    (``_fit_code_bank``) on made-up clip codes: two sections, one with two clusters."""
    prebuilt.workstation_or_skip()
    from harken.training.methods import make_method
    rng = np.random.default_rng(2)
    method = make_method("gmgan", ["score=latent-ldn", "density_k=2"])
    codes = np.concatenate([rng.normal(size=(6, 5)), rng.normal(size=(5, 5)) + 4.0,
                            rng.normal(size=(7, 5)) * 2.0])
    sections = [0] * 11 + [1] * 7
    rows = method._fit_code_bank(codes, sections)
    return method, codes, sections, rows


def test_latent_ldn_rule_matches_training_on_the_same_codes(ldn_method):
    method, _, _, _ = ldn_method
    rng = np.random.default_rng(3)
    windows = [rng.normal(size=(5, 5)) * 2.0 + 1.0 for _ in range(6)]   # a clip = its windows
    codes = np.stack([w.mean(axis=0) for w in windows])
    for section in (0, 1):
        expected = method._ldn(codes, [section] * len(codes))
        rule = make_rule(method.device_rule(), method.rule_arrays(section))
        got = [rule.reduce(rule.evidence(None, w.astype(np.float32))) for w in windows]
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_latent_ldn_held_out_scores_are_trainings_leave_one_out(ldn_method):
    method, codes, sections, rows = ldn_method
    scores = {"code": codes}
    everyone = list(range(len(codes)))
    expected = method._held_out_normal(scores, sections, rows, everyone)
    for section in (0, 1):
        rule = make_rule("latent-ldn", method.rule_arrays(section))
        mine = [i for i in everyone if sections[i] == section]
        np.testing.assert_allclose(rule.held_out_scores(), expected[mine], rtol=1e-12)
        assert rule.bank_rows == len(mine)


def test_latent_ldn_feedback_lowers_scores_only_near_what_joined(ldn_method):
    method, codes, _, _ = ldn_method
    rule = make_rule("latent-ldn", method.rule_arrays(0))
    near, far = codes[0] + 20.0, -codes[0] - 20.0
    before = rule.score_statistics({"latent": np.stack([near, far])})
    grown = rule.with_references({"latent": (near + 0.01)[None]}, density_k=2)
    after = grown.score_statistics({"latent": np.stack([near, far])})
    assert grown.bank_rows == rule.bank_rows + 1
    assert after[0] < 0.1 * before[0] and after[1] == pytest.approx(before[1])
    assert rule.statistics(np.stack([codes[0], codes[2]]))["latent"] == pytest.approx(
        (codes[0] + codes[2]) / 2)
    with pytest.raises(DataError, match="statistics .latent. of shape"):
        rule.with_references({"latent": np.zeros((1, 3))}, density_k=2)


# -- malformed arrays are refused when the bundle opens -------------------------------------

def _energy(**change):
    arrays = gmm_arrays(np.random.default_rng(4))
    arrays.update(change)
    return arrays


def _ldn(**change):
    arrays = {"code_mean": np.zeros(3), "code_std": np.ones(3), "bank": np.eye(3),
              "bank_density": np.ones(3)}
    arrays.update(change)
    return arrays


@pytest.mark.parametrize("rule, arrays, message", [
    ("gmm-energy", _energy(gmm_cov=np.stack([np.diag([1.0, 1.0, -1.0, 1.0])] * 3)),
     "'gmm_cov' holds a covariance that is not positive definite"),
    ("gmm-energy", _energy(gmm_cov=np.stack([np.eye(4) + np.triu(np.ones((4, 4)), 1)] * 3)),
     "'gmm_cov' holds a covariance that is not symmetric"),
    ("gmm-energy", _energy(gmm_cov=np.stack([np.eye(3)] * 3)), r"'gmm_cov' has shape \[3, 3, 3\]"),
    ("gmm-energy", _energy(gmm_phi=np.array([0.5, 0.5])), "'gmm_phi' has 2 weights"),
    ("gmm-energy", _energy(gmm_phi=np.array([0.5, 0.6, 0.2])), "sum to 1.3"),
    ("gmm-energy", _energy(jitter=np.array([-1.0])), "'jitter' is -1"),
    ("gmm-energy", {k: v for k, v in _energy().items() if k != "gmm_mu"}, r"needs arrays \['gmm_mu'\]"),
    ("latent-ldn", _ldn(bank_density=np.array([1.0, 0.0, 1.0])), "'bank_density' must be above 0"),
    ("latent-ldn", _ldn(code_std=np.ones(4)), "'code_std' has 4 values"),
    ("latent-ldn", _ldn(bank=np.eye(3)[:2]), "'bank_density' has 3 entries"),
    ("latent-ldn", _ldn(code_mean=np.array([0.0, np.nan, 0.0])), "'code_mean' holds NaN"),
])
def test_malformed_arrays_are_refused_naming_the_array(rule, arrays, message):
    with pytest.raises(RuleError, match=message):
        make_rule(rule, arrays)


# -- the tiny bundle through the agent ------------------------------------------------------

@pytest.fixture(scope="module")
def gmgan(generative_bundle):
    return generative_bundle("gmgan")


@pytest.fixture(scope="module")
def recording(small_fan, tmp_path_factory):
    """Three normal test clips of section 00 as one 30 s recording (three report intervals)."""
    from harken.training.data.corpus import scan
    clips = [c for c in scan(small_fan, ["fan"], "test")
             if c.section == 0 and not c.is_anomaly][:3]
    path = tmp_path_factory.mktemp("gmgan_wav") / "normal.wav"
    write_wav(path, np.concatenate([read_wav(c.path, 16000)[0] for c in clips]), 16000)
    return path


def test_the_bundle_ships_the_latent_rule_and_both_outputs(gmgan):
    bundle = open_bundle(gmgan)
    m = bundle.manifest.model_dump()
    assert m["outputs"] == ["latent", "latent_aux"]
    assert m["scoring"]["rule"] == "gmgan-latent" and m["scoring"]["training_score"] == "latent"
    assert {"onnx-int8", "tflite-int8"} <= set(bundle.artifacts)


def _torch_scores(gmgan, path):
    """Training's own ``latent`` score of each 10 s interval of ``path``, on the features the
    device computes (its DC removal included: training reads clips without it)."""
    run = gmgan.parent / "run"
    if not run.exists():
        pytest.skip("a prebuilt bundle has no run beside it to score with torch")
    from harken.agent.features.extract import LogMelExtractor
    from harken.agent.sources.dc import remove_dc
    from harken.training.methods import METHODS
    method = METHODS["gmgan"].load(run)
    x, rate = read_wav(path, 16000)
    step = 10 * rate
    feats = [LogMelExtractor(method.spec)(remove_dc(x[i:i + step], rate))
             for i in range(0, len(x) - step + 1, step)]
    return method._scores(feats)["latent"]


def test_harken_score_matches_torch_within_the_int8_tolerance(gmgan, recording, capsys):
    """The bundle's int8 artifacts (tests/export/test_gmgan_export.py checks the float ones
    against torch to 1e-3, through ``harken score`` too)."""
    prebuilt.workstation_or_skip()
    expected = _torch_scores(gmgan, recording)
    got = {}
    for artifact in ("onnx-int8", "tflite-int8"):
        assert harken(["score", str(gmgan), str(recording), "--json", "--artifact", artifact]) == 0
        rows = json.loads(capsys.readouterr().out)
        got[artifact] = np.array([i["score"] for i in rows[0]["intervals"]])
    assert len(got["onnx-int8"]) == len(expected) == 3
    for artifact in ("onnx-int8", "tflite-int8"):
        # a tiny GAN's int8 code: a few % of its spread per value (test_gmgan_export.py's
        # output-level check); the score is a sum of squares of a difference of two codes
        np.testing.assert_allclose(got[artifact], expected, rtol=0.15)


def test_harken_run_scores_each_interval_as_harken_score_does(gmgan, recording, tmp_path,
                                                             capsys):
    cfg = write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "test", "machine": "fan", "section": 0, "state_dir": tmp_path / "state"},
        model={"bundle": gmgan, "artifact": "tflite-int8"},
        audio={"source": "file", "file": str(recording), "realtime": False},
        decision={"interval_s": 10, "k_on": 2, "n": 3, "n_off": 3})
    assert harken(["run", "--config", str(cfg)]) == 0
    scores = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith("{") and json.loads(line)["kind"] == "score"]
    assert len(scores) == 3 and all(s["status"] == "ok" for s in scores)
    assert harken(["score", str(gmgan), str(recording), "--json", "--artifact", "tflite-int8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([s["score"] for s in scores],
                               [i["score"] for i in rows[0]["intervals"]], rtol=1e-5)


# -- tampered and truncated bundles ---------------------------------------------------------

def test_a_tampered_artifact_is_refused_naming_its_sha(gmgan, tmp_path):
    b = copied(gmgan, tmp_path / "gmgan")
    flip_byte(b / "model.int8.tflite")
    with pytest.raises(BundleError, match=r"model\.int8\.tflite: sha256 does not match .*"
                                          r"artifacts\.tflite-int8\.sha256"):
        open_bundle(b)


def test_a_truncated_tarball_is_one_line(gmgan, tmp_path):
    _, cut = truncated_tarball(gmgan, tmp_path)
    with pytest.raises(BundleError, match=r"cut\.tar\.gz: cannot unpack: the tarball cannot "
                                          r"be read to its end \(truncated"):
        open_bundle(cut, extract_to=tmp_path / "unpacked")
    r = subprocess.run([sys.executable, "-m", "harken.agent.cli", "score", str(cut),
                        str(tmp_path / "none.wav")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot be read to its end" in r.stderr
