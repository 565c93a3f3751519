"""Audio sources without hardware: the streaming resampler, raw PCM, WAV pacing."""

import io
import time

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from harken.agent.sources import SourceError, StreamResampler, pcm_chunks, wav_chunks
from harken.agent.sources.wavio import read_wav, write_wav


@pytest.mark.parametrize("from_rate, chunk", [(48000, 480), (44100, 1000), (22050, 4410)])
def test_stream_resampler_equals_resampling_the_whole_signal(from_rate, chunk):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(from_rate * 2)
    r = StreamResampler(from_rate, 16000)
    got = np.concatenate([r.push(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    # as if the stream had been preceded by `context` samples of silence
    whole = scipy.signal.resample_poly(np.r_[np.zeros(r.context), x], r.up, r.down)
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
