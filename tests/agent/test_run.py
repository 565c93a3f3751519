"""`harken run`, `score` and `calibrate` end to end on real WAV files, with a real int8
bundle (tests/conftest.py ae_bundle) and the real runtimes."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import whine, write_agent_config
from harken.training.data.corpus import scan

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_run")

RATE = 16000


@pytest.fixture(scope="module")
def recordings(small_fan, tmp_path_factory):
    """A 60 s recording of section 00 running normally, then the same 60 s with a fault
    (a whine as loud as the machine) - the change at 60 s - and the normal training clips
    for calibration."""
    root = tmp_path_factory.mktemp("recordings")
    clips = [c for c in scan(small_fan, ["fan"], "test")
             if not c.is_anomaly and c.section == 0 and c.domain == "source"][:6]
    normal = np.concatenate([read_wav(c.path, RATE)[0] for c in clips])
    write_wav(root / "normal_then_faulty.wav", np.r_[normal, whine(normal, RATE, level=1.0)], RATE)
    train = [str(c.path) for c in scan(small_fan, ["fan"], "train")
             if c.section == 0 and c.domain == "source"]
    return root, len(normal) / RATE, train


def config(tmp_path, bundle, output_file=None, **audio):
    return write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "test", "machine": "fan", "section": 0, "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "tflite-int8"}, audio=audio,
        decision={"interval_s": 10, "k_on": 2, "n": 3, "n_off": 3},
        **({"output": {"file": output_file}} if output_file else {}))


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_calibrate_then_run_finds_the_fault_after_it_starts(ae_bundle, recordings, tmp_path,
                                                             capsys):
    root, change_s, train = recordings
    cfg = config(tmp_path, ae_bundle, source="file", file=str(root / "normal_then_faulty.wav"),
                 realtime=False)
    assert harken(["calibrate", "--config", str(cfg), "--files", *train, "--quiet"]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["intervals"] >= 10 and cal["threshold"] > cal["score_max"] * 0.9
    png = tmp_path / "state" / "calibration.png"
    if importlib.util.find_spec("matplotlib"):
        assert png.stat().st_size > 5000
    else:           # a device-only install: the figure is optional, and it says why not
        assert cal["plot"].startswith("not drawn: matplotlib is not installed") and not png.exists()
    assert json.loads((tmp_path / "state" / "threshold-fan.json").read_text())["threshold"] == \
        pytest.approx(cal["threshold"])

    assert harken(["check-config", str(cfg)]) == 0
    resolved = json.loads(capsys.readouterr().out)["resolved"]
    assert resolved["threshold_from"].startswith("calibration")

    assert harken(["run", "--config", str(cfg)]) == 0
    records = lines_of(capsys.readouterr().out)
    scores = [r for r in records if r["kind"] == "score"]
    events = [r for r in records if r["kind"] == "event"]
    assert [r["status"] for r in records
            if r["kind"] == "status" and r["status"] != "stats"] == ["started", "stopped"]
    assert len(scores) == 12 and [s["seq"] for s in scores] == list(range(1, 13))
    assert {"ts", "seq", "score", "threshold", "anomaly", "interval_s", "model",
            "backend"} <= set(scores[0])
    first_faulty = int(change_s // 10)        # intervals 0..5 are normal audio
    assert not any(s["anomaly"] for s in scores[:first_faulty])
    assert events and events[0]["type"] == "start"
    assert events[0]["seq"] > first_faulty    # after the change, not before
    assert scores[-1]["anomaly"]


def test_silent_and_clipped_audio_is_reported_not_scored(ae_bundle, recordings, tmp_path,
                                                        capsys):
    root, _, _ = recordings
    x, _ = read_wav(root / "normal_then_faulty.wav", RATE)
    ten = 10 * RATE
    bad = np.r_[x[:ten], np.zeros(ten), np.clip(x[:ten] * 1000, -1, 1)].astype(np.float32)
    write_wav(tmp_path / "bad.wav", bad, RATE)
    cfg = config(tmp_path, ae_bundle, output_file=tmp_path / "log" / "scores.jsonl",
                 source="file", file=str(tmp_path / "bad.wav"), realtime=False)
    assert harken(["run", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "log" / "scores.jsonl").read_text() == out     # the file gets it all
    scores = [r for r in lines_of(out) if r["kind"] == "score"]
    assert [s["status"] for s in scores] == ["ok", "silent", "clipped"]
    assert scores[0]["score"] is not None and scores[1]["score"] is None
    assert scores[2]["score"] is None and not any(s["anomaly"] for s in scores)


def test_raw_pcm_on_stdin(ae_bundle, recordings, tmp_path):
    root, _, _ = recordings
    x, _ = read_wav(root / "normal_then_faulty.wav", RATE)
    pcm = (np.clip(x[:25 * RATE], -1, 1) * 32767).astype("<i2").tobytes()
    cfg = config(tmp_path, ae_bundle, source="stdin")
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(cfg)],
                         input=pcm, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    scores = [r for r in lines_of(out.stdout.decode()) if r["kind"] == "score"]
    assert len(scores) == 2 and all(s["status"] == "ok" for s in scores)


def test_stdin_source_with_stdin_closed_is_one_clear_line(ae_bundle, tmp_path):
    import shlex
    cfg = config(tmp_path, ae_bundle, source="stdin")
    cmd = f"{shlex.quote(sys.executable)} -m harken.agent.cli run --config {shlex.quote(str(cfg))} <&-"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "standard input is closed" in out.stderr and "Traceback" not in out.stderr


def test_score_files_offline(ae_bundle, recordings, tmp_path, capsys):
    root, _, _ = recordings
    x, _ = read_wav(root / "normal_then_faulty.wav", RATE)
    write_wav(tmp_path / "n.wav", x[:10 * RATE], RATE)
    write_wav(tmp_path / "f.wav", x[-10 * RATE:], RATE)
    write_wav(tmp_path / "short.wav", x[:100], RATE)
    assert harken(["score", str(ae_bundle), str(tmp_path / "n.wav"), str(tmp_path / "f.wav"),
                   "--json", "--threshold", "1e9"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["score"] > rows[0]["score"] and rows[0]["anomaly"] is False
    assert harken(["score", str(ae_bundle), str(tmp_path / "short.wav")]) == 2
    assert "shorter than one model window" in capsys.readouterr().err


def test_run_refuses_bad_bundles_and_configs_in_one_line(ae_bundle, tmp_path, capsys):
    cfg = config(tmp_path, tmp_path / "missing", source="file", file="x.wav")
    assert harken(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "not a bundle" in err and "Traceback" not in err
    cfg.write_text(cfg.read_text().replace("[decision]", "[decision]\nwindow = 3"))
    assert harken(["check-config", str(cfg)]) == 2
    assert "unknown key 'decision.window'" in capsys.readouterr().err


def test_unusable_output_file_and_state_dir_name_their_key(ae_bundle, recordings, tmp_path,
                                                            capsys):
    root, _, _ = recordings
    wav = str(root / "normal_then_faulty.wav")
    cfg = config(tmp_path, ae_bundle, output_file="/proc/nope/scores.jsonl", source="file",
                 file=wav, realtime=False)
    assert harken(["run", "--config", str(cfg), "--intervals", "1"]) == 2
    err = capsys.readouterr().err
    assert "key 'output.file' = '/proc/nope/scores.jsonl': cannot open it" in err

    (tmp_path / "a-file").write_text("in the way")
    cfg = write_agent_config(
        tmp_path / "mqtt.toml", agent={"node": "n", "machine": "fan", "state_dir": "a-file"},
        model={"bundle": ae_bundle}, audio={"source": "file", "file": wav, "realtime": False},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": 1})
    assert harken(["run", "--config", str(cfg), "--intervals", "1"]) == 2
    err = capsys.readouterr().err
    assert "key 'agent.state_dir' = 'a-file': cannot create the folder" in err
    assert "Traceback" not in err


def test_a_nan_in_a_wav_file_marks_its_interval_invalid_and_scoring_goes_on(ae_bundle, recordings,
                                                                             tmp_path):
    root, _, _ = recordings
    x, _ = read_wav(root / "normal_then_faulty.wav", RATE)
    x = x[:40 * RATE].astype(np.float32)
    x[15 * RATE] = np.nan                                   # inside the second interval
    import scipy.io.wavfile
    scipy.io.wavfile.write(tmp_path / "nan.wav", RATE, x)   # a float WAV can hold a NaN
    cfg = config(tmp_path, ae_bundle, source="file", file=str(tmp_path / "nan.wav"),
                 realtime=False)
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    statuses = [r["status"] for r in lines_of(out.stdout) if r["kind"] == "score"]
    assert statuses == ["ok", "invalid", "ok", "ok"]


def test_check_config_refuses_what_run_refuses(ae_bundle, recordings, tmp_path, capsys,
                                                monkeypatch):
    root, _, _ = recordings
    wav = str(root / "normal_then_faulty.wav")
    monkeypatch.delenv("HARKEN_TEST_UNSET", raising=False)
    cases = [
        ({"agent": {"node": "n", "machine": "fan", "section": 7}, "audio": {"source": "file",
                                                                           "file": wav}},
         "key 'agent.section' = 7: the bundle has sections [0, 1]"),
        ({"agent": {"node": "n", "machine": "fan"}, "audio": {"source": "file",
                                                             "file": "missing.wav"}},
         "key 'audio.file' = 'missing.wav': no such file"),
        ({"agent": {"node": "n", "machine": "fan"}, "audio": {"source": "file", "file": wav},
          "mqtt": {"enabled": True, "username": "u", "password_env": "HARKEN_TEST_UNSET"}},
         "environment variable HARKEN_TEST_UNSET is not set"),
    ]
    for i, (sections, message) in enumerate(cases):
        cfg = write_agent_config(tmp_path / f"c{i}.toml", model={"bundle": ae_bundle},
                                 **sections)
        for command in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
            assert harken(command) == 2, (command, message)
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, (command, err)
