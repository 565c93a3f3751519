"""Audio sources: a WAV file, raw PCM on stdin, or a live microphone through PortAudio.
Each yields float32 chunks at the model's sample rate, a column per channel that a machine
listens to (``base.py``: the interface, and how to add a source)."""

from __future__ import annotations

from collections.abc import Sequence

# importing a source's module registers it: a new source is one module and one name here
# (in this order the config lists them; the first, mic, is the default)
from harken.agent.sources import microphone, file, stdin  # noqa: F401
from harken.agent.sources.base import SOURCES, Source, SourceError, SourceSettings, Tap
from harken.agent.sources.file import FileSettings, FileSource, wav_chunks
from harken.agent.sources.microphone import (Microphone, MicrophoneSettings, MicrophoneSource,
                                             find_device)
from harken.agent.sources.resample import StreamResampler
from harken.agent.sources.stdin import StdinSettings, StdinSource, pcm_chunks

__all__ = ["SOURCES", "Source", "SourceError", "SourceSettings", "FileSource", "FileSettings",
           "StdinSource", "StdinSettings", "MicrophoneSource", "MicrophoneSettings",
           "Microphone", "StreamResampler", "find_device", "pcm_chunks", "wav_chunks",
           "Tap", "open_source", "shared_taps"]


def shared_taps(channels: Sequence[Tap]) -> tuple[list[Tap], list[int]]:
    """The taps one source opens for machines listening on ``channels`` (each channel
    once, in order) and, per machine, the column of the source's chunks that is its own:
    two machines on one channel share a column."""
    taps = list(dict.fromkeys(channels))
    return taps, [taps.index(c) for c in channels]


def open_source(config, rate: int, taps: Sequence[Tap] = (None,)) -> Source:
    """The source ``config.audio.source`` names, for the bundle's ``rate``, delivering
    ``taps`` (the channels its machines listen to)."""
    name = config.audio.source
    if name not in SOURCES:
        raise SourceError(f"audio.source {name!r}: no such source (known: {sorted(SOURCES)})")
    if list(taps) == [None]:
        return SOURCES[name].from_config(config, rate)     # a source that knows no taps
    return SOURCES[name].from_config(config, rate, taps)
