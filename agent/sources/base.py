"""What every audio source is: the seam a new source plugs into.

A source is opened for one or more *taps*, the channels that machines listen to (1-based;
``None``: the input's mono view), and yields float32 chunks of shape (samples, taps) at the
model's sample rate until it is exhausted (a file, stdin) or the runner is done (a live
input), and ``None`` where a recording ends (the runner then scores the recording's last,
shorter interval). One input serves every machine that listens to it: one PortAudio stream,
one file read.

To add one: a module with a ``Source`` subclass decorated with ``@register``; its ``name``
is the ``audio.source`` value of the config, and its ``Settings`` (a ``SourceSettings``
subclass with ``source: Literal["name"]``) are the ``[audio]`` keys it takes, checked by
``harken check-config`` like every other table (agent/config.py assembles ``[audio]`` from
this registry). Then the module in the import line of ``__init__.py``, or, for a plugin kept
outside the package, in the config's ``agent.plugins`` (docs/agent.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Literal, TypeVar, get_args, get_origin

import numpy as np

from harken.common.errors import ConfigError, HarkenError
from harken.common.registry import Registry
from harken.common.settings import Count, Seconds, Section

SOURCES = Registry("audio source")
S = TypeVar("S", bound="type[Source]")
Report = Callable[[dict], None]          # a status record for the sinks (audio_lost, ...)
Tap = int | None                         # a 1-based channel, or None: the mono view


def pick_channels(x: np.ndarray, taps: Sequence[Tap], what: str) -> np.ndarray:
    """(samples, channels) audio -> (samples, taps): each tap's channel, or for ``None``
    the mean of all channels. ``what`` names the input in the error for a missing one."""
    x = x[:, None] if x.ndim == 1 else x.reshape(len(x), -1) if x.ndim > 2 else x
    missing = [t for t in taps if t is not None and t > x.shape[1]]
    if missing:
        raise SourceError(f"{what}: has {x.shape[1]} channel(s); audio.channel {missing[0]} "
                          f"does not exist")
    cols = [x.mean(axis=1, dtype=np.float32) if t is None else x[:, t - 1] for t in taps]
    return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)


class SourceError(HarkenError, OSError):
    """An audio source that cannot be opened; the message names it."""


class SourceSettings(Section):
    """The ``[audio]`` keys every source takes; a source's own model adds its keys and
    narrows ``source`` to ``Literal["its name"]`` (the tag that picks the model)."""
    source: str
    # 1-based input channel this machine listens to; None: the input's mono view (a
    # microphone's first channel, the mix of a file's or stdin's channels)
    channel: Count(1, 64) | None = None
    block_s: Seconds(0, 2, lo_open=True) = 0.1

    def input_key(self) -> tuple:
        """The input's identity without the channel: machines whose audio has the same key
        share one stream (one PortAudio stream, one file read), each taking its channel."""
        return tuple(sorted(self.model_dump(exclude={"channel"}).items(), key=str))

    def describe(self) -> str:
        """The input in words, for calibration and enrollment records."""
        return f"audio.source {self.source!r}"


class Source(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type[SourceSettings]]      # its [audio] keys
    # a process has one of this input (stdin): machines on it must share one input
    one_per_process: ClassVar[bool] = False

    @classmethod
    def preflight(cls, config) -> None:
        """What ``harken run`` and ``check-config`` refuse before anything starts (a
        ConfigError naming the file and key); nothing by default."""

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


def register(cls: S) -> S:
    """Class decorator: make ``cls`` the audio source ``cls.name``; its ``Settings`` must be
    tagged with that name (``source: Literal[name]``), so the config finds it."""
    field = cls.Settings.model_fields["source"]
    if get_origin(field.annotation) is not Literal or get_args(field.annotation) != (cls.name,):
        raise TypeError(f"{cls.__name__}.Settings: 'source' must be Literal[{cls.name!r}]")
    return SOURCES.register(cls)


def check_one_per_process(views: Sequence, where: object) -> None:
    """Refuse machines (``views``: their configs) that would open a ``one_per_process``
    source (stdin) twice: two readers of one standard input would each get every other
    piece of the stream. Machines on one such input with their own channels are fine."""
    inputs: dict[str, dict[tuple, list]] = {}
    for v in views:
        if getattr(SOURCES.get(v.audio.source), "one_per_process", False):
            inputs.setdefault(v.audio.source, {}).setdefault(v.audio.input_key(), []).append(v)
    for name, groups in inputs.items():
        if len(groups) > 1:
            a, b = (g[0] for g in list(groups.values())[:2])
            one, two = (x.audio.model_dump(exclude={"channel"}) for x in (a, b))
            differ = ", ".join(f"audio.{k} {one[k]!r} vs {two[k]!r}" for k in one
                               if one[k] != two.get(k))
            raise ConfigError(f"{where}: machines {a.agent.machine!r} and {b.agent.machine!r} "
                              f"both read {name} but with different settings ({differ}): a "
                              f"process has one {name}, which two readers would split; give "
                              f"them the same [audio] keys (each its own audio.channel)")
