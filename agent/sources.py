"""Audio sources: a WAV file, raw PCM on stdin, or a live microphone through PortAudio.
Each yields float32 mono chunks at the model's sample rate."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harken.agent.errors import HarkenError
from harken.agent.ringbuffer import RingBuffer
from harken.agent.wavio import WavError, read_pcm, read_wav, to_float32


class SourceError(HarkenError, OSError):
    """An audio source that cannot be opened; the message names it."""


class StreamResampler:
    """Polyphase resampling of a stream in chunks (scipy.signal.resample_poly per block).

    resample_poly alone would treat every chunk as a whole signal and click at the
    borders, so each block is processed with ``context`` input samples of history on
    both sides and only its middle is kept: the output equals resampling the whole stream
    (as if preceded by silence, up to float rounding); it trails the input by ``context``
    input samples.
    """

    def __init__(self, from_rate: int, to_rate: int, context: int | None = None) -> None:
        ratio = Fraction(to_rate, from_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        # resample_poly's default filter spans 10 * max(up, down) taps at the high rate,
        # i.e. 10 * max(up, down) / up input samples on each side
        need = math.ceil(10 * max(self.up, self.down) / self.up) + 1
        self.context = int(math.ceil((context or need) / self.down) * self.down)
        self._buf = np.zeros(self.context, dtype=np.float64)     # leading silence

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        usable = (len(self._buf) - 2 * self.context) // self.down * self.down
        if usable <= 0:
            return np.zeros(0, np.float32)
        block = self._buf[:usable + 2 * self.context]
        import scipy.signal          # only when resampling: a second to import (features.py)
        y = scipy.signal.resample_poly(block, self.up, self.down)
        c = self.context * self.up // self.down
        out = y[c:c + usable * self.up // self.down]
        self._buf = self._buf[usable:]
        return out.astype(np.float32)


def wav_chunks(path: str | Path, rate: int, chunk_s: float = 0.1, realtime: bool = False
               ) -> Iterator[np.ndarray]:
    """A WAV file in chunks; ``realtime`` paces them like a live microphone. A file at
    the model's rate is memory-mapped and converted chunk by chunk (an hour of audio is
    not held in memory); another rate is read whole and resampled at once."""
    data, file_rate = read_pcm(path, mmap=True)
    if file_rate != rate:
        data, _ = read_wav(path, rate)
    n = max(1, int(chunk_s * rate))
    start = time.monotonic()
    for i in range(0, len(data), n):
        x = to_float32(np.array(data[i:i + n]), path)
        if not np.isfinite(x).all():
            raise WavError(f"{path}: NaN or infinite samples at {i / rate:.1f} s")
        if realtime:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield x


def pcm_chunks(stream: BinaryIO | None, rate: int, chunk_s: float = 0.1,
               sample_format: str = "s16le", channels: int = 1) -> Iterator[np.ndarray]:
    """Raw little-endian PCM (``arecord -t raw -f S16_LE``) from a byte stream; stdin
    by default. Channels are averaged to mono."""
    dtypes = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", 2147483648.0), "f32le": ("<f4", 1.0)}
    if sample_format not in dtypes:
        raise SourceError(f"PCM format {sample_format!r} not supported; use one of {list(dtypes)}")
    dtype, full_scale = dtypes[sample_format]
    stream = stream or sys.stdin.buffer
    frame_bytes = np.dtype(dtype).itemsize * channels
    want = max(1, int(chunk_s * rate)) * frame_bytes
    pending = b""
    while True:
        data = stream.read(want)
        if not data:
            return
        data = pending + data
        usable = len(data) // frame_bytes * frame_bytes
        data, pending = data[:usable], data[usable:]
        x = np.frombuffer(data, dtype=dtype).astype(np.float32) / full_scale
        yield x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


def find_device(device: str | int | None) -> int | None:
    """PortAudio input device index from an index or a (stable) name substring."""
    import sounddevice as sd
    if device is None or device == "":
        return None
    if isinstance(device, int) or str(device).isdigit():
        return int(device)
    inputs = [(i, d["name"]) for i, d in enumerate(sd.query_devices())
              if d["max_input_channels"] > 0]
    exact = [i for i, name in inputs if name == device]
    partial = [i for i, name in inputs if str(device).lower() in name.lower()]
    if exact or len(partial) == 1:
        return (exact or partial)[0]
    names = ", ".join(repr(n) for _, n in inputs) or "none"
    if not partial:
        raise SourceError(f"audio.device {device!r}: no such input device (inputs: {names})")
    raise SourceError(f"audio.device {device!r} matches several inputs "
                      f"({', '.join(repr(n) for i, n in inputs if i in partial)}); be exact")


class Microphone:
    """Live capture: the PortAudio callback only copies into a ring buffer; ``chunks``
    reads it from the processing thread. If the device refuses the model's rate, capture
    runs at the device's default rate and is resampled here."""

    def __init__(self, device: str | int | None, rate: int, block_s: float = 0.1,
                 ring_s: float = 30.0) -> None:
        self.device, self.rate, self.block_s = device, rate, block_s
        self.ring = RingBuffer(int(ring_s * rate * 4))
        self.stream = None
        self.capture_rate = rate
        self.resampler: StreamResampler | None = None
        self.status_flags = 0

    def open(self) -> None:
        import sounddevice as sd
        index = find_device(self.device)

        def callback(indata, frames, time_info, status):    # PortAudio thread: copy only
            if status:
                self.status_flags += 1
            self.ring.write(indata[:, 0])

        for rate in (self.rate, None):
            try:
                capture = rate or int(sd.query_devices(index, "input")["default_samplerate"])
                stream = sd.InputStream(device=index, channels=1, samplerate=capture,
                                        dtype="float32", blocksize=int(self.block_s * capture),
                                        callback=callback)
                stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                if rate is None:
                    raise SourceError(f"audio.device {self.device!r}: cannot open for capture "
                                      f"({exc})") from None
                continue
            self.stream, self.capture_rate = stream, capture
            self.resampler = None if capture == self.rate else StreamResampler(capture, self.rate)
            return

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:     # noqa: BLE001 - a vanished device may fail to close
                pass
            self.stream = None

    @property
    def active(self) -> bool:
        return self.stream is not None and bool(self.stream.active)

    def read(self, timeout: float = 0.5) -> np.ndarray:
        """What has arrived (at the model's rate), waiting up to ``timeout`` for data."""
        x = self.ring.read(timeout=timeout)
        return self.resampler.push(x) if self.resampler is not None and x.size else x
