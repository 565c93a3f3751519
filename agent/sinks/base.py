"""What every result sink is: the seam a new output plugs into.

A sink receives each report interval and each status record (``started``, ``stats``,
``audio_lost``, ``stopped``, ...) and is closed at a clean stop. To add one: a module with a
``Sink`` subclass decorated with ``@register`` (``enabled`` says whether the config asks
for it; ``table`` and ``Settings`` name its config table and that table's keys, a
``SinkSettings`` model that agent/config.py adds to the config as ``config.<table>``), and
the module in the import line of ``agent/sinks/__init__.py``, or, for a plugin kept outside
the package, in the config's ``agent.plugins`` (docs/agent.md). Sinks may share a table
(the JSON-topic and Sparkplug sinks both read ``[mqtt]``) by naming the same model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from harken.agent.decision.records import IntervalResult, StatusEvent
from harken.common.registry import Registry
from harken.common.settings import Section

SINKS = Registry("sink")
register = SINKS.register


class SinkSettings(Section):
    """A sink's config table."""

    def for_machine(self, name: str) -> SinkSettings:
        """These settings for machine ``name`` of a config with ``[[machines]]`` (what must
        differ per machine, e.g. an MQTT client id); the same settings by default."""
        return self


# A running agent's command handler, handed to the sinks that take commands (MQTT, Sparkplug
# DCMD): the raw payload and where it came from ("mqtt", "sparkplug", "socket") in, the
# reply out ({"id", "command", "ok", "reason", ...}: agent/operator/commands.py)
CommandHandler = Callable[[bytes, str], dict]


class CommandWorker:
    """Operator commands carried out one at a time on a daemon thread of their own, so that
    neither paho's network thread nor scoring waits on one (docs/mqtt.md "Commands"): a
    bounded queue, ``run(job)`` for each job, ``failed(exc)`` when it raises (the thread
    lives on). The JSON-topic sink and the Sparkplug edge node each keep one."""

    def __init__(self, name: str, size: int, run: Callable[[Any], None],
                 failed: Callable[[Exception], None]) -> None:
        self.name, self.size, self.run, self.failed = name, size, run, failed
        self.jobs: queue.Queue = queue.Queue(size)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """The thread, started once (at the first handler)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self.thread.start()

    def put(self, job: Any) -> bool:
        """Queue ``job``; False when ``size`` are already waiting."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def stop(self, timeout: float | None = None) -> None:
        """End the thread after the jobs queued; wait up to ``timeout`` (None: do not wait).
        A full queue leaves it: a daemon thread ends with the process."""
        if self.thread is not None and self.put(None) and timeout is not None:
            self.thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.run(job)
            except Exception as exc:    # noqa: BLE001 - the worker must live on
                self.failed(exc)


class Sink(ABC):
    name: ClassVar[str]
    table: ClassVar[str | None] = None                       # its config table, if any
    Settings: ClassVar[type[SinkSettings] | None] = None     # that table's keys
    # what the sink needs on each result beyond the payload, which the pipeline then keeps:
    # the interval's bank statistics (the feedback store), its audio (evidence audio)
    wants_statistics: ClassVar[bool] = False
    wants_audio: ClassVar[bool] = False
    audio_rate: int | None = None     # that audio's rate (the bundle's), set by the runner
    # set by the runner on a sink that carries operator commands (None: commands off)
    commands: CommandHandler | None = None

    @classmethod
    @abstractmethod
    def enabled(cls, config) -> bool:
        """Whether the agent config asks for this sink."""

    @classmethod
    @abstractmethod
    def from_config(cls, config) -> Sink:
        """Built from the agent config; may open files or connections."""

    @abstractmethod
    def interval(self, result: IntervalResult) -> None:
        """One scored report interval (and its event, if any)."""

    def status(self, event: StatusEvent) -> None:
        """A status event (a type of agent/decision/records.py: ``Started``, ``Stats``,
        ...); ignored unless the sink carries it. Dispatch on its type; ``to_dict()`` is
        the record as written."""

    def health(self) -> dict:
        """Figures this sink adds to the stats record."""
        return {}

    @property
    def seq_start(self) -> int:
        """The first ``seq`` this sink has not seen (a durable sink remembers across
        restarts, so ``seq`` keeps increasing); 1 for a sink without memory."""
        return 1

    @property
    def failure(self) -> str | None:
        """Why this sink cannot deliver right now (it keeps trying), or None while it can.
        The runner says a change once to the machine's other sinks (``sink_failed``,
        ``sink_restored``) and never lets one sink's trouble stop the others."""
        return None

    def close(self, flush_s: float = 5.0) -> None:
        """Clean stop: flush what can be flushed within ``flush_s`` seconds (the runner
        closes every sink at once under one shared stop budget, docs/agent.md "Stopping");
        a sink whose ``close`` takes no ``flush_s`` is called without it."""
