"""An OEVAE bundle on the device side (no torch: scripts/arm64-check runs it from the
prebuilt bundle): `harken score` and `harken run` on a WAV, the rule reading both outputs in
the order the scorer joins them, and the refusals of a bundle that was tampered with, cut
short in transfer, or whose arrays would score nonsense (docs/export.md "OEVAE")."""

import json

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.features import StreamingLogMel, windows
from harken.agent.model.bundle import BundleError, open_bundle
from harken.agent.model.scorer import BundleScorer, model_input
from harken.agent.sources.dc import DCRemover
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.bundles import array_of, copied, flip_byte, replace_array, truncated_tarball
from harken.testkit.files import write_agent_config

pytestmark = pytest.mark.xdist_group("test_oevae_bundle")


@pytest.fixture(scope="module")
def bundle(generative_bundle):
    return generative_bundle("oevae")


@pytest.fixture(scope="module")
def wav(fan_with_outliers, tmp_path_factory):
    """20 s of section 00's fan (two test clips end to end): two report intervals."""
    clips = sorted((fan_with_outliers / "fan" / "test").glob("section_00_*.wav"))[:2]
    x = np.concatenate([read_wav(c, 16000)[0] for c in clips])
    path = tmp_path_factory.mktemp("oevae_wav") / "fan.wav"
    write_wav(path, x, 16000)
    return path


def _by_hand(path, artifact: str, logmel: np.ndarray) -> float:
    """The combined score from the artifact's two outputs, written out here from the
    training's formulas (training/oevae.py), not through the agent's rule."""
    bundle = open_bundle(path)
    scorer = BundleScorer(bundle, 0, artifact)
    a = bundle.rule(0, artifact).arrays       # the artifact's own bank (docs/export.md)
    ma, sa, mb, sb = a["score_stats"]
    w, k = float(a["omega"][0]), int(a["knn_k"][0])
    scores = []
    for win in windows(logmel, bundle.spec):
        out = scorer.backend.run(model_input(win, scorer.artifact.input_shape))
        e, z = out["embedding"][0].astype(np.float64), out["latent"][0].astype(np.float64)
        alpha = 0.5 * z @ z + 0.5 * len(z) * np.log(2 * np.pi)
        d = np.sort(1.0 - a["bank"].astype(np.float64) @ (e / np.linalg.norm(e)))
        scores.append(w * (alpha - ma) / sa + (1 - w) * (d[:k].mean() - mb) / sb)
    return float(np.mean(scores))


@pytest.mark.parametrize("artifact", ["onnx-int8", "tflite-int8"])
def test_score_and_run_give_the_rule_s_score_of_each_interval(bundle, wav, artifact, tmp_path,
                                                             capsys):
    assert harken(["score", str(bundle), str(wav), "--artifact", artifact, "--section", "0",
                   "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    intervals = [i["score"] for i in row["intervals"]]
    assert row["status"] == "ok" and len(intervals) == 2 and np.isfinite(intervals).all()
    # the frames as the agent's streaming front end gives them, each to the interval it
    # starts in (agent/pipeline.py): interval 0 holds the first ceil(10 s / hop)
    spec = open_bundle(bundle).spec
    x, rate = read_wav(wav, spec.sample_rate)
    stream = StreamingLogMel(spec)
    frames = np.concatenate([stream.push(DCRemover(rate).push(x)), stream.finish()])
    first = -(-10 * rate // spec.hop_length)
    for got, logmel in zip(intervals, (frames[:first], frames[first:])):
        assert got == pytest.approx(_by_hand(bundle, artifact, logmel), abs=1e-5)
    cfg = write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "test", "machine": "fan", "section": 0, "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": artifact},
        audio={"source": "file", "file": str(wav), "realtime": False},
        decision={"interval_s": 10, "k_on": 2, "n": 3, "n_off": 3})
    assert harken(["run", "--config", str(cfg)]) == 0
    scores = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith("{") and json.loads(line)["kind"] == "score"]
    assert [s["score"] for s in scores] == pytest.approx(intervals, abs=1e-5)


# -- refusals ------------------------------------------------------------------------------

def test_a_tampered_artifact_or_array_is_refused_by_name(bundle, tmp_path):
    b = copied(bundle, tmp_path / "1" / "oevae")
    flip_byte(b / "model.int8.tflite")
    with pytest.raises(BundleError, match=r"model\.int8\.tflite: sha256 does not match .*"
                                          r"artifacts\.tflite-int8\.sha256'"):
        open_bundle(b)
    b = copied(bundle, tmp_path / "2" / "oevae")
    flip_byte(b / json.loads((b / "manifest.json").read_text())["arrays"]["bank_00"]["path"], -3)
    with pytest.raises(BundleError, match=r"sha256 does not match .*arrays\.bank_00\.sha256'"):
        open_bundle(b)


def test_a_truncated_tarball_is_refused_in_one_line(bundle, tmp_path, capsys):
    _, cut = truncated_tarball(bundle, tmp_path)
    with pytest.raises(BundleError, match=r"cut\.tar\.gz: cannot unpack: the tarball cannot "
                                          r"be read to its end \(truncated"):
        open_bundle(cut, extract_to=tmp_path / "out")
    assert harken(["score", str(cut), str(tmp_path / "none.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be read to its end" in err and "Traceback" not in err


@pytest.mark.parametrize("name, value, message", [
    ("bank_00", lambda a: 2 * a, "'bank' holds rows that are not of unit length"),
    ("bank_00", lambda a: a[:, :5] / np.linalg.norm(a[:, :5], axis=1, keepdims=True),
     "'output_widths' is \\[128, 56\\]; expected the bank's width 5"),
    ("output_widths_00", lambda a: a + [0, 1], None),   # the arrays agree, not with the model
    ("knn_k_00", lambda a: np.array([10 ** 6]), "'knn_k' is 1000000; expected a whole number"),
    ("score_stats_00", lambda a: np.array([1.0, 0.0, 0.0, 1.0]), "'score_stats' must be above 0"),
    ("score_stats_00", lambda a: a[:3], "'score_stats' has 3 values .*expected 4"),
    ("omega_00", lambda a: np.array([1.5]), "'omega' is 1.5; expected a weight in"),
    ("omega_00", lambda a: np.array([np.nan]), "'omega' holds NaN"),
])
def test_arrays_that_would_score_nonsense_are_refused_naming_the_array(bundle, tmp_path, name,
                                                                       value, message):
    b = copied(bundle, tmp_path / "oevae")
    replace_array(b, name, value(array_of(b, name)))
    if message is None:
        with pytest.raises(BundleError, match=r"an embedding of 128 and a latent of 57"):
            BundleScorer(open_bundle(b), 0, "onnx-int8")
        return
    with pytest.raises(BundleError, match=r"manifest\.json: scoring\.sections\.00: .*" + message):
        open_bundle(b)


def test_a_threshold_calibrated_with_one_artifact_is_refused_with_another(
        bundle, fan_with_outliers, tmp_path, capsys):
    """Each int8 artifact scores with its own arrays (docs/export.md "Rule arrays per
    artifact"), on its own scale: the override records what scored its intervals
    (``scorer``, docs/agent.md "Calibration") and another `model.artifact` is refused in
    one line, where it used to pass on the model id alone."""
    clips = sorted((fan_with_outliers / "fan" / "train").glob("section_00_*.wav"))[:12]
    wav = tmp_path / "normal.wav"
    write_wav(wav, np.concatenate([read_wav(c, 16000)[0] for c in clips]), 16000)

    def config(name: str, artifact: str):
        return write_agent_config(
            tmp_path / f"{name}.toml",
            agent={"node": "test", "machine": "fan", "section": 0, "state_dir": tmp_path / "state"},
            model={"bundle": bundle, "artifact": artifact},
            audio={"source": "file", "file": str(wav), "realtime": False},
            decision={"interval_s": 10})
    onnx = config("onnx", "onnx-int8")
    assert harken(["calibrate", "--config", str(onnx), "--files", str(wav), "--no-plot"]) == 0
    override = json.loads((tmp_path / "state" / "threshold-fan.json").read_text())
    assert override["scorer"] == open_bundle(bundle).scorer_digest(0, "onnx-int8")
    assert open_bundle(bundle).scorer_digest(0, "tflite-int8") != override["scorer"]
    capsys.readouterr()
    assert harken(["check-config", str(onnx)]) == 0
    capsys.readouterr()
    assert harken(["check-config", str(config("tflite", "tflite-int8"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibrated with another model file or other rule arrays than " \
        "the bundle's tflite-int8 scores with now" in err[0] and "harken calibrate" in err[0]
