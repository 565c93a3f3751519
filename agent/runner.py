"""``harken run``: config -> the machines (bundle, backend, pipeline, sinks each) and the
inputs they listen to; the loop that must keep going for months.

One device may watch several machines (``[[machines]]`` in the config). Machines that
listen to the same input (one multi-channel microphone, one file) share one source, opened
once and read in one thread, each machine taking its channel; machines running the same
bundle artifact on one input share its backend. A lost microphone is reported and
reopened (agent/sources/microphone.py), never fatal; one lost or silent input of several is
reported by machine name and the others go on.

One process per state folder (agent/statelock.py); ``seq`` reserved durably per machine
(agent/seqstore.py); a sink that fails is reported once and never stops scoring or the
other sinks; a stop closes every sink at once under one shared budget that fits systemd's
``TimeoutStopSec`` (docs/agent.md "Stopping"). While it runs, the operator's commands
(maintenance, feedback) reach it through its control socket and, where enabled, MQTT
(agent/operator/; docs/agent.md "The control socket").
"""

from __future__ import annotations

import inspect
import logging
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
from harken.common.errors import EnvironmentFailure, HarkenError, is_transient
from harken.agent.clock import ClockWatch, from_environment
from harken.agent.decision.records import (AudioFailed, AudioHealth, AudioLost, AudioRestored,
                                           ClockSet, EnrolledBankInfo, IntervalResult,
                                           MaintenanceChanged, SinkFailed, SinkRestored,
                                           Started, StatusEvent, Stats, Stopped,
                                           source_report)
from harken.agent.operator.commands import Commands, Target
from harken.agent.operator.control import ControlServer
from harken.agent.operator.maintenance import Maintenance
from harken.agent.seqstore import SeqReservation
from harken.agent.statelock import StateLock, lock_state
from harken.agent.build import preflight
from harken.agent.pipeline import Pipeline
from harken.agent.sinks import Sink, make_sinks
from harken.agent.sources import Source, SourceError, open_source, shared_taps
from harken.agent.stats import ProcessStats
from harken.agent.systemd import Notifier

_log = logging.getLogger(__name__)

# systemd's TimeoutStopSec=20 (systemd/harken.service) kills what is still running after
# 20 s: every sink gets its `stopped` (or NDEATH) out within one shared budget of 15 s,
# closed all at once, and the process is gone well before the kill (docs/agent.md)
STOP_BUDGET_S = 15.0
CLOSE_RESERVE_S = 5.0     # of the budget, kept for a sink's goodbye and disconnect after its flush
EXIT_HUP = 129            # SIGHUP: a clean stop that systemd's Restart=on-failure restarts


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
    failing: dict = field(default_factory=dict)        # sink name -> why it fails now
    sink_errors: Counter = field(default_factory=Counter)  # exceptions a sink raised
    seqs: SeqReservation | None = None                 # its durable seq (agent/seqstore.py)
    maintenance: Maintenance | None = None             # its maintenance state (agent/operator/)
    pending: list = field(default_factory=list)        # status events noticed mid-interval

    @property
    def name(self) -> str:
        return self.config.agent.machine

    def send(self, event: StatusEvent) -> None:
        for sink in self.sinks:
            self.deliver(sink, "status", event)

    def deliver(self, sink: Sink, method: str, arg) -> None:
        """One call into one sink, which may fail (a full disk, a bug in a plugin sink)
        without stopping scoring or the other sinks: the failure is said once, as a
        ``sink_failed`` status to every sink of the machine, and its end likewise."""
        try:
            getattr(sink, method)(arg)
            why = sink.failure
        except Exception as exc:           # noqa: BLE001 - one sink never stops the others
            self.sink_errors[sink.name] += 1
            why = f"{type(exc).__name__}: {exc}"
            if sink.name not in self.failing:
                _log.exception(f"machine {self.name}: sink {sink.name} raised")
        if why is None and method != "interval":
            return                  # a sink whose intervals fail may still take a status
        self._note(sink, why)

    def _note(self, sink: Sink, why: str | None) -> None:
        was = self.failing.get(sink.name)
        if (was is None) == (why is None):
            return
        if why is None:
            del self.failing[sink.name]
            event: StatusEvent = SinkRestored(sink.name)
            _log.info(f"machine {self.name}: sink {sink.name} delivers again")
        else:
            self.failing[sink.name] = why
            event = SinkFailed(sink.name, why)
            _log.warning(f"machine {self.name}: sink {sink.name} fails ({why}); the others "
                         f"go on, it is retried")
        for other in self.sinks:            # said once; a failure saying it is not tracked
            try:
                other.status(event)
            except Exception:               # noqa: BLE001
                pass


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
                 max_intervals: int | None = None, lock: StateLock | None = None,
                 clock: ClockWatch | None = None, stop_budget_s: float = STOP_BUDGET_S,
                 commands: Commands | None = None) -> None:
        self.config, self.listeners = config, listeners
        self.machines = [m for lst in listeners for m in lst.machines]
        self.max_intervals = max_intervals
        self._stop = threading.Event()
        self._hurry = threading.Event()       # a second SIGTERM: do not wait for the sinks
        self.exit_code = 0
        self.process = ProcessStats()
        self.stats_s = config.output.stats_s
        self._next_stats = time.monotonic() + self.stats_s
        self._stats_lock = threading.Lock()
        self.notify = Notifier()
        self._ready = False
        self.lock = lock
        self.stop_budget_s = stop_budget_s
        self.clock = clock or ClockWatch(from_environment())
        for m in self.machines:
            if m.pipeline.clock_unsynced is None:
                m.pipeline.clock_unsynced = self.clock.unsynced
            if m.maintenance is not None and m.pipeline.maintenance is None:
                m.pipeline.maintenance = self._in_maintenance(m)
        # the operator's commands (docs/agent.md "The control socket"): served from the
        # start of ``run`` to the stop, with the state folder this process holds
        self.commands = commands
        self.control: ControlServer | None = None

    @classmethod
    def from_config(cls, config: Config, max_intervals: int | None = None) -> Runner:
        """Bundles and pipelines of every machine, then the sinks (a durable sink says
        where ``seq`` goes on), then one source per input; whatever was started is closed
        again if a later part fails."""
        bundles: dict[Path, Bundle] = {}
        groups = [_build_machines(views, bundles, config.multi)
                  for views in _machine_views(config)]
        clock = ClockWatch(from_environment())
        # the state is this process's before any sink opens the outbox in it
        state = config.writable_folder("agent.state_dir", config.agent.state_dir)
        lock = lock_state(state, "harken run")
        listeners: list[Listener] = []
        commands = Commands(state)
        try:
            for machines in groups:
                for m in machines:
                    seqs = SeqReservation(state / f"seq-{m.name}.json")
                    m.maintenance = Maintenance(state, m.name)
                    commands.targets[m.name] = Target(m.config, m.maintenance, m.bundle,
                                                      m.pipeline, m.send)
                    m.sinks = make_sinks(m.config)
                    if getattr(m.config.mqtt, "commands", False):
                        # MQTT and Sparkplug take commands (docs/mqtt.md "Commands"); off:
                        # the handler stays None and nothing is subscribed
                        for sink in m.sinks:
                            sink.commands = commands.for_machine(m.name)
                    # what the sinks need kept beyond the payload (agent/sinks/base.py)
                    m.pipeline.keep_statistics = any(s.wants_statistics for s in m.sinks)
                    m.pipeline.keep_audio = any(s.wants_audio for s in m.sinks)
                    for s in m.sinks:         # the rate of that audio: the bundle's
                        if s.wants_audio:
                            s.audio_rate = m.bundle.spec.sample_rate
                    m.pipeline.seq = seqs.start(max([s.seq_start for s in m.sinks], default=1))
                    m.pipeline.reserve_seq, m.seqs = seqs.take, seqs
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
            lock.release()
            raise
        return cls(config, listeners, max_intervals, lock=lock, clock=clock,
                   commands=commands)

    def close(self) -> None:
        """What ``from_config`` opened, closed without running: the sources, the sinks
        (no ``stopped``) and the state lock."""
        for lst in self.listeners:
            lst.source.close()
        for m in self.machines:
            for sink in m.sinks:
                sink.close()
            if m.seqs is not None:
                m.seqs.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def intervals(self) -> int:
        return sum(m.intervals for m in self.machines)

    def stop(self, *_args) -> None:
        """SIGTERM, SIGINT: a clean stop; a second one while stopping cuts the sinks'
        flush short (the operator or systemd insists)."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def hang_up(self, *_args) -> None:
        """SIGHUP: a clean stop like SIGTERM, exiting 129, so that under systemd
        (Restart=on-failure) the agent comes back with its config read again, and a
        closed terminal ends a run in the foreground (docs/agent.md "Stopping")."""
        self.exit_code = EXIT_HUP
        self.stop()

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

    def _in_maintenance(self, m: Machine) -> Callable[[float], bool]:
        """The pipeline's question at each interval (agent/pipeline.py): is ``m`` in
        maintenance at ``ts``? A ``--for`` that ran out ends here, at the first interval
        after it: the file and the audit log say so, and the sinks hear it (``pending``,
        sent before this interval's result)."""
        def ask(ts: float) -> bool:
            if m.maintenance.expired(ts):
                state = m.maintenance.expire()      # None: a command changed it meanwhile
                if state is not None:
                    m.pending.append(MaintenanceChanged(on=False, until=None, by=state["by"],
                                                        via="expiry"))
                    _log.info(f"machine {m.name}: maintenance ended (its time ran out)")
                    return False
            return m.maintenance.active(ts)
        return ask

    def _maintenance_at_start(self, m: Machine) -> None:
        """The state restored, said to the sinks (a retained topic, a Sparkplug metric):
        on, off, or ended while the agent was stopped."""
        if m.maintenance is None or m.maintenance.record is None:
            return                        # never in maintenance: nothing to restore or say
        if m.maintenance.expired():
            state = m.maintenance.expire() or m.maintenance.state()
            m.send(MaintenanceChanged(on=False, until=None, by=state["by"], via="expiry"))
            return
        state = m.maintenance.state()
        if state["on"]:
            _log.info(f"machine {m.name}: in maintenance (by {state['by']}, until "
                      f"{state['until'] or 'turned off'})")
        m.send(MaintenanceChanged(on=state["on"], until=state["until"] if state["on"] else None,
                                  by=state["by"], via="start"))

    def _emit(self, machine: Machine, results: list[IntervalResult]) -> None:
        self._watch_clock()
        while machine.pending:
            machine.send(machine.pending.pop(0))
        for r in results:
            if self._stop.is_set() or (self.max_intervals is not None
                                       and machine.intervals >= self.max_intervals):
                break
            for sink in machine.sinks:
                machine.deliver(sink, "interval", r)
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

    def _watch_clock(self) -> None:
        """A step of the wall clock (NTP setting a Pi's clock) is said once to every
        machine: records before it carried ``"clock": "unsynced"``, those after are right."""
        step = self.clock.poll()
        if step is None:
            return
        state = self.clock.read()
        _log.info(f"the system clock was set: {step:+.3f} s (now {state})")
        self.notify.status(f"clock set by {step:+.3f} s")
        for m in self.machines:
            m.send(ClockSet(round(step, 3), state))

    def _stats(self) -> None:
        """The periodic health record of each machine: the process, its inference time,
        its input's losses, its interval statuses, its sinks."""
        if not self._stats_lock.acquire(blocking=False):
            return                               # another input's thread is on it
        try:
            if time.monotonic() < self._next_stats:
                return
            self._next_stats = time.monotonic() + self.stats_s
            self._keep_lock()
            process = self.process.sample()
            for lst in self.listeners:
                source = lst.source.health()
                for m in lst.machines:
                    times, m.inference_ms = m.inference_ms, []
                    health, m.health = m.health, Counter()
                    sinks: dict = {}
                    for sink in m.sinks:
                        try:
                            sinks.update(sink.health())
                        except Exception:          # noqa: BLE001 - counted, never fatal
                            m.sink_errors[sink.name] += 1
                    if m.sink_errors:
                        sinks["sink_errors"] = dict(m.sink_errors)
                    m.send(Stats(ts=round(time.time(), 3), process=process,
                                 intervals=m.intervals,
                                 inference_ms_median=(round(float(np.median(times)), 3)
                                                      if times else None),
                                 audio="lost" if lst.lost else m.audio,
                                 interval_status=dict(health), source=source, sinks=sinks,
                                 clock=self.clock.state))
            self.notify.status(f"{self.intervals} intervals, {len(self.machines)} "
                               f"machine(s), cpu {process['cpu_percent']} %, "
                               f"rss {process['rss_mb']} MB")
        finally:
            self._stats_lock.release()

    def _keep_lock(self) -> None:
        """The state folder removed (or its lock file) while running: the lock is taken
        again on a new file, so a second agent started now is still refused."""
        if self.lock is None or self.lock.still_ours():
            return
        _log.warning(f"{self.lock.path}: the state lock file vanished while running; "
                     f"taking it again")
        self.lock.release()
        try:
            self.lock.folder.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except (OSError, HarkenError) as exc:
            _log.warning(f"the state lock could not be taken again: {exc}")
        for m in self.machines:           # the seq reservations went with the folder
            if m.seqs is not None:
                m.seqs.renew(m.pipeline.seq)

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
        for sig, handler in ((signal.SIGINT, self.stop), (signal.SIGTERM, self.stop),
                             (signal.SIGHUP, self.hang_up)):
            try:
                signal.signal(sig, handler)
            except ValueError:            # not the main thread (tests)
                pass
        # one-off costs of the first inference (the TFLite delegate, ONNX Runtime's first
        # run) are paid here, not by the first interval's latency
        for m in self.machines:
            m.pipeline.scorer.warm_up()
            m.send(self._started(m))
            self._maintenance_at_start(m)
        try:
            if self.commands is not None and self.lock is not None:
                self.control = ControlServer(self.lock.folder, self.commands.handle).start()
            if len(self.listeners) == 1:
                self._listen(self.listeners[0])
            else:
                self._listen_all()
        finally:
            if self.control is not None:        # no command while the sinks close
                self.control.close()
            for lst in self.listeners:
                lst.source.close()
            self.notify.stopping()
            self._close_sinks()
            for m in self.machines:
                if m.seqs is not None:
                    m.seqs.close()
            if self.lock is not None:
                self.lock.release()
        return self.exit_code

    def _close_sinks(self) -> None:
        """Every sink's ``stopped`` and close, all at once, within one shared budget:
        with four machines behind a frozen connection the stop takes the budget once, not
        four times (systemd kills at TimeoutStopSec). A sink still closing when the budget
        is spent (or at a second SIGTERM) is left behind: its thread dies with the process."""
        deadline = time.monotonic() + self.stop_budget_s

        def finish(m: Machine, sink: Sink) -> None:
            m.deliver(sink, "status", Stopped(m.intervals))
            flush_s = max(0.0, deadline - time.monotonic() - CLOSE_RESERVE_S)
            try:
                if "flush_s" in inspect.signature(sink.close).parameters:
                    sink.close(flush_s=flush_s)
                else:
                    sink.close()
            except Exception:              # noqa: BLE001 - the others still close
                _log.exception(f"machine {m.name}: sink {sink.name} failed to close")

        threads = [threading.Thread(target=finish, args=(m, sink), daemon=True,
                                    name=f"close-{m.name}-{sink.name}")
                   for m in self.machines for sink in m.sinks]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive() and not self._hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                t.join(min(left, 0.1))     # the main thread stays free for a second signal
        late = [t.name for t in threads if t.is_alive()]
        if late:
            _log.warning(f"stop budget of {self.stop_budget_s:g} s spent; exiting without "
                         f"waiting for {', '.join(late)}")

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
    """Build and run the agent. A failure of the device (a full disk, an I/O error) is an
    ``EnvironmentFailure``: exit 75, which systemd restarts, unlike the exit 2
    of a config mistake (docs/agent.md "Exit codes")."""
    adopt, restore = _catch_signals_while_building()
    try:
        runner = Runner.from_config(config, max_intervals)
        adopt(runner)
        return runner.run()
    except (BundleError, SourceError) as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        if not is_transient(exc) or isinstance(exc, HarkenError):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise EnvironmentFailure(f"{where}{exc.strerror or exc}") from None
    finally:
        restore()


def _catch_signals_while_building() -> tuple[Callable[[Runner], None], Callable[[], None]]:
    """SIGTERM, SIGINT or SIGHUP while the runner is still being built (bundles loaded, the
    broker's TLS handshake started, the state locked) would otherwise kill the process with
    the default action: no ``stopped``, no NDEATH, exit -15. Each is remembered and handed
    to the runner once it exists (``adopt``; ``Runner.run`` then installs its own
    handlers); ``restore`` puts the earlier handlers back once the run is over."""
    held: list[Runner] = []
    early: list[Callable[[Runner], None]] = []
    lock = threading.RLock()          # a handler runs in the main thread, maybe inside adopt

    def catch(method: Callable[[Runner], None]) -> Callable:
        def handler(*_args) -> None:
            with lock:
                if not held:
                    early.append(method)
                    return
            method(held[0])
        return handler

    def adopt(runner: Runner) -> None:
        with lock:
            held.append(runner)
            waiting = list(early)
        for method in waiting:
            method(runner)

    before = {}
    for sig, method in ((signal.SIGINT, Runner.stop), (signal.SIGTERM, Runner.stop),
                        (signal.SIGHUP, Runner.hang_up)):
        try:
            before[sig] = signal.signal(sig, catch(method))
        except ValueError:                # not the main thread (tests)
            pass

    def restore() -> None:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return adopt, restore
