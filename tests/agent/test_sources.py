"""Audio sources without hardware: the streaming resampler, raw PCM, WAV pacing."""

import io
import time

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from harken.agent.sources import SourceError, StreamResampler, pcm_chunks, wav_chunks
from harken.agent.sources.resample import lowpass
from harken.agent.sources.wavio import read_wav, write_wav


@pytest.mark.parametrize("from_rate, chunk", [(48000, 480), (44100, 1000), (22050, 4410)])
def test_stream_resampler_equals_resampling_the_whole_signal(from_rate, chunk):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(from_rate * 2)
    r = StreamResampler(from_rate, 16000)
    got = np.concatenate([r.push(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    # as if the stream had been preceded by `context` samples of silence
    whole = scipy.signal.resample_poly(np.r_[np.zeros(r.context), x], r.up, r.down,
                                       window=lowpass(r.up, r.down))
    whole = whole[r.context * r.up // r.down:]
    n = min(len(got), len(whole)) - 64
    assert n > 0.9 * 2 * 16000
    np.testing.assert_allclose(got[:n], whole[:n], atol=1e-5)


def test_pcm_from_a_byte_stream_in_odd_pieces():
    x = (np.sin(np.arange(4000) / 10) * 20000).astype("<i2")
    stereo = np.repeat(x, 2)                      # L = R
    class Trickle(io.BytesIO):                     # a pipe hands out odd byte counts
        def read(self, n=-1):
            return super().read(min(n, 333) if n and n > 0 else n)
    got = np.concatenate(list(pcm_chunks(Trickle(stereo.tobytes()), 16000, 0.05, "s16le", 2)))
    np.testing.assert_allclose(got, x / 32768.0, atol=1e-7)
    with pytest.raises(SourceError, match="PCM format 'u8' not supported"):
        next(pcm_chunks(io.BytesIO(b""), 16000, sample_format="u8"))


def test_wav_source_paces_in_real_time(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)   # 0.5 s
    t = time.monotonic()
    n = sum(len(c) for c in wav_chunks(tmp_path / "a.wav", 16000, 0.1, realtime=True))
    assert n == 8000 and time.monotonic() - t >= 0.35
    t = time.monotonic()
    list(wav_chunks(tmp_path / "a.wav", 16000, 0.1, realtime=False))
    assert time.monotonic() - t < 0.3


@pytest.mark.parametrize("dtype, rate", [("int16", 16000), ("float32", 16000), ("int16", 48000)])
def test_wav_source_chunks_equal_the_whole_file_read(tmp_path, dtype, rate):
    """Memory-mapped chunks (model rate) or the whole-file read (other rates) give the
    same samples as read_wav, stereo mixed down."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, size=(rate, 2))
    data = (x * 32768).astype(np.int16) if dtype == "int16" else x.astype(np.float32)
    scipy.io.wavfile.write(tmp_path / "s.wav", rate, data)
    got = np.concatenate(list(wav_chunks(tmp_path / "s.wav", 16000, 0.1)))
    np.testing.assert_array_equal(got, read_wav(tmp_path / "s.wav", 16000)[0])


def test_wav_source_passes_a_nan_sample_on_like_the_other_sources(tmp_path):
    """The health check marks its interval invalid (tests/agent/test_run.py), as for stdin."""
    x = np.zeros(32000, np.float32)
    x[24000] = np.nan
    scipy.io.wavfile.write(tmp_path / "nan.wav", 16000, x)
    got = np.concatenate(list(wav_chunks(tmp_path / "nan.wav", 16000, 0.5)))
    assert got.shape == (32000,) and np.isnan(got[24000]) and np.isfinite(np.delete(got, 24000)).all()


# -- each source's settings, and calibration reading through the sources -------------------

def test_a_source_is_registered_only_under_the_tag_of_its_settings():
    from typing import Literal

    from harken.agent.sources import SOURCES, FileSource, SourceSettings
    from harken.agent.sources.base import register

    class Settings(SourceSettings):
        source: Literal["radio"] = "radio"

    class Mistagged(FileSource):
        name = "wireless"
    Mistagged.Settings = Settings
    with pytest.raises(TypeError, match=r"Mistagged.Settings: 'source' must be "
                                        r"Literal\['wireless'\]"):
        register(Mistagged)
    assert "wireless" not in SOURCES and list(SOURCES)[:3] == ["mic", "file", "stdin"]


def test_the_file_source_refuses_a_missing_file_before_a_run(tmp_path):
    from harken.agent.config import ConfigError, parse_config
    from harken.agent.sources import SOURCES
    cfg = parse_config({"model": {"bundle": "b"}, "audio": {"source": "file", "file": "x.wav"}},
                       str(tmp_path / "agent.toml"))
    with pytest.raises(ConfigError, match=r"agent.toml: key 'audio.file' = 'x.wav': no such file"):
        SOURCES["file"].preflight(cfg)
    write_wav(tmp_path / "x.wav", np.zeros(160, np.float32), 16000)
    SOURCES["file"].preflight(cfg)
    SOURCES["stdin"].preflight(cfg)             # a source with nothing to check


class Averages:
    """Stands in for a pipeline: one result per second of audio, scored with its mean."""

    interval_s = 1.0

    def __init__(self):
        from types import SimpleNamespace
        self.spec, self.pending, self.finished = SimpleNamespace(sample_rate=16000), [], 0
        self.result = lambda x: SimpleNamespace(score=float(np.mean(x)))

    def push(self, x):
        self.pending.append(np.asarray(x))
        x = np.concatenate(self.pending)
        out = [self.result(x[i:i + 16000]) for i in range(0, len(x) - 15999, 16000)]
        self.pending = [x[len(out) * 16000:]]
        return out

    def finish(self):
        self.finished += 1
        rest, self.pending = np.concatenate(self.pending), []
        return [self.result(rest)] if rest.size else []


def test_calibration_reads_the_configured_source_with_each_machine_on_its_channel(
        monkeypatch):
    """``score_source`` opens the source as ``harken run`` does (here stdin, two channels):
    one read, each pipeline its column, the recording's last interval flushed at its end."""
    from types import SimpleNamespace

    from harken.agent.config import parse_config
    from harken.agent.site.calibrate import score_source
    pcm = np.tile(np.array([[8192, -16384]], "<i2"), (16000 * 3 + 800, 1))   # 0.25, -0.5
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(pcm.tobytes())))
    cfg = parse_config({"model": {"bundle": "b"},
                        "audio": {"source": "stdin", "channels": 2}}, "a.toml")
    pipelines = [Averages(), Averages(), Averages()]
    got = score_source(pipelines, cfg, None, False, taps=[2, 1, 2])
    assert [scores for scores, _ in got] == [[-0.5] * 4, [0.25] * 4, [-0.5] * 4]
    assert [p.finished for p in pipelines] == [1, 1, 1]
    # --minutes: stops once every pipeline has its intervals, the rest left unread
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(pcm.tobytes() * 10)))
    [(scores, skipped)] = score_source([Averages()], cfg, 2 / 60, False, taps=[1])
    assert scores == [0.25, 0.25] and skipped == 0


def test_pcm_chunks_leave_an_idle_open_pipe_when_told_to_stop():
    """Before: the read of a pipe that stays open blocked for good, whatever the stop flag
    said (finding 5: SIGTERM never stopped a stdin run)."""
    import os
    import threading

    from tests.helpers import wait_for
    r, w = os.pipe()
    stop = threading.Event()
    try:
        os.write(w, np.zeros(1600, "<i2").tobytes())          # 0.1 s, then nothing more
        with open(r, "rb", closefd=False) as stream:
            got = []
            reader = threading.Thread(target=lambda: got.extend(
                pcm_chunks(stream, 16000, 0.1, done=stop.is_set)), daemon=True)
            reader.start()
            wait_for("the first chunk", lambda: len(got) == 1, 10, every=0.02)
            assert reader.is_alive() and len(got[0]) == 1600       # waiting on the pipe
            stop.set()
            reader.join(2)
            assert not reader.is_alive(), "the read of an idle pipe held the stop"
    finally:
        os.close(r)
        os.close(w)
