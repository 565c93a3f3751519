"""``audio.source = "file"``: a WAV file, paced like a microphone or as fast as possible,
once or in a loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from harken.common.errors import ConfigError
from harken.agent.sources.base import Report, Source, SourceSettings, Tap, pick_channels, register
from harken.agent.sources.wavio import check_rate, read_pcm, read_wav, resample, to_float32


def wav_chunks(path: str | Path, rate: int, chunk_s: float = 0.1, realtime: bool = False,
               taps: Sequence[Tap] | None = None) -> Iterator[np.ndarray]:
    """A WAV file in chunks: mono, or with ``taps`` (samples, taps) columns (a channel
    each, ``None`` the mix); ``realtime`` paces them like a live microphone. A file at
    the model's rate is memory-mapped and converted chunk by chunk (an hour of audio is
    not held in memory); another rate is read whole and resampled at once."""
    data, file_rate = read_pcm(path, mmap=True)
    if taps is not None:
        pick_channels(data[:1], taps, str(path))          # a missing channel: said now
    if file_rate != rate:
        if taps is None:
            data, _ = read_wav(path, rate)
        else:
            check_rate(path, file_rate, rate)
            data = resample(to_float32(np.asarray(data), path, mix=False), file_rate, rate)
    n = max(1, int(chunk_s * rate))
    start = time.monotonic()
    for i in range(0, len(data), n):
        # NaN/inf samples go on, as from stdin or a microphone: the health check marks
        # their interval invalid and scoring goes on (a daemon does not stop for one)
        x = to_float32(np.array(data[i:i + n]), path, mix=taps is None)
        if taps is not None:
            x = pick_channels(x, taps, str(path))
        if realtime:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield x


class FileSettings(SourceSettings):
    source: Literal["file"] = "file"
    file: str | None = None           # relative to the config file
    realtime: bool = True             # paced like a microphone
    loop: bool = False                # restarts at the end (demos)

    @model_validator(mode="after")
    def _needs_a_path(self):
        if not self.file:
            raise ValueError("audio.source = 'file' needs audio.file")
        return self

    def describe(self) -> str:
        return f"file {self.file}"


@register
class FileSource(Source):
    name = "file"
    Settings = FileSettings

    @classmethod
    def preflight(cls, config) -> None:
        a = config.audio
        path = config.path(a.file)
        if not path.is_file():
            raise ConfigError(f"{config.source_file}: key 'audio.file' = {a.file!r}: no such "
                              f"file ({path})")

    def __init__(self, path: Path, rate: int, block_s: float, realtime: bool, loop: bool,
                 taps: Sequence[Tap] = (None,)) -> None:
        self.path, self.rate, self.block_s = path, rate, block_s
        self.realtime, self.loop, self.taps = realtime, loop, list(taps)

    @classmethod
    def from_config(cls, config, rate: int, taps: Sequence[Tap] = (None,)) -> FileSource:
        a = config.audio
        return cls(config.path(a.file), rate, a.block_s, a.realtime, a.loop, taps)

    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        while True:
            for chunk in wav_chunks(self.path, self.rate, self.block_s, self.realtime,
                                    self.taps):
                yield chunk
                if done():
                    return
            yield None                    # end of the recording (of this pass)
            if not self.loop or done():
                return
