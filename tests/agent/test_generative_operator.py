"""The operator's commands on generative bundles (docs/agent.md "Feedback: how the bank and
threshold change"): ``harken feedback`` on a GMGAN latent-ldn bundle (the one generative
rule with a reference bank) end to end through the CLI, and ``harken score`` going on past a
WAV too short for a bundle's window."""

import json

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.config import load_config
from harken.agent.sinks.recent import START, read_store, store_folder
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import whine, write_agent_config
from tests import prebuilt

pytestmark = pytest.mark.xdist_group("test_generative_operator")


@pytest.fixture(scope="module")
def ldn_bundle(small_fan, tmp_path_factory):
    """The tests' tiny GMGAN (harken.testkit.data GENERATIVE) with score=latent-ldn,
    exported to float ONNX only (what the feedback path needs; seconds, not minutes)."""
    prebuilt.workstation_or_skip()
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.testkit.data import trained
    out = tmp_path_factory.mktemp("ldn")
    trained(small_fan, "gmgan", [*prebuilt.GENERATIVE["gmgan"].settings, "score=latent-ldn"],
            out / "run")
    return write_bundle(out / "run", out / "bundle", small_fan,
                        ExportOptions(formats=("onnx",), precision="fp32"))


def _store(config):
    return read_store(store_folder(config.path(config.agent.state_dir), "fan"))


def test_feedback_on_a_latent_ldn_bundle_lowers_the_sound_fed_back_and_undo_restores(
        ldn_bundle, small_fan, tmp_path, capsys):
    """The hostile round's finding 1: feedback crashed in the copy guard (KeyError
    'embedding_mean') on a latent-ldn bundle."""
    from harken.training.data.corpus import scan
    clips = [c for c in scan(small_fan, ["fan"], "test") if not c.is_anomaly][:4]
    parts = [read_wav(c.path, 16000)[0] for c in clips]
    parts[1], parts[2] = whine(parts[1], 16000, 3.0), whine(parts[2], 16000, 3.0)
    wav = tmp_path / "site.wav"
    write_wav(wav, np.concatenate(parts), 16000)
    cfg = write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "site", "machine": "fan", "state_dir": tmp_path / "state"},
        model={"bundle": ldn_bundle}, audio={"source": "file", "file": wav, "realtime": False},
        output={"stdout": False}, decision={"interval_s": 10})
    config = load_config(cfg)
    assert harken(["run", "--config", str(cfg)]) == 0
    first = _store(config)
    starts = first.seq[first.has(START)]
    assert starts.size, f"the whine raised no event: scores {first.score.round(3)}"
    capsys.readouterr()
    assert harken(["feedback", "normal", "--config", str(cfg), "--event", str(starts[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_after"] == out["rows_before"] + len(out["intervals"])
    assert out["threshold_after"] == out["threshold_before"]
    fed = np.isin(first.seq, out["intervals"])

    assert harken(["run", "--config", str(cfg)]) == 0   # the same sound again
    second = _store(config).score[len(first):]
    assert len(second) == len(first)
    assert np.all(second[fed] < first.score[fed])
    assert np.all(second <= first.score + 1e-6)            # no other sound rises

    assert harken(["feedback", "--config", str(cfg), "--undo"]) == 0
    assert harken(["run", "--config", str(cfg)]) == 0
    third = _store(config).score[2 * len(first):]
    np.testing.assert_allclose(third, first.score, rtol=1e-5, atol=1e-6)


def test_enroll_on_a_trained_bundle_says_what_it_brings_instead(ldn_bundle, ae_bundle, tmp_path,
                                                                capsys):
    """The hostile round's finding 11: every trained bundle was said to carry "its own
    reference bank", the AE's and GMGAN's re-encoding rule too (they hold none)."""
    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(16000), 16000)
    for bundle, said in [(ldn_bundle, "carries its own reference bank (score rule 'latent-ldn')"),
                         (ae_bundle, "is trained with its own score rule 'mse' and needs no "
                                     "enrollment")]:
        cfg = write_agent_config(
            tmp_path / "agent.toml", agent={"node": "site", "machine": "fan",
                                            "state_dir": tmp_path / "state"},
            model={"bundle": bundle}, audio={"source": "file", "file": wav})
        assert harken(["enroll", "--config", str(cfg), "--files", str(wav)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err


def test_a_file_too_short_for_the_window_does_not_stop_the_batch(ae_bundle, small_fan, tmp_path,
                                                                 capsys):
    """The hostile round's finding 9: one WAV shorter than a model window (AEGAN-AD's is
    4.19 s) ended ``harken score`` before the other files were scored."""
    from harken.training.data.corpus import scan
    clip = next(c for c in scan(small_fan, ["fan"], "test") if not c.is_anomaly)
    x, _ = read_wav(clip.path, 16000)
    write_wav(tmp_path / "short.wav", x[:100], 16000)
    files = [str(clip.path), str(tmp_path / "short.wav"), str(clip.path)]
    assert harken(["score", str(ae_bundle), *files, "--json"]) == 2
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["file"] for r in rows] == files
    assert rows[0]["status"] == rows[2]["status"] == "ok" and rows[0]["score"] == rows[2]["score"]
    assert (rows[1]["status"], rows[1]["score"]) == ("too_short", None)
    assert "short.wav: 0.01 s is shorter than one model window" in captured.err
