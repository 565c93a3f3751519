"""``audio.source = "stdin"``: raw PCM piped in (``arecord -t raw ... | harken run``)."""

from __future__ import annotations

import io
import logging
import os
import select
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, Literal

import numpy as np
from pydantic import model_validator

from harken.common.settings import Count
from harken.agent.sources.base import (Report, Source, SourceError, SourceSettings, Tap,
                                       pick_channels, register)

log = logging.getLogger(__name__)


POLL_S = 0.1      # how long a read waits before it looks at the stop again


def _reader(stream: BinaryIO, done: Callable[[], bool] | None
            ) -> Callable[[int], bytes | None]:
    """``read(n)``: up to ``n`` bytes, b"" at the end, None when ``done()`` said stop.

    A plain ``stream.read`` on a pipe that stays open and idle blocks for good, and a
    SIGTERM's handler then only sets the stop flag while the read goes on (PEP 475 retries
    it): the agent never stopped and no ``stopped`` went out (docs/agent.md "Stopping").
    So a stream with a file descriptor is polled, ``POLL_S`` at a time, and read with
    ``os.read`` (never through the buffer, which select cannot see into)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None or done is None:
        return stream.read
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)

    def read(n: int) -> bytes | None:          # like stream.read(n): n bytes unless it ends
        got = bytearray()
        while len(got) < n:
            if not poller.poll(POLL_S * 1000):
                if done():
                    return None
                continue
            try:
                data = os.read(fd, n - len(got))
            except BlockingIOError:         # a non-blocking stdin woken for nothing
                continue
            if not data:
                break
            got += data
        return bytes(got)
    return read


def pcm_chunks(stream: BinaryIO | None, rate: int, chunk_s: float = 0.1,
               sample_format: str = "s16le", channels: int = 1,
               taps: Sequence[Tap] | None = None,
               done: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
    """Raw little-endian PCM (``arecord -t raw -f S16_LE``) from a byte stream; stdin
    by default. Channels are averaged to mono, or with ``taps`` picked as columns. With
    ``done``, an idle stream is left as soon as ``done()`` says stop."""
    dtypes = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", 2147483648.0), "f32le": ("<f4", 1.0)}
    if sample_format not in dtypes:
        raise SourceError(f"PCM format {sample_format!r} not supported; use one of {list(dtypes)}")
    dtype, full_scale = dtypes[sample_format]
    if stream is None:
        if sys.stdin is None:             # started with stdin closed (harken run ... <&-)
            raise SourceError("audio.source = 'stdin', but standard input is closed: pipe "
                              "audio in (arecord -t raw ... | harken run ...)")
        stream = sys.stdin.buffer
    frame_bytes = np.dtype(dtype).itemsize * channels
    want = max(1, int(chunk_s * rate)) * frame_bytes
    read = _reader(stream, done)
    pending = b""
    while True:
        data = read(want)
        if data is None:
            return          # stopped while the pipe was idle
        if not data:
            if pending:     # a writer killed mid-sample: what came before it still counts
                log.warning(f"WARNING: stdin ended inside a frame: its last {len(pending)} "
                            f"byte(s) (a frame is {frame_bytes}: {channels} x "
                            f"{sample_format}) are dropped")
            return
        data = pending + data
        usable = len(data) // frame_bytes * frame_bytes
        data, pending = data[:usable], data[usable:]
        if not usable:
            continue        # not one whole frame yet
        x = np.frombuffer(data, dtype=dtype).astype(np.float32) / full_scale
        if taps is not None:
            yield pick_channels(x.reshape(-1, channels), taps, "stdin")
        else:
            yield x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


class StdinSettings(SourceSettings):
    source: Literal["stdin"] = "stdin"
    pcm_format: Literal["s16le", "s32le", "f32le"] = "s16le"
    channels: Count(1, 64) = 1     # as audio.channel: 64 channels on one input

    @model_validator(mode="after")
    def _channel_exists(self):
        if self.channel is not None and self.channel > self.channels:
            raise ValueError(f"audio.channel = {self.channel}, but stdin carries "
                             f"audio.channels = {self.channels}")
        return self

    def describe(self) -> str:
        return "stdin"


@register
class StdinSource(Source):
    name = "stdin"
    Settings = StdinSettings
    one_per_process = True

    def __init__(self, rate: int, block_s: float, sample_format: str, channels: int,
                 taps: Sequence[Tap] = (None,)) -> None:
        self.rate, self.block_s = rate, block_s
        self.sample_format, self.channels, self.taps = sample_format, channels, list(taps)

    @classmethod
    def from_config(cls, config, rate: int, taps: Sequence[Tap] = (None,)) -> StdinSource:
        a = config.audio
        return cls(rate, a.block_s, a.pcm_format, a.channels, taps)

    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        for chunk in pcm_chunks(None, self.rate, self.block_s, self.sample_format,
                                self.channels, self.taps, done):
            yield chunk
            if done():
                return
        if not done():                    # a stop is no end of the recording
            yield None                    # end of the recording
