"""``harken run``: config -> bundle, backend, source, pipeline, sinks; the loop that must
keep going for months. A lost microphone is reported and reopened (agent/sources/
microphone.py), never fatal."""

from __future__ import annotations

import signal
import time

import numpy as np

from harken.agent.bundle import Bundle, BundleError, open_bundle
from harken.agent.config import Config, ConfigError, read_override
from harken.agent.decision import Decision, DecisionConfig
from harken.agent.pipeline import Pipeline
from harken.agent.scorer import make_scorer
from harken.agent.sinks import Sink, make_sinks
from harken.agent.sources import Source, SourceError, open_source
from harken.agent.stats import ProcessStats
from harken.agent.systemd import Notifier


def enrolled_bank(config: Config, bundle: Bundle) -> tuple[dict, dict] | None:
    """A general bundle's bank enrolled on this device (arrays, manifest); None for a
    bundle with its own bank. Refused clearly when missing, corrupt or another model's."""
    if not bundle.needs_enrollment:
        return None
    from harken.agent.enroll import bank_path, read_bank
    return read_bank(bank_path(config), bundle)


def resolve_threshold(config: Config, bundle: Bundle,
                      enrollment: dict | None = None) -> tuple[float, str]:
    """Config value, else the calibration override, else the enrolled bank's (its
    manifest: ``BundleScorer.enrollment``), else the bundle's."""
    if config.decision.threshold is not None:
        return config.decision.threshold, "config decision.threshold"
    override = read_override(config)
    if override is not None:
        return float(override["threshold"]), f"calibration {config.override_file}"
    if enrollment is not None:
        from harken.agent.enroll import bank_path
        return float(enrollment["threshold"]), f"enrollment {bank_path(config)}"
    if bundle.threshold is None:
        raise ConfigError(f"{bundle.root}: the bundle has no threshold (an imported model); "
                          f"run 'harken calibrate' or set decision.threshold")
    return bundle.threshold, "bundle"


def build(config: Config, seq_start: int = 1) -> tuple[Bundle, Pipeline]:
    bundle = open_bundle(config.path(config.model.bundle))
    # a general bundle has no sections of its own: its bank is this machine's
    if not bundle.needs_enrollment and config.agent.section not in bundle.sections:
        raise ConfigError(f"{config.source_file}: key 'agent.section' = {config.agent.section}: "
                          f"the bundle has sections {bundle.sections}")
    bank = enrolled_bank(config, bundle)          # read and checked once, here
    rule = enrollment = None
    if bank is not None:
        from harken.agent.enroll import rule_arrays
        from harken.agent.rules import make_rule
        rule, enrollment = make_rule(bundle.rule_name, rule_arrays(bank[0], bundle)), bank[1]
    scorer = make_scorer(bundle, config.agent.section, config.model.artifact,
                         config.model.threads, rule=rule, enrollment=enrollment)
    threshold, _ = resolve_threshold(config, bundle, enrollment)
    d = config.decision
    decision = Decision(threshold, DecisionConfig(d.k_on, d.n, d.n_off))
    return bundle, Pipeline(scorer, decision, d.interval_s, seq_start=seq_start)


def preflight(config: Config) -> tuple[Bundle, Pipeline]:
    """Everything ``harken run`` refuses, checked before anything starts; ``harken
    check-config`` runs exactly this, so it approves only what ``run`` accepts: the bundle
    and its section, the threshold, the audio file, the MQTT password source."""
    bundle, pipeline = build(config)
    a = config.audio
    if a.source == "file":
        path = config.path(a.file)
        if not path.is_file():
            raise ConfigError(f"{config.source_file}: key 'audio.file' = {a.file!r}: no such "
                              f"file ({path})")
    if config.mqtt.enabled:
        config.mqtt.resolved_password()          # an unset password_env is refused here
    return bundle, pipeline


class Runner:
    """The agent's loop, handed its parts: a source, a pipeline, the sinks. ``from_config``
    builds them from an agent config; tests and multi-machine set-ups can hand in others."""

    def __init__(self, config: Config, bundle: Bundle, pipeline: Pipeline, source: Source,
                 sinks: list[Sink], max_intervals: int | None = None) -> None:
        self.config, self.bundle, self.pipeline = config, bundle, pipeline
        self.source, self.sinks = source, sinks
        self.max_intervals = max_intervals
        self.intervals = 0
        self._stop = False
        self.process = ProcessStats()
        self.stats_s = config.output.stats_s
        self._next_stats = time.monotonic() + self.stats_s
        self._inference_ms: list[float] = []
        self.notify = Notifier()
        self._samples = 0
        self._ready = False

    @classmethod
    def from_config(cls, config: Config, max_intervals: int | None = None) -> Runner:
        """Bundle and pipeline, then the sinks (a durable sink says where ``seq`` goes on),
        then the source; whatever was started is closed again if a later part fails."""
        bundle, pipeline = preflight(config)
        sinks = make_sinks(config)
        try:
            pipeline.seq = max(s.seq_start for s in sinks)
            source = open_source(config, bundle.spec.sample_rate)
        except BaseException:
            for s in sinks:
                s.close()
            raise
        return cls(config, bundle, pipeline, source, sinks, max_intervals)

    def stop(self, *_args) -> None:
        self._stop = True

    def _report(self, record: dict) -> None:
        """A status record from the source (audio lost / restored): sinks and systemd."""
        self._status(record)
        if record.get("status") == "audio_lost":
            self.notify.status(f"audio lost: {record.get('error', '')}")
        elif record.get("status") == "audio_restored":
            self.notify.status("audio restored")

    def _push(self, chunk: np.ndarray) -> None:
        """Audio arrived: systemd hears READY once and the watchdog while audio advances."""
        if not self._ready:
            self._ready = True
            self.notify.ready(f"listening: {self.bundle.model_id} on "
                              f"{self.config.audio.source}")
        self._samples += chunk.size
        self.notify.progress(self._samples)
        self._emit(self.pipeline.push(chunk))

    def _listen(self) -> None:
        """Every chunk of the source; at the end of a recording (a file, each pass of a
        looped file, stdin) the recording's last interval is flushed."""
        for chunk in self.source.chunks(self._done, self._report):
            if chunk is None:
                self._emit(self.pipeline.finish())
            elif chunk.size:
                self._push(chunk)
            else:
                self._emit([])
            if self._done():
                return

    def _emit(self, results) -> None:
        for r in results:
            if self._done():
                return
            for sink in self.sinks:
                sink.interval(r)
            self.intervals += 1
            if r.windows:
                self._inference_ms.append(r.inference_ms)
        if time.monotonic() >= self._next_stats:
            self._stats()

    def _stats(self) -> None:
        """The periodic health record: process, inference time, audio losses, sinks."""
        self._next_stats = time.monotonic() + self.stats_s
        record = {"status": "stats", "ts": round(time.time(), 3), **self.process.sample(),
                  "intervals": self.intervals,
                  "inference_ms_median": (round(float(np.median(self._inference_ms)), 3)
                                          if self._inference_ms else None)}
        record.update(self.source.health())
        for sink in self.sinks:
            record.update(sink.health())
        self._inference_ms = []
        self.notify.status(f"{self.intervals} intervals, cpu {record['cpu_percent']} %, "
                           f"rss {record['rss_mb']} MB")
        for sink in self.sinks:
            sink.status(dict(record))

    def _done(self) -> bool:
        return self._stop or (self.max_intervals is not None
                              and self.intervals >= self.max_intervals)

    def _status(self, record: dict) -> None:
        for sink in self.sinks:
            sink.status(dict(record))

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, self.stop)
            except ValueError:            # not the main thread (tests)
                pass
        # one-off costs of the first inference (the TFLite delegate, ONNX Runtime's first
        # run) are paid here, not by the first interval's latency
        scorer = self.pipeline.scorer
        scorer.warm_up()
        started = {"status": "started", "model": self.bundle.model_id,
                   "backend": scorer.backend_name,
                   "threshold": self.pipeline.decision.threshold,
                   "source": self.config.audio.source}
        bank = scorer.enrollment
        if bank is not None:             # say which on-site bank scores (harken enroll)
            started["bank"] = {"enrolled": True, "audio_s": bank["audio_s"],
                               "intervals": bank["intervals"],
                               "created": bank["sessions"][-1]["created"]}
        self._status(started)
        try:
            self._listen()
        finally:
            self.source.close()
            self.notify.stopping()
            self._status({"status": "stopped", "intervals": self.intervals})
            for sink in self.sinks:
                sink.close()
        return 0


def run_config(config: Config, max_intervals: int | None = None) -> int:
    try:
        return Runner.from_config(config, max_intervals).run()
    except (BundleError, SourceError) as exc:
        raise ConfigError(str(exc)) from None

