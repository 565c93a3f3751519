"""Evidence audio (docs/agent.md "Hearing the alarm (evidence audio)"): kept only when
enabled, around each anomaly start, bounded, never published; `harken evidence` writes it out.
Real `harken run`s on a file source, a real Mosquitto (harken.testkit)."""

from __future__ import annotations

import errno
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from harken.agent.cli import main as harken
from harken.agent.decision.hysteresis import Event
from harken.agent.decision.records import IntervalResult
from harken.agent.sinks import evidence as ev
from harken.agent.sources.wavio import read_wav
from harken.testkit.mosquitto import Listener, agent_config, run_agent

RATE = 16000


def pcm_of(wav: Path) -> np.ndarray:
    """The input as the pipeline keeps it: int16 of the samples the file source reads."""
    x, _ = read_wav(wav, RATE)
    return (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def read_pcm(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def with_evidence(cfg: Path, **keys) -> Path:
    """``cfg`` with an ``[evidence]`` table (the testkit writes the others)."""
    rows = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    cfg.write_text(cfg.read_text() + f"[evidence]\n{rows}")
    return cfg


def decision_two_of_two(cfg: Path) -> Path:
    """threshold 0 with k_on = n = 2: the second interval (seq 2) starts the event, so the
    first is the audio before it."""
    text = re.sub(r"^k_on = 1$", "k_on = 2", cfg.read_text(), flags=re.M)
    cfg.write_text(re.sub(r"^n = 1$", "n = 2", text, flags=re.M))
    return cfg


def test_evidence_on_keeps_the_event_audio_bounded_and_never_publishes_it(
        ae_bundle, wav, broker, tmp_path, capsys):
    cfg = decision_two_of_two(with_evidence(
        agent_config(tmp_path, ae_bundle, broker.port, wav), enabled=True, before_s=2,
        after_s=2, events=2))
    pcm = pcm_of(wav)
    listener = Listener(broker.port)
    try:
        r = run_agent(cfg)
        assert r.returncode == 0, r.stderr
        listener.wait(lambda s: len(s.scores()) == 5)
        payloads = [p for _, p, _ in listener.messages]
    finally:
        listener.close()
    state = tmp_path / "state"
    folder = state / "evidence-fan"
    assert sorted(p.name for p in folder.iterdir()) == ["2.json", "2.wav"]
    meta = json.loads((folder / "2.json").read_text())
    assert meta["seq"] == 2 and meta["rate"] == RATE and meta["event_offset_s"] == 2.0
    assert meta["threshold"] == 0 and meta["score"] > 0 and meta["model"]
    # the interval before (0-2 s), the start interval (2-4 s) and 2 s after: 0-6 s of the input
    got, rate = read_pcm(folder / "2.wav")
    assert rate == RATE and meta["seconds"] == 6.0
    np.testing.assert_array_equal(got, pcm[:6 * RATE])

    # never published, nowhere else in the state folder: a stretch of its samples is found
    # only in the evidence WAV
    needle = pcm[3 * RATE:3 * RATE + 64].astype("<i2").tobytes()
    assert files_holding(state, needle) == [folder / "2.wav"]
    assert not any("audio" in json.loads(p) for p in payloads if p.startswith("{"))
    assert all(needle not in p.encode() and len(p) < 4096 for p in payloads)

    # harken evidence: lists it, writes it out, refuses an event it does not keep
    assert harken(["evidence", "--config", str(cfg), "--list"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["machine"], r["seq"]) for r in rows] == [("fan", 2)]
    out = tmp_path / "heard.wav"
    assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out", str(out)]) == 0
    assert out.read_bytes() == (folder / "2.wav").read_bytes()
    assert harken(["evidence", "--config", str(cfg), "--event", "7"]) == 2
    err = capsys.readouterr().err
    assert "no evidence for event 7" in err and "kept: 2" in err and "Traceback" not in err

    # each run starts OFF again and its seqs go on: three more events, only the last 2 kept
    for _ in range(3):
        assert run_agent(cfg).returncode == 0
    seqs = [k.seq for k in ev.kept(folder)]
    assert len(seqs) == 2 and seqs[0] > 2 and seqs == sorted(seqs)
    assert {p.suffix for p in folder.iterdir()} == {".wav", ".json"}


def test_evidence_is_off_by_default_no_audio_kept_and_turning_it_off_deletes_it(
        ae_bundle, wav, broker, tmp_path, capsys):
    cfg = agent_config(tmp_path, ae_bundle, broker.port, wav)
    pcm = pcm_of(wav)
    listener = Listener(broker.port)
    try:
        r = run_agent(cfg)
        assert r.returncode == 0, r.stderr
        listener.wait(lambda s: len(s.scores()) == 5)
        assert any(json.loads(p).get("anomaly") for t, p, _ in listener.messages
                   if t.endswith("/score"))              # events happened, none was kept
        payloads = [p for _, p, _ in listener.messages]
    finally:
        listener.close()
    state = tmp_path / "state"
    assert not (state / "evidence-fan").exists()
    for start in range(0, 10 * RATE - 64, 2 * RATE):
        assert files_holding(state, pcm[start:start + 64].astype("<i2").tobytes()) == []
    assert all(len(p) < 4096 for p in payloads)
    assert not any("audio" in json.loads(p) for p in payloads if p.startswith("{"))
    assert harken(["evidence", "--config", str(cfg), "--event", "1"]) == 2
    assert "evidence audio is off for machine 'fan'" in capsys.readouterr().err
    assert harken(["evidence", "--config", str(cfg), "--list"]) == 2
    assert "evidence audio is off (set [evidence] enabled = true" in capsys.readouterr().err

    # on, then off again: the next start deletes what was kept
    on = with_evidence(agent_config(tmp_path, ae_bundle, broker.port, wav, name="on.toml"),
                       enabled=True, before_s=0, after_s=0)
    assert run_agent(on).returncode == 0
    assert ev.kept(state / "evidence-fan")
    assert run_agent(cfg).returncode == 0
    assert not (state / "evidence-fan").exists()


# -- the sink alone: synthetic intervals ---------------------------------------------------

def result(seq: int, audio: np.ndarray, start: bool = False) -> IntervalResult:
    return IntervalResult(1e9 + seq, seq, 1.0, 0.5, start, 10.0, "m", "onnx", "ok", -20.0, 9,
                          1.0, Event("start", 1e9 + seq, 1.0, 0.0) if start else None,
                          audio=audio)


def interval(seq: int) -> np.ndarray:
    return np.full(10 * RATE, seq, np.int16)            # 10 s, each interval its own value


def sink(folder: Path, **keys) -> ev.EvidenceSink:
    settings = ev.EvidenceSection(enabled=True, **keys)
    folder.mkdir(exist_ok=True)
    return ev.EvidenceSink(folder, settings, 10.0, rate=RATE)


def test_the_byte_cap_prunes_oldest_first_and_keeps_the_newest(tmp_path):
    s = sink(tmp_path / "ev", before_s=5, after_s=5, events=100, max_mb=1)   # 20 s = 640 kB each
    for seq in range(1, 9):
        s.interval(result(seq, interval(seq), start=seq % 2 == 0))
    s.close()
    kept = ev.kept(tmp_path / "ev")
    assert [k.seq for k in kept] == [8]                  # two would be over 1 MB
    got, _ = read_pcm(kept[0].wav)
    # 5 s of interval 7, interval 8 whole, and (cut short by the stop) nothing after it
    assert list(np.unique(got[:5 * RATE])) == [7] and list(np.unique(got[5 * RATE:])) == [8]
    assert len(got) == 15 * RATE
    s = sink(tmp_path / "two", before_s=5, after_s=5, events=100, max_mb=1.5)
    for seq in range(1, 9):
        s.interval(result(seq, interval(seq), start=seq % 2 == 0))
    assert [k.seq for k in ev.kept(tmp_path / "two")] == [4, 6]   # 8's after-part to come
    s.close()
    assert [k.seq for k in ev.kept(tmp_path / "two")] == [6, 8]


def test_a_full_disk_is_the_sinks_failure_and_the_next_event_is_written(tmp_path, monkeypatch):
    s = sink(tmp_path / "ev", before_s=0, after_s=0)
    real = ev.atomic_file

    def full(path, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev, "atomic_file", full)
    s.interval(result(1, interval(1), start=True))        # raises nothing
    assert "No space left on device" in s.failure and s.health()["evidence_errors"] == 1
    monkeypatch.setattr(ev, "atomic_file", real)
    s.interval(result(2, interval(2), start=True))
    assert s.failure is None and [k.seq for k in ev.kept(tmp_path / "ev")] == [2]


def test_a_write_cut_short_is_swept_at_the_next_start(tmp_path):
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "5.wav").write_bytes(b"RIFF half")          # its JSON never came
    (folder / ".6.wav.123.tmp").write_bytes(b"RIFF")
    sink(folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("key, value, expected", [
    ("before_s", -1, "0 to 300 seconds"), ("after_s", 301, "0 to 300 seconds"),
    ("events", 0, "1 to 10000 events"), ("max_mb", 0.5, "1 to 100000 MB"),
    ("max_mb_per_day", 0, "1 to 100000 MB"),
    ("enabled", "yes", "boolean")])
def test_bad_evidence_settings_are_one_clear_line(tmp_path, ae_bundle, key, value, expected,
                                                   capsys):
    cfg = with_evidence(agent_config(tmp_path, ae_bundle, 1883, tmp_path / "x.wav"),
                        **{key: value})
    assert harken(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]        # (above it: the test secret's mode warning)
    assert "Traceback" not in err and f"evidence.{key}" in line and expected in line


def test_the_daily_cap_skips_events_until_a_day_has_passed_and_survives_a_restart(tmp_path):
    now = [1e9]
    s = sink(tmp_path / "ev", before_s=5, after_s=5, max_mb_per_day=1)   # 640 kB an event
    s.clock = lambda: now[0]
    for seq in (2, 4):
        s.interval(result(seq - 1, interval(seq - 1)))
        s.interval(result(seq, interval(seq), start=True))
    s.interval(result(5, interval(5)))
    assert [k.seq for k in ev.kept(tmp_path / "ev")] == [2]
    assert s.health() == {"evidence_written": 1, "evidence_errors": 0, "evidence_skipped": 1}
    again = sink(tmp_path / "ev", before_s=5, after_s=5, max_mb_per_day=1)   # a restart
    again.clock = lambda: now[0]
    again.interval(result(6, interval(6), start=True))
    again.interval(result(7, interval(7)))
    assert [k.seq for k in ev.kept(tmp_path / "ev")] == [2] and again.skipped == 1
    now[0] = (tmp_path / "ev" / "2.json").stat().st_mtime + 86401         # a day later
    again.interval(result(8, interval(8), start=True))
    again.interval(result(9, interval(9)))
    assert [k.seq for k in ev.kept(tmp_path / "ev")] == [2, 8]


# -- damaged evidence state (hostile findings): the node runs, the CLI says one line -------

def test_a_file_in_place_of_the_evidence_folder_fails_the_sink_not_the_node(
        ae_bundle, wav, broker, tmp_path, capsys):
    cfg = decision_two_of_two(with_evidence(
        agent_config(tmp_path, ae_bundle, broker.port, wav), enabled=True, before_s=0,
        after_s=0))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "evidence-fan").write_text("not audio")
    listener = Listener(broker.port)
    try:
        r = run_agent(cfg)
        assert r.returncode == 0, r.stderr
        listener.wait(lambda s: len(s.scores()) == 5)        # scored to the end
    finally:
        listener.close()
    said = [line for line in r.stderr.splitlines() if "not a folder" in line]
    assert said and "Traceback" not in r.stderr
    assert sum("WARNING: evidence" in line for line in said) == 1    # the sink: said once
    assert (state / "evidence-fan").read_text() == "not audio"       # left alone
    for args in (["--list"], ["--event", "2"]):
        assert harken(["evidence", "--config", str(cfg), *args]) == 2
        err = capsys.readouterr().err
        # the last line (above it: the test secret's mode warning)
        assert "Traceback" not in err and "evidence-fan is not a folder" in \
            err.strip().splitlines()[-1]


@pytest.fixture
def one_event(tmp_path, ae_bundle):
    """A config with evidence on and event 2 kept (10 s, written by the sink)."""
    cfg = with_evidence(agent_config(tmp_path, ae_bundle, 1883, tmp_path / "x.wav"),
                        enabled=True)
    (tmp_path / "state").mkdir(exist_ok=True)
    s = sink(tmp_path / "state" / "evidence-fan", before_s=0, after_s=0)
    s.interval(result(2, interval(2), start=True))
    return cfg, tmp_path / "state" / "evidence-fan"


@pytest.mark.parametrize("meta, expected", [
    ("{not json", "2.json: cannot read it (not JSON"),
    ("[1, 2]", "2.json: expected a JSON object, got list"),
    ('{"seconds": "x", "event_offset_s": 0, "rate": 16000}', "2.json: key 'seconds' = 'x'"),
    ('{"seconds": 10, "event_offset_s": 0, "rate": 16000, "score": "hi"}',
     "2.json: key 'score' = 'hi'")])
def test_a_damaged_event_json_is_one_line_naming_it(one_event, tmp_path, capsys, meta,
                                                    expected):
    cfg, folder = one_event
    (folder / "2.json").write_text(meta)
    out = tmp_path / "out.wav"
    assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err and str(folder / "2.json") in err
    assert not out.exists()
    assert harken(["evidence", "--config", str(cfg), "--list"]) == 0   # the event left out
    captured = capsys.readouterr()
    assert captured.out == "" and expected in captured.err


def test_a_wav_cut_short_is_refused_naming_it_and_out_into_no_folder_says_so(
        one_event, tmp_path, capsys):
    cfg, folder = one_event
    out = tmp_path / "out.wav"
    assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out",
                   str(tmp_path / "nowhere" / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in err and "removed" not in err
    whole = (folder / "2.wav").read_bytes()
    (folder / "2.wav").write_bytes(whole[:len(whole) // 3])            # a copy cut short
    assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / '2.wav'}: holds " in err and "says 10 s" in err and "cut short" in err
    assert not out.exists()
    (folder / "2.wav").write_bytes(whole)
    assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out", str(out)]) == 0
    assert "10 s around event 2" in capsys.readouterr().out
    assert out.read_bytes() == whole


def test_out_inside_the_state_folder_is_refused_links_followed(one_event, tmp_path, capsys):
    """F40b #5: ``--out`` onto any file of the agent's state folder (its enrolled bank, an
    event's record), directly or through a link, is refused in one line and nothing there
    is touched."""
    cfg, folder = one_event
    state = tmp_path / "state"
    (state / "enrolled-fan.npz").write_bytes(b"the bank")
    (tmp_path / "link").symlink_to(state)
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    for out in (state / "enrolled-fan.npz", folder / "2.json", folder / "new.wav",
                tmp_path / "link" / "enrolled-fan.npz", state):
        assert harken(["evidence", "--config", str(cfg), "--event", "2", "--out",
                       str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "inside the agent's state folder" in err[-1] and "Traceback" not in "".join(err)
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
