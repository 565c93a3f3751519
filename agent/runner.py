"""``harken run``: config -> the machines (bundle, backend, pipeline, sinks each) and the
inputs they listen to; the loop that must keep going for months.

One device may watch several machines (``[[machines]]`` in the config). Machines that
listen to the same input (one multi-channel microphone, one file) share one source, opened
once and read in one thread, each machine taking its channel; machines running the same
bundle artifact on one input share its backend. A lost microphone is reported and
reopened (agent/sources/microphone.py), never fatal; one lost or silent input of several is
reported by machine name and the others go on.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harken.agent.model.backends import BackendPool
from harken.agent.model.bundle import Bundle, BundleError
from harken.agent.config import Config, ConfigError
from harken.common.errors import HarkenError
from harken.agent.decision.records import (AudioFailed, AudioHealth, AudioLost, AudioRestored,
                                           EnrolledBankInfo, IntervalResult, Started,
                                           StatusEvent, Stats, Stopped, source_report)
from harken.agent.build import preflight
from harken.agent.pipeline import Pipeline
from harken.agent.sinks import Sink, make_sinks
from harken.agent.sources import Source, SourceError, open_source, shared_taps
from harken.agent.stats import ProcessStats
from harken.agent.systemd import Notifier


@dataclass
class Machine:
    """One watched machine: its config (a single-machine view), bundle, pipeline and sinks,
    and the column of its input's chunks that is its channel."""
    config: Config
    bundle: Bundle
    pipeline: Pipeline
    sinks: list[Sink]
    column: int = 0
    intervals: int = 0
    inference_ms: list[float] = field(default_factory=list)
    health: Counter = field(default_factory=Counter)   # interval statuses since the stats
    audio: str = "ok"                                  # the last interval's status

    @property
    def name(self) -> str:
        return self.config.agent.machine

    def send(self, event: StatusEvent) -> None:
        for sink in self.sinks:
            sink.status(event)


@dataclass
class Listener:
    """One audio input and the machines that listen to it; read in a thread of its own
    when the device has several inputs."""
    source: Source
    machines: list[Machine]
    samples: int = 0
    lost: bool = False                     # its loss reported (reopening)
    ended: bool = False                    # a recording that ended, or an input that failed
    error: BaseException | None = None


def _machine_views(config: Config) -> list[list[Config]]:
    """The machines' configs grouped by the input they listen to, in config order."""
    groups: dict[tuple, list[Config]] = {}
    for view in config.machine_configs():
        groups.setdefault(view.audio.input_key(), []).append(view)
    return list(groups.values())


def _build_machines(views: list[Config], bundles: dict[Path, Bundle], multi: bool
                    ) -> list[Machine]:
    """One input's machines; bundles opened once (``bundles``), backends shared. With
    several machines an error names the machine."""
    pool, machines = BackendPool(), []
    for view in views:
        path = view.path(view.model.bundle).resolve()
        try:
            bundle, pipeline = preflight(view, bundles.get(path), pool)
        except HarkenError as exc:
            if not multi:
                raise
            raise type(exc)(f"machine {view.agent.machine}: {exc}") from None
        bundles[path] = bundle
        machines.append(Machine(view, bundle, pipeline, []))
    rates = {m.bundle.spec.sample_rate for m in machines}
    if len(rates) > 1:
        raise ConfigError(f"{views[0].source_file}: machines "
                          f"{[m.name for m in machines]} listen to one input but their "
                          f"bundles expect {sorted(rates)} Hz; give them inputs of their own")
    return machines


class Runner:
    """The agent's loop, handed its parts: the inputs (``Listener``: a source and its
    machines, each with its pipeline and sinks). ``from_config`` builds them from an agent
    config; tests and other set-ups can hand in others."""

    def __init__(self, config: Config, listeners: list[Listener],
                 max_intervals: int | None = None) -> None:
        self.config, self.listeners = config, listeners
        self.machines = [m for lst in listeners for m in lst.machines]
        self.max_intervals = max_intervals
        self._stop = threading.Event()
        self.process = ProcessStats()
        self.stats_s = config.output.stats_s
        self._next_stats = time.monotonic() + self.stats_s
        self._stats_lock = threading.Lock()
        self.notify = Notifier()
        self._ready = False

    @classmethod
    def from_config(cls, config: Config, max_intervals: int | None = None) -> Runner:
        """Bundles and pipelines of every machine, then the sinks (a durable sink says
        where ``seq`` goes on), then one source per input; whatever was started is closed
        again if a later part fails."""
        bundles: dict[Path, Bundle] = {}
        groups = [_build_machines(views, bundles, config.multi)
                  for views in _machine_views(config)]
        listeners: list[Listener] = []
        try:
            for machines in groups:
                for m in machines:
                    m.sinks = make_sinks(m.config)
                    m.pipeline.seq = max([s.seq_start for s in m.sinks], default=1)
                taps, columns = shared_taps([m.config.audio.channel for m in machines])
                for m, column in zip(machines, columns):
                    m.column = column
                source = open_source(machines[0].config, machines[0].bundle.spec.sample_rate,
                                     taps)
                listeners.append(Listener(source, machines))
        except BaseException:
            for lst in listeners:
                lst.source.close()
            for machines in groups:
                for m in machines:
                    for s in m.sinks:
                        s.close()
            raise
        return cls(config, listeners, max_intervals)

    @property
    def intervals(self) -> int:
        return sum(m.intervals for m in self.machines)

    def stop(self, *_args) -> None:
        self._stop.set()

    def _done(self) -> bool:
        return self._stop.is_set() or (
            self.max_intervals is not None
            and all(m.intervals >= self.max_intervals for m in self.machines))

    def _report(self, listener: Listener) -> Callable[[dict], None]:
        """A status record from ``listener``'s source (audio lost / restored): its
        machines' sinks, and systemd."""
        def report(record: dict) -> None:
            names = [m.name for m in listener.machines]
            events = [source_report(record, m.config.audio.channel) for m in listener.machines]
            if isinstance(events[0], AudioLost):
                listener.lost = True
                self.notify.status(f"audio lost ({', '.join(names)}): {events[0].error}")
            elif isinstance(events[0], AudioRestored):
                listener.lost = False
                self.notify.status(f"audio restored ({', '.join(names)})")
            for m, event in zip(listener.machines, events):
                m.send(event)
        return report

    def _push(self, listener: Listener, chunk: np.ndarray) -> None:
        """Audio arrived: systemd hears READY once and the watchdog while every input that
        is not reported lost advances."""
        if not self._ready:
            self._ready = True
            self.notify.ready("listening: " + ", ".join(
                f"{m.name} ({m.bundle.model_id})" for m in self.machines))
        listener.samples += len(chunk)
        self.notify.progress([None if lst.lost or lst.ended else lst.samples
                              for lst in self.listeners])
        for m in listener.machines:
            self._emit(m, m.pipeline.push(chunk[:, m.column]))

    def _listen(self, listener: Listener) -> None:
        """Every chunk of the input; at the end of a recording (a file, each pass of a
        looped file, stdin) each machine's last interval is flushed."""
        for chunk in listener.source.chunks(self._done, self._report(listener)):
            if chunk is None:
                for m in listener.machines:
                    self._emit(m, m.pipeline.finish())
            elif chunk.size:
                self._push(listener, chunk.reshape(len(chunk), -1))
            else:
                self._emit(listener.machines[0], [])
            if self._done():
                return

    def _emit(self, machine: Machine, results: list[IntervalResult]) -> None:
        for r in results:
            if self._stop.is_set() or (self.max_intervals is not None
                                       and machine.intervals >= self.max_intervals):
                break
            for sink in machine.sinks:
                sink.interval(r)
            machine.intervals += 1
            if r.windows:
                machine.inference_ms.append(r.inference_ms)
            machine.health[r.status] += 1
            if r.status != machine.audio:
                # a channel going silent (or clipping) is said once, by machine and channel
                machine.send(AudioHealth(r.status, machine.audio, machine.config.audio.channel))
                machine.audio = r.status
        if time.monotonic() >= self._next_stats:
            self._stats()

    def _stats(self) -> None:
        """The periodic health record of each machine: the process, its inference time,
        its input's losses, its interval statuses, its sinks."""
        if not self._stats_lock.acquire(blocking=False):
            return                               # another input's thread is on it
        try:
            if time.monotonic() < self._next_stats:
                return
            self._next_stats = time.monotonic() + self.stats_s
            process = self.process.sample()
            for lst in self.listeners:
                source = lst.source.health()
                for m in lst.machines:
                    times, m.inference_ms = m.inference_ms, []
                    health, m.health = m.health, Counter()
                    sinks: dict = {}
                    for sink in m.sinks:
                        sinks.update(sink.health())
                    m.send(Stats(ts=round(time.time(), 3), process=process,
                                 intervals=m.intervals,
                                 inference_ms_median=(round(float(np.median(times)), 3)
                                                      if times else None),
                                 audio="lost" if lst.lost else m.audio,
                                 interval_status=dict(health), source=source, sinks=sinks))
            self.notify.status(f"{self.intervals} intervals, {len(self.machines)} "
                               f"machine(s), cpu {process['cpu_percent']} %, "
                               f"rss {process['rss_mb']} MB")
        finally:
            self._stats_lock.release()

    def _started(self, m: Machine) -> Started:
        scorer = m.pipeline.scorer
        bank = scorer.enrollment
        return Started(model=m.bundle.model_id, backend=scorer.backend_name,
                       threshold=m.pipeline.decision.threshold, source=m.config.audio.source,
                       channel=m.config.audio.channel,
                       # say which on-site bank scores (harken enroll)
                       bank=None if bank is None else EnrolledBankInfo(
                           audio_s=bank.audio_s, intervals=bank.intervals,
                           created=bank.sessions[-1].created))

    def _listen_guarded(self, listener: Listener) -> None:
        """An input's thread: a user-facing failure of one input (its file vanished) is
        reported to its machines and ends that input only."""
        try:
            self._listen(listener)
        except HarkenError as exc:
            listener.error = exc
            for m in listener.machines:
                m.send(AudioFailed(str(exc), m.config.audio.channel))
        except BaseException as exc:       # a bug: every input stops, raised in run()
            listener.error = exc
            self._stop.set()
        finally:                           # the others' progress is what the watchdog reads
            listener.ended = True

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, self.stop)
            except ValueError:            # not the main thread (tests)
                pass
        # one-off costs of the first inference (the TFLite delegate, ONNX Runtime's first
        # run) are paid here, not by the first interval's latency
        for m in self.machines:
            m.pipeline.scorer.warm_up()
            m.send(self._started(m))
        try:
            if len(self.listeners) == 1:
                self._listen(self.listeners[0])
            else:
                self._listen_all()
        finally:
            for lst in self.listeners:
                lst.source.close()
            self.notify.stopping()
            for m in self.machines:
                m.send(Stopped(m.intervals))
                for sink in m.sinks:
                    sink.close()
        return 0

    def _listen_all(self) -> None:
        threads = [threading.Thread(target=self._listen_guarded, args=(lst,), daemon=True,
                                    name=f"input-{i}") for i, lst in enumerate(self.listeners)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)               # the main thread stays free for SIGTERM
        errors = [lst.error for lst in self.listeners if lst.error is not None]
        bugs = [e for e in errors if not isinstance(e, HarkenError)]
        if bugs:
            raise bugs[0]
        if errors and len(errors) == len(self.listeners):
            raise errors[0]


def run_config(config: Config, max_intervals: int | None = None) -> int:
    try:
        return Runner.from_config(config, max_intervals).run()
    except (BundleError, SourceError) as exc:
        raise ConfigError(str(exc)) from None
