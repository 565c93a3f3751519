"""``audio.source = "file"``: a WAV file, paced like a microphone or as fast as possible,
once or in a loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from harken.agent.sources.base import Report, Source, register
from harken.agent.wavio import read_pcm, read_wav, to_float32


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
        # NaN/inf samples go on, as from stdin or a microphone: the health check marks
        # their interval invalid and scoring goes on (a daemon does not stop for one)
        x = to_float32(np.array(data[i:i + n]), path)
        if realtime:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield x


@register
class FileSource(Source):
    name = "file"

    def __init__(self, path: Path, rate: int, block_s: float, realtime: bool, loop: bool) -> None:
        self.path, self.rate, self.block_s = path, rate, block_s
        self.realtime, self.loop = realtime, loop

    @classmethod
    def from_config(cls, config, rate: int) -> FileSource:
        a = config.audio
        return cls(config.path(a.file), rate, a.block_s, a.realtime, a.loop)

    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        while True:
            for chunk in wav_chunks(self.path, self.rate, self.block_s, self.realtime):
                yield chunk
                if done():
                    return
            yield None                    # end of the recording (of this pass)
            if not self.loop or done():
                return
