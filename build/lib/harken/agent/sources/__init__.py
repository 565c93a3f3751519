"""Audio sources: a WAV file, raw PCM on stdin, or a live microphone through PortAudio.
Each yields float32 mono chunks at the model's sample rate (``base.py``: the interface,
and how to add a source)."""

from __future__ import annotations

# importing a source's module registers it: a new source is one module and one name here
from harken.agent.sources import file, stdin, microphone  # noqa: F401
from harken.agent.sources.base import SOURCES, Source, SourceError
from harken.agent.sources.file import FileSource, wav_chunks
from harken.agent.sources.microphone import Microphone, MicrophoneSource, find_device
from harken.agent.sources.resample import StreamResampler
from harken.agent.sources.stdin import StdinSource, pcm_chunks

__all__ = ["SOURCES", "Source", "SourceError", "FileSource", "StdinSource", "MicrophoneSource",
           "Microphone", "StreamResampler", "find_device", "pcm_chunks", "wav_chunks",
           "open_source"]


def open_source(config, rate: int) -> Source:
    """The source ``config.audio.source`` names, for the bundle's ``rate``."""
    name = config.audio.source
    if name not in SOURCES:
        raise SourceError(f"audio.source {name!r}: no such source (known: {sorted(SOURCES)})")
    return SOURCES[name].from_config(config, rate)
