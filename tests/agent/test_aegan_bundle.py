"""An AEGAN-AD bundle on the device (docs/export.md "AEGAN-AD"): ``harken score`` and
``harken run`` on WAV files score as the training code does (fp32) and near it (int8); a
tampered array or model, a truncated tarball and malformed rule arrays are refused in one
line. The bundle is the shared test one (tests/conftest.py ``generative_bundle``: the tiny
run with its score pinned to d-lof, harken/testkit/data.py GENERATIVE)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.rules import make_rule
from harken.agent.model.rules.base import RuleError
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.bundles import array_of, copied, flip_byte, replace_array, truncated_tarball
from harken.testkit.files import write_agent_config

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_aegan_bundle")

RATE = 16000


@pytest.fixture(scope="module")
def bundle(generative_bundle):
    return generative_bundle("aegan-ad")


@pytest.fixture(scope="module")
def clips(small_fan):
    """Three 10-s test clips of section 00 (normal and anomalous): one report interval each."""
    test = sorted((small_fan / "fan" / "test").glob("section_00_*.wav"))
    return [p for p in test if "anomaly" in p.name][:2] + [p for p in test if "normal" in p.name][:1]


def score_rows(bundle, files, artifact):
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "score", str(bundle),
                          *map(str, files), "--artifact", artifact, "--json",
                          "--threshold", "1e9"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scores(bundle, files, artifact) -> np.ndarray:
    return np.array([r["score"] for r in score_rows(bundle, files, artifact)])


def test_score_matches_torch_in_fp32_and_follows_it_in_int8(bundle, clips, small_fan):
    assert open_bundle(bundle).rule_name == "aegan-d-lof"
    fp32 = scores(bundle, clips, "onnx-fp32")
    run = bundle.parent / "run"
    if (run / "run.json").is_file():       # built here: the training code is installed
        from harken.training.aegan import AeganMethod
        from harken.training.data.corpus import scan
        by_path = {c.path.name: c for c in scan(small_fan, ["fan"], "test")}
        torch_scores = AeganMethod.load(run).score([by_path[p.name] for p in clips],
                                                   progress=False, rule="d-lof")
        # the score is printed to 6 decimals; the rest is ONNX Runtime vs torch float32
        np.testing.assert_allclose(fp32, torch_scores, rtol=1e-4)
    for kind in ("onnx-int8", "tflite-int8", "tflite-fp32"):
        got = scores(bundle, clips, kind)
        # int8: a one-epoch GAN's LOF near 1 moves by a few % (tests/export/test_aegan_export.py
        # checks the int8 embeddings themselves); fp32 TFLite as ONNX Runtime
        np.testing.assert_allclose(got, fp32, rtol=0.1 if "int8" in kind else 1e-4, err_msg=kind)


def test_run_scores_each_interval_as_score_does(bundle, clips, tmp_path, capsys):
    """``harken run`` on a 30-s recording of the three clips: three intervals, scored as
    ``harken score`` scores the recording."""
    x = np.concatenate([read_wav(p, RATE)[0] for p in clips])
    write_wav(tmp_path / "three.wav", x, RATE)
    cfg = write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "test", "machine": "fan", "section": 0, "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "tflite-int8"},
        audio={"source": "file", "file": str(tmp_path / "three.wav"), "realtime": False},
        decision={"interval_s": 10, "k_on": 2, "n": 3, "n_off": 3})
    assert harken(["run", "--config", str(cfg)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    got = [r["score"] for r in records if r["kind"] == "score"]
    assert len(got) == 3
    whole = score_rows(bundle, [tmp_path / "three.wav"], "tflite-int8")[0]
    np.testing.assert_allclose(got, [i["score"] for i in whole["intervals"]], rtol=1e-5)
    # the first interval is the first clip's alone (the later ones are framed from the
    # stream, so they differ from their clip's by the frames that straddle a boundary)
    assert got[0] == pytest.approx(scores(bundle, clips[:1], "tflite-int8")[0], rel=1e-5)


# -- refusals ------------------------------------------------------------------------------

def test_tampered_array_and_model_are_refused_by_name(bundle, tmp_path):
    b = copied(bundle, tmp_path / "1" / "aegan")
    lrd = next((b / "arrays").glob("bank_lrd_*.npy"))
    flip_byte(lrd, -3)
    with pytest.raises(BundleError, match=rf"{lrd.name}: sha256 does not match"):
        open_bundle(b)
    b = copied(bundle, tmp_path / "2" / "aegan")
    flip_byte(b / "model.int8.tflite")
    with pytest.raises(BundleError, match=r"model\.int8\.tflite: sha256 does not match .*"
                                          r"artifacts\.tflite-int8\.sha256"):
        open_bundle(b)


def test_a_truncated_tarball_is_refused_in_one_line(bundle, tmp_path):
    whole, cut = truncated_tarball(bundle, tmp_path)
    with pytest.raises(BundleError, match=r"cut\.tar\.gz: cannot unpack: the tarball cannot "
                                          r"be read to its end"):
        open_bundle(cut)
    assert open_bundle(whole).rule_name == "aegan-d-lof"


def test_a_malformed_lof_array_with_a_matching_sha_is_refused_naming_the_section(
        bundle, tmp_path, capsys):
    """A bank whose densities were written wrong (not tampered: the manifest agrees) would
    divide by zero at the first interval; the bundle is refused when its rule is made."""
    b = copied(bundle, tmp_path / "aegan")
    name = json.loads((b / "manifest.json").read_text())["scoring"]["sections"]["00"]["bank_lrd"]
    replace_array(b, name, np.zeros_like(array_of(b, name)))
    with pytest.raises(BundleError, match=r"scoring\.sections\.00: array 'bank_lrd' must be "
                                          r"above 0 everywhere"):
        open_bundle(b).rule(0)
    wav = tmp_path / "x.wav"
    write_wav(wav, np.zeros(RATE), RATE)
    assert harken(["score", str(b), str(wav)]) == 2
    err = capsys.readouterr().err
    assert "array 'bank_lrd' must be above 0" in err and "Traceback" not in err


BANK = np.random.default_rng(0).normal(size=(5, 4))


@pytest.mark.parametrize("rule, arrays, message", [
    ("aegan-x-l2", {"db_range": np.array([5.0, 1.0])}, r"'db_range' must be \(low, high\) with "
                                                       r"high above low; got \(5, 1\)"),
    ("aegan-x-l1", {"db_range": np.zeros(3)}, r"'db_range' has 3 values \(low, high dB\); expected 2"),
    ("aegan-d-maha", {"location": np.zeros(4), "precision": np.eye(3)},
     r"'precision' has shape \[3, 3\]; expected \[4, 4\]"),
    ("aegan-d-knn", {"unit_bank": BANK, "k": np.array([0])}, r"'k' must be one integer from 1 to 5"),
    ("aegan-d-lof", {"bank": BANK[:2], "bank_kdist": np.ones(2), "bank_lrd": np.ones(2),
                     "k": np.array([1])}, r"'bank' has 2 rows; the local outlier factor needs"),
    ("aegan-d-lof", {"bank": BANK, "bank_kdist": np.ones(4), "bank_lrd": np.ones(5),
                     "k": np.array([2])}, r"'bank_kdist' has 4 entries \(the bank's rows\); expected 5"),
    ("aegan-d-lof", {"bank": BANK, "bank_kdist": -np.ones(5), "bank_lrd": np.ones(5),
                     "k": np.array([2])}, r"'bank_kdist' holds a negative distance"),
    ("aegan-d-lof", {"bank": BANK, "bank_kdist": np.ones(5), "bank_lrd": np.ones(5),
                     "k": np.array([2.5])}, r"'k' must be one integer from 1 to 4"),
    ("aegan-d-lof", {"bank": BANK, "bank_kdist": np.ones(5), "bank_lrd": np.ones(5),
                     "k": np.array([5])}, r"'k' must be one integer from 1 to 4"),
])
def test_malformed_rule_arrays_are_refused_naming_the_array(rule, arrays, message):
    with pytest.raises(RuleError, match=message):
        make_rule(rule, arrays)


def test_rules_check_the_model_width_and_score_by_hand():
    """What each rule family computes, on numbers worked by hand."""
    x = make_rule("aegan-x-l1", {"db_range": np.array([-80.0, 0.0])})
    assert x.check_model(16, 8) is not None and x.check_model(16, 16) is None
    # inputs -80, -40, 0, 40 dB scale to -1, 0, 1, 1 (clamped); reconstruction 0 everywhere
    ev = x.evidence(np.array([[-80.0, -40.0, 0.0, 40.0]]), np.zeros((1, 4)))
    assert ev.tolist() == [[0.75]] and x.reduce(np.array([[0.75], [0.25]])) == 0.5
    z = make_rule("aegan-z-cos", {})
    assert z.check_model(16, 7) is not None and z.check_model(16, 8) is None
    assert z.evidence(None, np.array([[1.0, 0.0, 0.0, 1.0]]))[0, 0] == pytest.approx(1.0)
    knn = make_rule("aegan-d-knn", {"unit_bank": np.eye(3), "k": np.array([2])})
    assert knn.check_model(16, 4) is not None
    # the mean of the windows' embeddings (1, 0, 0) is scored: cosine 0, 1, 1 -> mean of 2 = 0.5
    assert knn.reduce(np.array([[2.0, 1.0, 0.0], [0.0, -1.0, 0.0]])) == pytest.approx(0.5)
    maha = make_rule("aegan-d-maha", {"location": np.zeros(2), "precision": np.eye(2) * 4})
    assert maha.reduce(np.array([[3.0, 0.0], [3.0, 8.0]])) == pytest.approx(10.0)
