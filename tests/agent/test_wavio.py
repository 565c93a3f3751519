import wave

import numpy as np
import pytest
import scipy.io.wavfile

from harken.agent.sources import wav_chunks
from harken.agent.sources.wavio import WavError, read_wav, write_wav


def test_int16_round_trip(tmp_path):
    x = np.linspace(-0.5, 0.5, 1600).astype(np.float32)
    write_wav(tmp_path / "a.wav", x, 16000)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == 16000 and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1 / 32768)


def test_24bit_stereo_float_and_resampling(tmp_path):
    values = np.array([0, 2 ** 22, -(2 ** 23), 2 ** 23 - 1], dtype=np.int64)
    frames = b"".join(int(v).to_bytes(3, "little", signed=True) * 2 for v in values)  # stereo
    with wave.open(str(tmp_path / "b.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(3)
        f.setframerate(16000)
        f.writeframes(frames)
    y, _ = read_wav(tmp_path / "b.wav")
    np.testing.assert_allclose(y, [0.0, 0.5, -1.0, 1 - 2 ** -23], atol=1e-6)
    # 24-bit cannot be memory-mapped: the file source falls back to reading it
    np.testing.assert_array_equal(np.concatenate(list(wav_chunks(tmp_path / "b.wav", 16000))), y)

    t = np.arange(48000) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1)
    scipy.io.wavfile.write(tmp_path / "c.wav", 48000, (0.5 * stereo).astype(np.float32))
    y, sr = read_wav(tmp_path / "c.wav", sample_rate=16000)
    assert sr == 16000 and y.size == 16000
    # Still a 440 Hz tone after resampling.
    peak = np.argmax(np.abs(np.fft.rfft(y[1000:-1000])))
    assert abs(peak * 16000 / (y.size - 2000) - 440) < 2


def test_errors_name_the_file(tmp_path):
    with pytest.raises(WavError, match="missing.wav: no such file"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio")
    with pytest.raises(WavError, match="junk.wav: not a readable WAV"):
        read_wav(tmp_path / "junk.wav")
    (tmp_path / "nofmt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")   # no 'fmt '
    with pytest.raises(WavError, match="nofmt.wav: not a readable WAV file"):
        read_wav(tmp_path / "nofmt.wav")
    scipy.io.wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, dtype=np.int16))
    with pytest.raises(WavError, match="empty.wav: WAV file holds no samples"):
        read_wav(tmp_path / "empty.wav")


def test_a_header_that_lies_about_the_rate_is_refused_and_a_low_rate_is_warned(tmp_path,
                                                                              caplog):
    import scipy.io.wavfile

    from harken.agent.sources import wavio
    x = (0.1 * np.sin(np.arange(6000) / 5.0)).astype(np.float32)
    scipy.io.wavfile.write(tmp_path / "one-hz.wav", 1, x)
    with pytest.raises(wavio.WavError, match=r"one-hz\.wav: the header says 1 Hz, which is no "
                                             r"audio rate"):
        wavio.read_wav(tmp_path / "one-hz.wav", 16000)
    scipy.io.wavfile.write(tmp_path / "phone.wav", 8000, x)
    wavio._warned_rates.clear()
    with caplog.at_level("WARNING", logger="harken"):
        y, rate = wavio.read_wav(tmp_path / "phone.wav", 16000)
        wavio.read_wav(tmp_path / "phone.wav", 16000)
    assert rate == 16000 and len(y) == 12000
    assert caplog.text.count("recorded at 8000 Hz, the model expects 16000 Hz: nothing above "
                             "4000 Hz") == 1
