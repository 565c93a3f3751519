"""WAV reading and writing: one reader for the corpus tools and the agent's file source.

scipy.io.wavfile covers PCM 8/16/24/32-bit and float WAV (including
WAVE_FORMAT_EXTENSIBLE); this module adds mono mixdown, scaling to [-1, 1), resampling
to the feature spec's rate and errors that name the file.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import warnings
from dataclasses import dataclass
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
    if not data.dtype.isnative and data.dtype.byteorder != "|":     # RIFX: big-endian
        data = data.astype(data.dtype.newbyteorder("="))
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
    """Polyphase resampling by the exact rational ratio, with a low-pass flat to near the
    lower Nyquist rate (agent/sources/resample.py; docs/agent.md "Other sample rates")."""
    if from_rate == to_rate:
        return x
    from harken.agent.sources.resample import ratio, resample_poly
    up, down = ratio(from_rate, to_rate)
    return resample_poly(x, up, down).astype(np.float32, copy=False)


MIN_AUDIO_RATE = 4000            # Hz: below this a header is damaged or lying
MAX_AUDIO_RATE = 768_000         # Hz: the fastest audio interfaces; above, the same
MAX_CHANNELS = 1024
_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


@dataclass(frozen=True)
class WavHeader:
    """What a WAV file's header says, every size checked against the file's own size."""
    channels: int
    rate: int
    bits: int
    block_align: int             # bytes per frame
    encoding: int                # 1 PCM, 3 float (the sub-format of an extensible header)
    data_bytes: int              # of audio actually in the file
    claimed_bytes: int           # what the data chunk's header says

    @property
    def frames(self) -> int:
        return self.data_bytes // self.block_align


def read_header(path: str | Path) -> WavHeader:
    """The header of the WAV file at ``path``, read without its audio. Refuses, naming the
    file, what no recorder writes (0 or 10^5 channels, a rate of 1 Hz or 2 GHz, a chunk
    larger than the file, an encoding other than PCM or float) before anything is
    allocated from it: scipy's reader believes the header."""
    path = Path(path)

    def bad(why: str) -> WavError:
        return WavError(f"{path}: not a readable WAV file ({why})")

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise WavError(f"{path}: not a regular file (a WAV file is read from disk; pipe "
                           f"raw PCM in with audio.source = 'stdin')")
        size = info.st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") \
                    or head[8:12] != b"WAVE":
                raise bad("no RIFF/WAVE header")
            end = ">" if head[:4] == b"RIFX" else "<"
            fmt, rf64_data, pos = None, None, 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, csize = struct.unpack(end + "4sI", f.read(8))
                body = pos + 8
                if cid == b"data":
                    if fmt is None:
                        raise bad("no 'fmt ' chunk before the audio")
                    claimed = rf64_data if rf64_data is not None and csize == 0xFFFFFFFF \
                        else csize
                    _no_second_header(f, size, body + claimed + (claimed & 1), end, bad)
                    return WavHeader(*fmt, data_bytes=min(claimed, size - body),
                                     claimed_bytes=claimed)
                if body + csize > size:
                    raise bad(f"its {cid.decode('latin-1')!r} chunk claims {csize} bytes, the "
                              f"file has {size - body} left")
                if cid == b"ds64" and csize >= 16:
                    rf64_data = struct.unpack(end + "QQ", f.read(16))[1]
                elif cid == b"fmt ":
                    if csize < 16:
                        raise bad(f"a 'fmt ' chunk of {csize} bytes")
                    second = _check_fmt(f.read(csize), end, bad, path)
                    if fmt is not None and second != fmt:    # scipy takes the last one
                        raise bad(f"two 'fmt ' chunks that disagree ({_says(fmt)}, then "
                                  f"{_says(second)})")
                    fmt = second
                pos = body + csize + (csize & 1)          # chunks are padded to even sizes
            raise bad("no 'fmt ' chunk" if fmt is None else "no 'data' chunk")
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except (OSError, struct.error) as exc:
        raise bad(str(exc)) from None


_MAX_TRAILING_CHUNKS = 4096     # after the audio: LIST, id3, cue ... (a bound on a scan)


def _says(fmt: tuple[int, int, int, int, int]) -> str:
    channels, rate, bits, _, _ = fmt
    return f"{channels} channel(s), {rate} Hz, {bits}-bit"


def _no_second_header(f, size: int, pos: int, end: str, bad) -> None:
    """Refuse a second 'data' or 'fmt ' chunk after the audio (docs/agent.md "Audio health",
    "Inputs checked before reading"):
    scipy's reader would take the last one, so the audio scored would not be the audio
    the first header describes. Chunks that run past the end (a file cut short) end the
    scan."""
    for _ in range(_MAX_TRAILING_CHUNKS):
        if pos + 8 > size:
            return
        f.seek(pos)
        cid, csize = struct.unpack(end + "4sI", f.read(8))
        if cid in (b"data", b"fmt "):
            raise bad(f"a second {cid.decode('latin-1')!r} chunk after the audio, at byte "
                      f"{pos}: which one holds is ambiguous")
        pos += 8 + csize + (csize & 1)


def _check_fmt(raw: bytes, end: str, bad, path: Path) -> tuple[int, int, int, int, int]:
    tag, channels, rate, _, align, bits = struct.unpack(end + "HHIIHH", raw[:16])
    extensible = tag == _EXTENSIBLE
    if tag == _EXTENSIBLE and len(raw) >= 26:
        tag = struct.unpack(end + "H", raw[24:26])[0]        # the sub-format GUID's first bytes
    if tag not in (_PCM, _FLOAT):
        raise bad(f"encoding 0x{tag:04x}, neither PCM nor float; convert it, e.g. "
                  f"'ffmpeg -i IN -c:a pcm_s16le OUT.wav'")
    if not 1 <= channels <= MAX_CHANNELS:
        raise bad(f"the header says {channels} channels")
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
        raise _no_audio_rate(path, rate)
    container = align // channels
    if align == 0 or align % channels or not 1 <= container <= 8 or not 1 <= bits <= 64 \
            or (tag == _FLOAT and bits not in (32, 64)):
        raise bad(f"{bits}-bit {'float' if tag == _FLOAT else 'PCM'} samples in frames of "
                  f"{align} bytes for {channels} channel(s)")
    # a frame is the channels' samples, each in whole bytes; an extensible header may name
    # the valid bits of a wider container (24 in 32). Another size would read as other
    # samples (mono 16-bit in 4-byte frames: half the duration, garbage values)
    width = (bits + 7) // 8
    if align != channels * width and not (extensible and container > width):
        raise bad(f"block_align = {align} bytes per frame, but {channels} channel(s) of "
                  f"{bits}-bit samples take {channels * width}")
    return channels, rate, bits, align, tag


def read_pcm(path: str | Path, mmap: bool = False) -> tuple[np.ndarray, int]:
    """The file's frames as stored (integer or float, [frames, channels]) and its rate;
    ``mmap`` maps the file instead of reading it, so a long recording is not held in
    memory (the file source reads an hour-long WAV this way). The header is checked first
    (``read_header``); a file shorter than its header says (a recorder stopped before it
    wrote the end) is read as far as it goes, with a warning."""
    path = Path(path)
    header = read_header(path)
    if header.frames == 0:
        raise WavError(f"{path}: WAV file holds no samples")
    if header.data_bytes < header.claimed_bytes:
        logging.getLogger(__name__).warning(
            f"WARNING: {path}: the header says {header.claimed_bytes} bytes of audio, the "
            f"file holds {header.data_bytes} (cut short?): reading what is there")
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
        except (ValueError, OSError, EOFError, IndexError, ZeroDivisionError) as exc:
            raise WavError(f"{path}: not a readable WAV file ({exc})") from None
        except UnboundLocalError:     # scipy's reader on a RIFF file with no 'fmt ' chunk
            raise WavError(f"{path}: not a readable WAV file (no 'fmt ' chunk)") from None
    if data.size == 0:
        raise WavError(f"{path}: WAV file holds no samples")
    return data, int(rate)


def read_wav(path: str | Path, sample_rate: int | None = None,
             channel: int | None = None, finite: bool = True) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 mono (the mix of its channels, or the 1-based
    ``channel``), resampled to ``sample_rate`` when given. NaN or infinite samples are
    refused unless ``finite`` is False (``harken score`` reports them as invalid, as
    ``run`` does)."""
    data, rate = read_pcm(path)
    if channel is None:
        x = to_float32(data, path)
    else:
        columns = to_float32(data, path, mix=False)
        if not 1 <= channel <= columns.shape[1]:
            raise WavError(f"{path}: has {columns.shape[1]} channel(s); audio.channel "
                           f"{channel} does not exist")
        x = np.ascontiguousarray(columns[:, channel - 1])
    if finite and not np.all(np.isfinite(x)):
        raise WavError(f"{path}: WAV file holds NaN or infinite samples")
    if sample_rate is not None and rate != sample_rate:
        check_rate(path, rate, sample_rate)
        x = resample(x, rate, sample_rate)
        rate = sample_rate
    return x, int(rate)


_warned_rates: set[tuple[int, int]] = set()


def check_rate(path: str | Path, rate: int, wanted: int) -> None:
    """Refuse a rate no audio is recorded at (a 12 KB file claiming 1 Hz would otherwise be
    resampled 16000-fold into half a GB); warn, once per rate, that a lower rate than the
    model's lacks the upper band, so its scores read high."""
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
        raise _no_audio_rate(path, rate)
    if rate < wanted and (rate, wanted) not in _warned_rates:
        _warned_rates.add((rate, wanted))
        logging.getLogger(__name__).warning(
            f"WARNING: {path}: recorded at {rate} Hz, the model expects {wanted} Hz: nothing "
            f"above {rate // 2} Hz is in it, so its scores read high (record at {wanted} Hz)")


def _no_audio_rate(path: str | Path, rate: int) -> WavError:
    return WavError(f"{path}: the header says {rate} Hz, which is no audio rate "
                    f"({MIN_AUDIO_RATE} to {MAX_AUDIO_RATE} Hz); the file is damaged or not "
                    f"what it claims")


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM (the DCASE format), clipping."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 32767.0 / 32768.0)
    pcm = np.round(x * 32768.0).astype(np.int16)
    scipy.io.wavfile.write(Path(path), int(sample_rate), pcm)
