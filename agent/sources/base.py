"""What every audio source is: the seam a new source plugs into.

A source is opened for one or more *taps*, the channels that machines listen to (1-based;
``None``: the input's mono view), and yields float32 chunks of shape (samples, taps) at the
model's sample rate until it is exhausted (a file, stdin) or the runner is done (a live
input), and ``None`` where a recording ends (the runner then scores the recording's last,
shorter interval). One input serves every machine that listens to it: one PortAudio stream,
one file read. To add one: a module in
this package with a ``Source`` subclass decorated with ``@register`` (its name is the
``audio.source`` value of the config), and the module in the import line of
``__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import numpy as np

from harken.common.errors import HarkenError
from harken.common.registry import Registry

SOURCES = Registry("audio source")
register = SOURCES.register
Report = Callable[[dict], None]          # a status record for the sinks (audio_lost, ...)
Tap = int | None                         # a 1-based channel, or None: the mono view


def pick_channels(x: np.ndarray, taps: Sequence[Tap], what: str) -> np.ndarray:
    """(samples, channels) audio -> (samples, taps): each tap's channel, or for ``None``
    the mean of all channels. ``what`` names the input in the error for a missing one."""
    x = x.reshape(len(x), -1)
    missing = [t for t in taps if t is not None and t > x.shape[1]]
    if missing:
        raise SourceError(f"{what}: has {x.shape[1]} channel(s); audio.channel {missing[0]} "
                          f"does not exist")
    cols = [x.mean(axis=1, dtype=np.float32) if t is None else x[:, t - 1] for t in taps]
    return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)


class SourceError(HarkenError, OSError):
    """An audio source that cannot be opened; the message names it."""


class Source(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config, rate: int, taps: Sequence[Tap] = (None,)) -> Source:
        """Built from the agent config (``config.audio``) for the bundle's ``rate``,
        delivering ``taps``."""

    @abstractmethod
    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        """(samples, taps) chunks until the source ends or ``done()`` (a single-tap source
        may yield 1-D chunks); an empty chunk means nothing arrived within the source's
        wait (the runner keeps its clock going); ``None`` marks the end of a recording."""

    def health(self) -> dict:
        """Figures for the stats record (overflows, xruns); none by default."""
        return {}

    def close(self) -> None:
        """Release the device or file."""
