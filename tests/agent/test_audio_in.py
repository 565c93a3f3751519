"""Audio in under hostile conditions (docs/reliability.md "Audio in"): a DC offset, damaged
or lying WAV headers, stdin cut mid-sample, channels that do not exist, two readers of one
stdin, and `harken score` judging audio as `harken run` does."""

import io
import json
import logging
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io.wavfile

from harken.agent.cli import main as harken
from harken.agent.config import ConfigError, parse_config
from harken.agent.decision.health import check_audio
from harken.agent.sources import SOURCES, FileSource, wav_chunks
from harken.agent.sources.dc import DCRemover, remove_dc
from harken.agent.sources.wavio import WavError, read_header, read_wav, write_wav
from harken.testkit.files import write_agent_config

RATE = 16000


def bundle_threshold(bundle) -> float:
    return json.loads((Path(bundle) / "manifest.json").read_text())["threshold"]["value"]


def agent_config(tmp_path, bundle, audio, machines=None, interval_s=2, name="agent.toml"):
    sections = dict(agent={"node": "n", "machine": "fan", "state_dir": tmp_path / "state"}
                    if machines is None else {"node": "n", "state_dir": tmp_path / "state"},
                    model={"bundle": bundle, "artifact": "onnx-int8"}, audio=audio,
                    # the bundle's threshold was fitted on 10-s intervals; at another length
                    # run refuses it (docs/agent.md), so the test states one by hand
                    decision={"interval_s": interval_s} if interval_s == 10 else
                    {"interval_s": interval_s, "threshold": bundle_threshold(bundle)},
                    output={"stdout": False, "file": tmp_path / f"{name}.jsonl", "stats_s": 3600})
    if machines is not None:
        sections["machines"] = machines
    return write_agent_config(tmp_path / name, **sections)


def score_records(cfg) -> list[dict]:
    lines = (cfg.parent / f"{cfg.name}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "score"]


def riff(fmt: bytes, data: bytes, data_size: int | None = None, extra: bytes = b"",
         magic: bytes = b"RIFF") -> bytes:
    """A WAV file's bytes with a hand-made 'fmt ' chunk (and ``extra`` chunks before the
    audio); ``data_size``: what the data chunk's header claims."""
    size = len(data) if data_size is None else data_size
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data"
            + struct.pack("<I", size) + data)
    return magic + struct.pack("<I", len(body)) + body


GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"   # KSDATAFORMAT_SUBTYPE_*


def fmt_chunk(tag=1, channels=1, rate=RATE, bits=16, align=None) -> bytes:
    align = channels * bits // 8 if align is None else align
    return struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)


# -- DC offset ------------------------------------------------------------------------------

def test_a_dc_offset_is_removed_before_the_features_and_reported(ae_bundle, wav, tmp_path):
    """0.05 DC (a cheap USB microphone) on a normal recording: the same scores as without,
    status ok, and each score names the offset (before: scores 20 % higher, nothing said)."""
    x, _ = read_wav(wav, RATE)
    write_wav(tmp_path / "dc.wav", x + 0.05, RATE)
    clean = agent_config(tmp_path, ae_bundle, {"source": "file", "file": wav,
                                               "realtime": False}, name="clean.toml")
    offset = agent_config(tmp_path, ae_bundle, {"source": "file", "file": tmp_path / "dc.wav",
                                                "realtime": False}, name="dc.toml")
    assert harken(["run", "--config", str(clean)]) == 0
    assert harken(["run", "--config", str(offset)]) == 0
    a, b = score_records(clean), score_records(offset)
    assert len(a) == len(b) == 5 and all(r["status"] == "ok" for r in a + b)
    np.testing.assert_allclose([r["score"] for r in b], [r["score"] for r in a], rtol=0.01)
    assert all("dc_offset" not in r for r in a)
    assert all(r["dc_offset"] == pytest.approx(0.05, abs=2e-3) for r in b)


def test_the_health_check_measures_the_offset_and_calls_a_constant_silent():
    rng = np.random.default_rng(0)
    sound = (0.05 * rng.standard_normal(RATE)).astype(np.float32)
    ok = check_audio(sound + np.float32(0.05))
    assert ok.status == "ok" and ok.dc_offset == pytest.approx(0.05, abs=1e-3)
    assert ok.large_dc_offset and not check_audio(sound).large_dc_offset
    assert ok.rms_dbfs == pytest.approx(check_audio(sound).rms_dbfs, abs=0.01)
    dead = check_audio(np.full(RATE, 0.05, np.float32))   # a dead microphone's constant
    assert dead.status == "silent" and dead.dc_offset == pytest.approx(0.05)


@pytest.mark.parametrize("chunk", [7, 160, 1600, 7777, 40000])
def test_dc_removal_does_not_depend_on_how_the_stream_is_cut(chunk):
    rng = np.random.default_rng(1)
    x = (0.05 * rng.standard_normal(3 * RATE) + 0.03).astype(np.float32)
    dc = DCRemover(RATE)
    streamed = np.concatenate([dc.push(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    np.testing.assert_allclose(streamed, remove_dc(x, RATE), atol=1e-6)
    assert abs(float(streamed[RATE:].mean())) < 2e-3      # the offset is gone


def test_dc_removal_is_the_mean_of_each_samples_window_for_chunks_shorter_and_longer():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(2000) + 0.3).astype(np.float32)
    x[[5, 700, 701]] = [np.nan, 50.0, -np.inf]
    sane = np.where(np.abs(x) <= 2, x.astype(np.float64), np.nan)
    want = np.array([x[i] - np.nanmean(sane[max(0, i - 99):i + 1]) for i in range(len(x))])
    dc, got, i = DCRemover(1000, 0.1), [], 0                  # a window of 100 samples
    for size in rng.integers(1, 350, 40):
        got.append(dc.push(x[i:i + size]))
        i += size
    got.append(dc.push(x[i:]))
    np.testing.assert_allclose(np.concatenate(got), want.astype(np.float32), rtol=1e-6,
                               atol=1e-6)


def test_an_offset_goes_from_the_first_samples_on():
    """The running mean is the expanding mean of what has arrived at a stream's start: a
    real offset goes at once (an offset left in a clip's first 64 samples alone raised
    false alarms of the default bundle from 6 % to 13 %), even a small one."""
    rng = np.random.default_rng(3)
    x = (0.05 * rng.standard_normal(12 * RATE)).astype(np.float32)
    for offset in (0.001, 0.05, -0.3):       # the output does not depend on the offset at all
        np.testing.assert_allclose(remove_dc(x + np.float32(offset), RATE), remove_dc(x, RATE),
                                   atol=2e-7)


def test_a_wild_sample_does_not_move_the_offset_estimate():
    x = np.full(2 * RATE, 0.02, np.float32)
    x[100], x[200], x[300] = np.nan, 1e30, -np.inf
    y = remove_dc(x, RATE)
    assert np.isnan(y[100]) and np.isinf(y[300]) and y[200] > 1e29
    assert np.abs(np.delete(y, [100, 200, 300])).max() < 1e-6     # the rest: offset-free


# -- harken score judges audio as run does ------------------------------------------------------

def test_score_says_silent_clipped_invalid_and_warns_on_short_clips(ae_bundle, wav, tmp_path,
                                                                     capsys):
    """Before: silence, a clipped and a 40x-loud file scored ANOMALY, a 1e30 sample gave
    inf/nan, and a 3-s clip was scored against a 10-s threshold without a word."""
    x, _ = read_wav(wav, RATE)
    write_wav(tmp_path / "silence.wav", np.zeros_like(x), RATE)
    write_wav(tmp_path / "clipped.wav", np.clip(40 * x, -1, 1), RATE)
    scipy.io.wavfile.write(tmp_path / "loud.wav", RATE, (40 * x).astype(np.float32))
    wild = x.copy()
    wild[RATE] = 1e30
    scipy.io.wavfile.write(tmp_path / "wild.wav", RATE, wild)
    nan = x.copy()
    nan[RATE] = np.nan
    scipy.io.wavfile.write(tmp_path / "nan.wav", RATE, nan)
    write_wav(tmp_path / "short.wav", x[:3 * RATE], RATE)
    names = ["silence", "clipped", "loud", "wild", "nan", "short"]
    files = [str(wav)] + [str(tmp_path / f"{n}.wav") for n in names]
    assert harken(["score", str(ae_bundle), *files, "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {os.path.basename(r["file"]): r for r in json.loads(out)}
    assert rows["ten.wav"]["status"] == "ok" and rows["ten.wav"]["anomaly"] is not None
    assert [rows[f"{n}.wav"]["status"] for n in names] == \
        ["silent", "clipped", "clipped", "invalid", "invalid", "ok"]
    for n in names[:5]:
        assert rows[f"{n}.wav"]["score"] is None and rows[f"{n}.wav"]["anomaly"] is None
    assert "warning" not in rows["ten.wav"] and "shorter than the 10-s interval" in \
        rows["short.wav"]["warning"]
    assert "short.wav: 3 s (48000 samples at 16000 Hz) is shorter than the 10-s interval" in err
    assert harken(["score", str(ae_bundle), *files[:3]]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].endswith("silent (not scored)") and table[2].endswith("clipped (not scored)")
    assert "nan" not in " ".join(table) and "Traceback" not in err


def test_run_marks_the_interval_of_a_wild_sample_invalid_and_scores_the_others(ae_bundle, wav,
                                                                             tmp_path):
    x, _ = read_wav(wav, RATE)
    x[3 * RATE] = 1e30                    # in the second 2-s interval
    scipy.io.wavfile.write(tmp_path / "wild.wav", RATE, x)
    cfg = agent_config(tmp_path, ae_bundle, {"source": "file", "file": tmp_path / "wild.wav",
                                             "realtime": False})
    assert harken(["run", "--config", str(cfg)]) == 0
    scores = score_records(cfg)
    assert [s["status"] for s in scores] == ["ok", "invalid", "ok", "ok", "ok"]
    assert scores[1]["score"] is None and all(s["score"] is not None for s in scores[2:])


# -- stdin ending mid-sample ---------------------------------------------------------------

def test_stdin_ending_inside_a_sample_reports_its_last_interval(ae_bundle, wav, tmp_path,
                                                                monkeypatch, caplog):
    """4 s of PCM and one byte of a fifth second: two intervals and a warning (before: a
    traceback in the listening thread and the last interval lost)."""
    x, _ = read_wav(wav, RATE)
    pcm = (x[:4 * RATE] * 32767).astype("<i2").tobytes() + b"\x01"
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(pcm)))
    cfg = agent_config(tmp_path, ae_bundle, {"source": "stdin"})
    with caplog.at_level(logging.WARNING, logger="harken"):
        assert harken(["run", "--config", str(cfg)]) == 0
    scores = score_records(cfg)
    assert len(scores) == 2 and all(s["status"] == "ok" for s in scores)
    assert "stdin ended inside a frame: its last 1 byte(s)" in caplog.text


# -- lying WAV headers ---------------------------------------------------------------------

@pytest.mark.parametrize("name, data, message", [
    ("ghz", riff(fmt_chunk(rate=2_000_000_000), b"\0" * 3200),
     "the header says 2000000000 Hz, which is no audio rate"),
    ("fmt4g", b"RIFF\xff\xff\xff\xffWAVEfmt \xf0\xff\xff\xff" + b"\0" * 64,
     "its 'fmt ' chunk claims 4294967280 bytes, the file has 64 left"),
    ("zero-channels", riff(fmt_chunk(channels=0, align=2), b"\0" * 3200),
     "the header says 0 channels"),
    ("many-channels", riff(fmt_chunk(channels=60000, align=2), b"\0" * 3200),
     "the header says 60000 channels"),
    ("alaw", riff(fmt_chunk(tag=6, bits=8), b"\0" * 3200), "encoding 0x0006, neither PCM"),
    ("nodata", riff(fmt_chunk(), b"")[:-8], "no 'data' chunk"),
    ("list4g", riff(fmt_chunk(), b"\0" * 3200, extra=b"LIST\xf0\xff\xff\xff"),
     "its 'LIST' chunk claims 4294967280 bytes"),
])
def test_a_lying_header_is_refused_naming_the_file_before_anything_is_allocated(
        tmp_path, name, data, message, ae_bundle, capsys):
    path = tmp_path / f"{name}.wav"
    path.write_bytes(data)
    with pytest.raises(WavError, match=f"{name}.wav: .*{message}"):
        read_wav(path, RATE)
    assert harken(["score", str(ae_bundle), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}.wav" in err[0] and message in err[0]


def test_a_two_ghz_file_in_run_is_one_line_naming_it(ae_bundle, tmp_path, capsys):
    """Before: the file was 'resampled' into nothing, and run stopped with 0 intervals and
    not a word."""
    (tmp_path / "ghz.wav").write_bytes(riff(fmt_chunk(rate=2_000_000_000), b"\0" * 32000))
    cfg = agent_config(tmp_path, ae_bundle, {"source": "file", "file": tmp_path / "ghz.wav",
                                             "realtime": False})
    assert harken(["run", "--config", str(cfg)]) == 2
    assert "ghz.wav: the header says 2000000000 Hz" in capsys.readouterr().err


def test_a_data_chunk_longer_than_the_file_is_read_as_far_as_it_goes(tmp_path, caplog):
    pcm = (np.arange(1000) * 20).astype("<i2")
    (tmp_path / "cut.wav").write_bytes(riff(fmt_chunk(), pcm.tobytes(), data_size=0xFFFFFFF0))
    with caplog.at_level(logging.WARNING, logger="harken"):
        x, _ = read_wav(tmp_path / "cut.wav")
        chunks = np.concatenate(list(wav_chunks(tmp_path / "cut.wav", RATE)))
    np.testing.assert_array_equal(x, pcm / 32768.0)
    np.testing.assert_array_equal(chunks, x)
    assert "the header says 4294967280 bytes of audio, the file holds 2000" in caplog.text


# -- channels that do not exist, two readers of one stdin -------------------------------------

def test_check_config_refuses_a_channel_the_file_does_not_have(ae_bundle, wav, tmp_path,
                                                               capsys):
    """Before: check-config passed, and run failed without naming the machine or key."""
    cfg = agent_config(tmp_path, ae_bundle, {"source": "file", "file": wav, "realtime": False},
                       machines=[{"name": "fan", "channel": 1}, {"name": "pump", "channel": 3}])
    assert harken(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "machine pump:" in err and "key 'audio.channel' = 3" in err
    assert "ten.wav has 1 channel(s)" in err and len(err.splitlines()) == 1
    assert harken(["run", "--config", str(cfg)]) == 2
    assert "machine pump:" in capsys.readouterr().err


def test_the_microphone_preflight_refuses_a_channel_the_device_lacks(monkeypatch):
    sd = pytest.importorskip("sounddevice")
    monkeypatch.setattr(sd, "query_devices", lambda device=None, kind=None:
                        {"name": "USB mic", "max_input_channels": 2} if kind else
                        [{"name": "USB mic", "max_input_channels": 2}])
    cfg = parse_config({"model": {"bundle": "b"},
                        "audio": {"source": "mic", "device": "USB", "channel": 3}}, "a.toml")
    with pytest.raises(ConfigError, match=r"a.toml: key 'audio.channel' = 3: audio.device "
                                          r"'USB' has 2 input channel\(s\)"):
        SOURCES["mic"].preflight(cfg)
    SOURCES["mic"].preflight(parse_config({"model": {"bundle": "b"}, "audio": {
        "source": "mic", "device": "USB", "channel": 2}}, "a.toml"))
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [])    # not plugged in now:
    SOURCES["mic"].preflight(cfg)                                   # run waits for it


def test_two_stdin_inputs_are_refused_one_stdin_input_with_channels_is_not():
    base = {"model": {"bundle": "b"}, "audio": {"source": "stdin", "channels": 2}}
    with pytest.raises(ConfigError, match=r"a.toml: machines 'a' and 'b' both read stdin but "
                                          r"with different settings \(audio.channels 2 vs 1\)"):
        parse_config({**base, "machines": [{"name": "a", "channel": 1},
                                           {"name": "b", "audio": {"channels": 1}}]}, "a.toml")
    one = parse_config({**base, "machines": [{"name": "a", "channel": 1},
                                             {"name": "b", "channel": 2}]}, "a.toml")
    assert [v.audio.channel for v in one.machine_configs()] == [1, 2]


# -- own hostile cases --------------------------------------------------------------------

def test_odd_wav_layouts_are_read(tmp_path):
    """64-bit float, 24-bit packed, big-endian RIFX, an extensible header with a PCM
    sub-format, an odd data chunk (its pad byte missing) and a one-sample file."""
    x = np.array([0.0, 0.25, -0.5, 0.125], np.float64)
    scipy.io.wavfile.write(tmp_path / "f64.wav", RATE, x)
    assert read_header(tmp_path / "f64.wav").bits == 64
    np.testing.assert_allclose(read_wav(tmp_path / "f64.wav")[0], x)
    i24 = (np.round(x * 2 ** 23).astype("<i4").view("u1").reshape(-1, 4)[:, :3]).tobytes()
    (tmp_path / "i24.wav").write_bytes(riff(fmt_chunk(bits=24), i24))
    np.testing.assert_allclose(read_wav(tmp_path / "i24.wav")[0], x, atol=1e-6)
    pcm = (x * 32768).astype("<i2")
    be_fmt = struct.pack(">HHIIHH", 1, 1, RATE, 2 * RATE, 2, 16)
    body = (b"WAVEfmt " + struct.pack(">I", 16) + be_fmt + b"data"
            + struct.pack(">I", 8) + pcm.astype(">i2").tobytes())
    (tmp_path / "rifx.wav").write_bytes(b"RIFX" + struct.pack(">I", len(body)) + body)
    np.testing.assert_allclose(read_wav(tmp_path / "rifx.wav")[0], x)
    ext = fmt_chunk(tag=0xFFFE) + struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1) + GUID_TAIL
    (tmp_path / "ext.wav").write_bytes(riff(ext, pcm.tobytes()))
    np.testing.assert_allclose(read_wav(tmp_path / "ext.wav")[0], x)
    ext_alaw = fmt_chunk(tag=0xFFFE) + struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 6) + GUID_TAIL
    (tmp_path / "ext-alaw.wav").write_bytes(riff(ext_alaw, pcm.tobytes()))
    with pytest.raises(WavError, match="ext-alaw.wav: .*encoding 0x0006"):
        read_wav(tmp_path / "ext-alaw.wav")
    (tmp_path / "odd.wav").write_bytes(riff(fmt_chunk(), pcm.tobytes() + b"\x7f"))
    np.testing.assert_allclose(read_wav(tmp_path / "odd.wav")[0], x)
    write_wav(tmp_path / "one.wav", np.array([0.5]), RATE)
    assert read_wav(tmp_path / "one.wav")[0].tolist() == [0.5]


def test_a_one_sample_file_is_one_line_in_score_and_no_interval_in_run(ae_bundle, tmp_path,
                                                                       capsys):
    write_wav(tmp_path / "one.wav", np.array([0.5]), RATE)
    assert harken(["score", str(ae_bundle), str(tmp_path / "one.wav")]) == 2   # before health
    assert "one.wav: 0.00 s is shorter than one model window" in capsys.readouterr().err
    cfg = agent_config(tmp_path, ae_bundle, {"source": "file", "file": tmp_path / "one.wav",
                                             "realtime": False})
    assert harken(["run", "--config", str(cfg)]) == 0
    assert score_records(cfg) == []


def test_a_fifo_as_audio_file_is_refused_before_a_run(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    cfg = parse_config({"model": {"bundle": "b"}, "audio": {"source": "file",
                                                            "file": "pipe.wav"}},
                       str(tmp_path / "a.toml"))
    with pytest.raises(ConfigError, match=r"key 'audio.file' = 'pipe.wav': not a regular file "
                                          r".*audio.source = 'stdin'"):
        SOURCES["file"].preflight(cfg)
    with pytest.raises(WavError, match="pipe.wav: not a regular file"):
        read_wav(tmp_path / "pipe.wav")          # and never blocks opening it


def test_a_looped_file_replaced_by_a_broken_one_fails_naming_it(tmp_path, wav):
    path = tmp_path / "loop.wav"
    x, _ = read_wav(wav, RATE)
    write_wav(path, x[:RATE], RATE)
    source = FileSource(path, RATE, 0.1, realtime=False, loop=True)
    passes, stream = 0, source.chunks(lambda: False, lambda record: None)
    with pytest.raises(WavError, match="loop.wav: not a readable WAV file"):
        for chunk in stream:
            if chunk is None:
                passes += 1
                path.write_bytes(b"RIFF\0\0\0\0WAVEjunk")      # replaced between passes
    assert passes == 1


# -- score per interval, resampling, headers that disagree, interval arithmetic --------------

def test_score_judges_each_interval_as_run_does_and_says_the_worst(ae_bundle, wav, tmp_path,
                                                                   capsys):
    """Before: a 30-s file whose last 10 s were anomalous scored as the mean over all its
    windows, 'normal'; run alarmed on that interval. Now each 10-s interval is scored as run
    scores it, the recording is ANOMALY when any is, its score is the highest."""
    x, _ = read_wav(wav, RATE)
    noisy = x + 0.1 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    write_wav(tmp_path / "long.wav", np.concatenate([x, x, noisy]), RATE)
    assert harken(["score", str(ae_bundle), str(tmp_path / "long.wav"), "--json",
                   "--artifact", "onnx-int8"]) == 0          # the artifact run uses below
    [row] = json.loads(capsys.readouterr().out)
    ivs = row["intervals"]
    assert [i["start_s"] for i in ivs] == [0, 10, 20]
    assert [i["anomaly"] for i in ivs] == [False, False, True] and row["anomaly"] is True
    assert row["score"] == max(i["score"] for i in ivs) == ivs[2]["score"]
    assert "warning" not in row
    cfg = agent_config(tmp_path, ae_bundle, {"source": "file", "file": tmp_path / "long.wav",
                                             "realtime": False}, interval_s=10)
    assert harken(["run", "--config", str(cfg)]) == 0
    np.testing.assert_allclose([i["score"] for i in ivs],
                               [r["score"] for r in score_records(cfg)], rtol=1e-5)
    assert harken(["score", str(ae_bundle), str(tmp_path / "long.wav"), "--intervals"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ANOMALY" in out[0] and "max of 3 intervals of 10 s, 1 above" in out[0]
    assert len(out) == 4 and out[3].endswith("ANOMALY") and "20.000 s" in out[3]


@pytest.mark.parametrize("threads", ["100000", "0", "-3"])
def test_score_threads_out_of_range_is_one_line(ae_bundle, wav, threads, capsys):
    """Before: --threads 100000 crashed the runtime (rc 139) or hung; bounded as the
    config's model.threads is (1 to 64)."""
    assert harken(["score", str(ae_bundle), str(wav), "--threads", threads]) == 2
    err = capsys.readouterr().err
    # refused as the option is parsed (argparse: the usage, then one line naming it)
    assert "Traceback" not in err
    assert f"argument --threads: '{threads}': expected 1 to 64 threads" in err.splitlines()[-1]


@pytest.mark.parametrize("rate", [48000, 44100])
def test_a_recording_at_another_rate_scores_as_the_16k_original(ae_bundle, wav, tmp_path,
                                                                rate, capsys):
    """Before: the same audio upsampled ideally to 48 or 44.1 kHz scored 9 % high: the
    resampler's low-pass rolled off the top mel bands (docs/agent.md "Other sample rates")."""
    import scipy.signal
    x, _ = read_wav(wav, RATE)
    up = scipy.signal.resample(x.astype(np.float64), x.size * rate // RATE)    # ideal (FFT)
    scipy.io.wavfile.write(tmp_path / "up.wav", rate, up.astype(np.float32))
    assert harken(["score", str(ae_bundle), str(wav), str(tmp_path / "up.wav"), "--json"]) == 0
    original, copy = json.loads(capsys.readouterr().out)
    assert copy["score"] == pytest.approx(original["score"], rel=0.02)


@pytest.mark.parametrize("name, extra_fmt, tail, align, message", [
    ("two-fmt", fmt_chunk(rate=8000), b"", None,
     "two 'fmt ' chunks that disagree (1 channel(s), 16000 Hz, 16-bit, then 1 channel(s), "
     "8000 Hz, 16-bit)"),
    ("two-data", b"", b"data" + struct.pack("<I", 64) + b"\1" * 64, None,
     "a second 'data' chunk after the audio, at byte 6444"),
    ("block-align", b"", b"", 4,
     "block_align = 4 bytes per frame, but 1 channel(s) of 16-bit samples take 2"),
], ids=["two-fmt", "two-data", "block-align"])
def test_a_header_that_disagrees_with_itself_is_refused_naming_the_file(
        tmp_path, ae_bundle, capsys, name, extra_fmt, tail, align, message):
    """Before: scipy's reader took the second 'fmt ' (8 kHz: scored 461, ANOMALY), the last
    'data' chunk, and read mono 16-bit in 4-byte frames as half the audio."""
    extra = b"fmt " + struct.pack("<I", 16) + extra_fmt if extra_fmt else b""
    path = tmp_path / f"{name}.wav"
    path.write_bytes(riff(fmt_chunk(align=align), b"\0\1" * 3200, extra=extra) + tail)
    with pytest.raises(WavError, match=f"{name}.wav: not a readable WAV file"):
        read_header(path)
    assert harken(["score", str(ae_bundle), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}.wav" in err[0] and message in err[0]


def test_two_identical_fmt_chunks_and_chunks_after_the_audio_are_read(tmp_path):
    fmt = fmt_chunk()
    path = tmp_path / "ok.wav"
    path.write_bytes(riff(fmt, b"\0\1" * 100, extra=b"fmt " + struct.pack("<I", 16) + fmt)
                     + b"LIST" + struct.pack("<I", 3) + b"abc\0")
    assert read_header(path).frames == 100 and read_wav(path)[0].size == 100


def test_a_ten_second_file_at_half_second_intervals_gives_twenty(ae_bundle, tmp_path):
    """Before: an interval was a whole number of frames (0.512 s at 0.5 s), so 10 s gave
    19 intervals; now interval k holds samples [k*S, (k+1)*S): the last full one is
    reported, a file a few samples short of it does not give it."""
    from harken.agent.decision import Decision
    from harken.agent.model.bundle import open_bundle
    from harken.agent.model.factory import make_scorer
    from harken.agent.pipeline import Pipeline
    bundle = open_bundle(ae_bundle)
    scorer = make_scorer(bundle, bundle.sections[0], "onnx-int8")
    x = 0.1 * np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32)
    for samples, expected in [(x.size, 20), (x.size - 10, 19), (8000, 1)]:
        pipe = Pipeline(scorer, Decision(float("inf")), interval_s=0.5)
        results = [r for i in range(0, samples, 1234)
                   for r in pipe.push(x[i:min(i + 1234, samples)])] + pipe.finish()
        assert len(results) == expected, samples
        assert all(r.status == "ok" and r.windows >= 11 for r in results)


def test_a_file_a_few_samples_short_of_an_interval_says_how_short(ae_bundle, wav, tmp_path,
                                                                   capsys):
    """Before: a 16001-Hz file of 160000 samples warned '10.00 s is shorter than the 10-s
    interval'; the comparison is in samples at the model's rate and the message says so."""
    x, _ = read_wav(wav, RATE)
    write_wav(tmp_path / "odd.wav", x, 16001)
    assert harken(["score", str(ae_bundle), str(tmp_path / "odd.wav"), str(wav)]) == 0
    err = capsys.readouterr().err
    assert "odd.wav: 9.99944 s (159991 samples at 16000 Hz) is shorter than the 10-s " \
           "interval (160000 samples)" in err
    assert "10.00 s" not in err and "ten.wav" not in err


def test_score_says_what_is_left_after_the_last_whole_interval(ae_bundle, wav, tmp_path,
                                                               capsys):
    x, _ = read_wav(wav, RATE)
    write_wav(tmp_path / "fifteen.wav", np.concatenate([x, x[:5 * RATE]]), RATE)
    assert harken(["score", str(ae_bundle), str(tmp_path / "fifteen.wav"), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert len(row["intervals"]) == 1 and row["status"] == "ok"
    assert row["warning"] == ("the last 5 s (80000 samples) are less than an interval and "
                              "not scored (as in run)")


def test_dc_removal_keeps_blocks_not_samples_and_is_bit_exact_whatever_the_chunks():
    """64 machines on one device (issue 39): a remover's state is ~100 block sums (a few
    KB, whatever the window), and its output depends only on each sample's position in the
    stream, bit for bit, however the stream is cut; an offset still goes from the start."""
    rng = np.random.default_rng(4)
    x = (0.05 * rng.standard_normal(25 * RATE) + 0.04).astype(np.float32)
    x[[10, 5000, 200_000]] = [np.nan, 9.0, -np.inf]
    whole = DCRemover(RATE).push(x)
    for chunk in (1, 160, 1599, 1600, 16000, 33333):
        dc = DCRemover(RATE)
        part = x[:60_000] if chunk == 1 else x              # one sample a push: a shorter run
        got = np.concatenate([dc.push(part[i:i + chunk]) for i in range(0, len(part), chunk)])
        np.testing.assert_array_equal(got, whole[:len(part)])
    for seconds in (1.0, 10.0, 60.0):
        assert DCRemover(RATE, seconds).state_nbytes < 2048
    assert abs(float(np.nanmean(np.where(np.abs(whole) < 1, whole, np.nan)[:RATE]))) < 2e-3


def test_dc_removal_follows_a_new_offset_within_the_window():
    rng = np.random.default_rng(5)
    x = (0.05 * rng.standard_normal(30 * RATE)).astype(np.float32)
    x[10 * RATE:] += np.float32(0.1)                          # the offset jumps at 10 s
    y = remove_dc(x, RATE)
    assert abs(float(y[10 * RATE + 100:10 * RATE + RATE].mean())) > 0.08   # not yet followed
    assert abs(float(y[20 * RATE:].mean())) < 2e-3                          # 10 s later: gone


@pytest.mark.parametrize("chunk", [160, 7777, 40000])
def test_the_pipeline_scores_each_window_as_it_comes_and_scores_as_the_whole_interval(
        ae_bundle, chunk):
    """64 machines on one device (issue 39): an interval's features are not held until it
    is scored, only its windows' evidence rows (and the frames of windows still to come);
    each score is the one the interval's frames give scored whole, to the bit."""
    from harken.agent.decision import Decision
    from harken.agent.features import LogMelExtractor
    from harken.agent.model.bundle import open_bundle
    from harken.agent.model.factory import make_scorer
    from harken.agent.pipeline import Pipeline
    bundle = open_bundle(ae_bundle)
    spec = bundle.spec
    scorer = make_scorer(bundle, bundle.sections[0], "onnx-int8")
    x = (0.1 * np.random.default_rng(6).standard_normal(4 * RATE) + 0.02).astype(np.float32)
    pipe = Pipeline(scorer, Decision(float("inf")), interval_s=1.05)
    results, held = [], 0
    for i in range(0, x.size, chunk):
        results += pipe.push(x[i:i + chunk])
        held = max(held, pipe.held_frames)
    results += pipe.finish()
    assert held < spec.window_frames + 2 * 16 + chunk // spec.hop_length   # not an interval's
    frames = LogMelExtractor(spec)(remove_dc(x, RATE))
    bounds = [-(-k * pipe.interval_samples // spec.hop_length) for k in range(len(results) + 1)]
    assert len(results) == 3
    for r, a, b in zip(results, bounds, bounds[1:]):
        want, n = scorer.score_frames(frames[a:b])
        assert r.windows == n and abs(r.score - want) <= 1e-9 * max(1.0, abs(want))


def test_the_health_check_gathered_piece_by_piece_is_check_audio():
    """The pipeline keeps an interval's health figures, not its samples (issue 39: 64
    machines on one device): the same status and figures (to 1e-9) however the audio comes."""
    from harken.agent.decision.health import IntervalAudio, check_audio
    rng = np.random.default_rng(7)
    sound = (0.05 * rng.standard_normal(RATE) + 0.03).astype(np.float32)
    dropout = sound.copy()
    dropout[1600:3200] = 0.0
    clipped = sound.copy()
    clipped[::500] = 1.0
    cases = {"ok": sound, "dropout": dropout, "clipped": clipped,
             "silent": np.full(RATE, 0.05, np.float32), "short": sound[:1000],
             "odd": sound[:16800 - 7], "invalid": np.where(np.arange(RATE) == 9, np.nan, sound)}
    for name, x in cases.items():
        x = x.astype(np.float32)
        want = check_audio(x)
        for chunk in (7, 999, 1600, x.size):
            acc = IntervalAudio()
            for i in range(0, x.size, chunk):
                acc.add(x[i:i + chunk])
            got = acc.check()
            assert got.status == want.status == name.replace("short", "ok").replace("odd", "ok")
            for a, b in [(got.rms_dbfs, want.rms_dbfs), (got.dc_offset, want.dc_offset),
                         (got.clipped_fraction, want.clipped_fraction)]:
                assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9, (name, chunk, a, b)
