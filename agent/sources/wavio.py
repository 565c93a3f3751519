"""WAV reading and writing: one reader for the corpus tools and the agent's file source.

scipy.io.wavfile covers PCM 8/16/24/32-bit and float WAV (including
WAVE_FORMAT_EXTENSIBLE); this module adds mono mixdown, scaling to [-1, 1), resampling
to the feature spec's rate and errors that name the file.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from harken.common.errors import HarkenError


class WavError(HarkenError, ValueError):
    """A WAV file that cannot be read, with the file's path in the message."""


_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


def to_float32(data: np.ndarray, path: str | Path = "<array>", mix: bool = True) -> np.ndarray:
    """Integer or float PCM (frames[, channels]) -> float32 in [-1, 1): mono (the mean of
    the channels), or with ``mix=False`` (frames, channels) as stored."""
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype in _INT_SCALE:  # 24-bit comes back left-justified in int32
        x = data.astype(np.float32) / np.float32(_INT_SCALE[data.dtype])
    elif data.dtype.kind == "f":
        x = data.astype(np.float32, copy=False)
    else:
        raise WavError(f"{path}: unsupported sample format {data.dtype}")
    if not mix:
        return x.reshape(len(x), -1)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    return x


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) by the exact rational ratio."""
    if from_rate == to_rate:
        return x
    import scipy.signal          # only when resampling: a second to import (features.py)
    g = math.gcd(int(from_rate), int(to_rate))
    y = scipy.signal.resample_poly(x, to_rate // g, from_rate // g)
    return y.astype(np.float32, copy=False)


def read_pcm(path: str | Path, mmap: bool = False) -> tuple[np.ndarray, int]:
    """The file's frames as stored (integer or float, [frames, channels]) and its rate;
    ``mmap`` maps the file instead of reading it, so a long recording is not held in
    memory (the file source reads an hour-long WAV this way)."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
        try:
            try:
                rate, data = scipy.io.wavfile.read(path, mmap=mmap)
            except ValueError:
                if not mmap:
                    raise
                rate, data = scipy.io.wavfile.read(path)   # 24-bit cannot be mapped
        except FileNotFoundError:
            raise WavError(f"{path}: no such file") from None
        except (ValueError, OSError, EOFError, IndexError) as exc:
            raise WavError(f"{path}: not a readable WAV file ({exc})") from None
        except UnboundLocalError:     # scipy's reader on a RIFF file with no 'fmt ' chunk
            raise WavError(f"{path}: not a readable WAV file (no 'fmt ' chunk)") from None
    if data.size == 0:
        raise WavError(f"{path}: WAV file holds no samples")
    return data, int(rate)


def read_wav(path: str | Path, sample_rate: int | None = None,
             channel: int | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 mono (the mix of its channels, or the 1-based
    ``channel``), resampled to ``sample_rate`` when given."""
    data, rate = read_pcm(path)
    if channel is None:
        x = to_float32(data, path)
    else:
        columns = to_float32(data, path, mix=False)
        if not 1 <= channel <= columns.shape[1]:
            raise WavError(f"{path}: has {columns.shape[1]} channel(s); audio.channel "
                           f"{channel} does not exist")
        x = np.ascontiguousarray(columns[:, channel - 1])
    if not np.all(np.isfinite(x)):
        raise WavError(f"{path}: WAV file holds NaN or infinite samples")
    if sample_rate is not None and rate != sample_rate:
        check_rate(path, rate, sample_rate)
        x = resample(x, rate, sample_rate)
        rate = sample_rate
    return x, int(rate)


MIN_AUDIO_RATE = 4000            # Hz: below this a header is damaged or lying
_warned_rates: set[tuple[int, int]] = set()


def check_rate(path: str | Path, rate: int, wanted: int) -> None:
    """Refuse a rate no audio is recorded at (a 12 KB file claiming 1 Hz would otherwise be
    resampled 16000-fold into half a GB); warn, once per rate, that a lower rate than the
    model's lacks the upper band, so its scores read high."""
    if rate < MIN_AUDIO_RATE:
        raise WavError(f"{path}: the header says {rate} Hz, which is no audio rate (at least "
                       f"{MIN_AUDIO_RATE} Hz); the file is damaged or not what it claims")
    if rate < wanted and (rate, wanted) not in _warned_rates:
        _warned_rates.add((rate, wanted))
        logging.getLogger(__name__).warning(
            f"WARNING: {path}: recorded at {rate} Hz, the model expects {wanted} Hz: nothing "
            f"above {rate // 2} Hz is in it, so its scores read high (record at {wanted} Hz)")


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM (the DCASE format), clipping."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 32767.0 / 32768.0)
    pcm = np.round(x * 32768.0).astype(np.int16)
    scipy.io.wavfile.write(Path(path), int(sample_rate), pcm)
