"""What every audio source is: the seam a new source plugs into.

A source yields float32 mono chunks at the model's sample rate until it is exhausted (a
file, stdin) or the runner is done (a live input), and ``None`` where a recording ends (the
runner then scores the recording's last, shorter interval). To add one: a module in
this package with a ``Source`` subclass decorated with ``@register`` (its name is the
``audio.source`` value of the config), and the module in the import line of
``__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np

from harken.agent.errors import HarkenError
from harken.agent.registry import Registry

SOURCES = Registry("audio source")
register = SOURCES.register
Report = Callable[[dict], None]          # a status record for the sinks (audio_lost, ...)


class SourceError(HarkenError, OSError):
    """An audio source that cannot be opened; the message names it."""


class Source(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config, rate: int) -> Source:
        """Built from the agent config (``config.audio``) for the bundle's ``rate``."""

    @abstractmethod
    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray | None]:
        """Audio chunks until the source ends or ``done()``; an empty chunk means nothing
        arrived within the source's wait (the runner keeps its clock going); ``None``
        marks the end of a recording."""

    def health(self) -> dict:
        """Figures for the stats record (overflows, xruns); none by default."""
        return {}

    def close(self) -> None:
        """Release the device or file."""
