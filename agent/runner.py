"""``harken run``: config -> bundle, backend, source, pipeline, sink; the loop that must
keep going for months. A lost microphone is reported and reopened, never fatal."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import numpy as np

from harken.agent.bundle import Bundle, BundleError, open_bundle
from harken.agent.config import Config, ConfigError, read_override
from harken.agent.decision import Decision, DecisionConfig
from harken.agent.pipeline import Pipeline
from harken.agent.scorer import BundleScorer
from harken.agent.sinks import JsonLinesSink
from harken.agent.sources import Microphone, SourceError, pcm_chunks, wav_chunks
from harken.agent.stats import ProcessStats
from harken.agent.systemd import Notifier


def resolve_threshold(config: Config, bundle: Bundle) -> tuple[float, str]:
    """Config value, else the calibration override, else the bundle's."""
    if config.decision.threshold is not None:
        return config.decision.threshold, "config decision.threshold"
    override = read_override(config)
    if override is not None:
        return float(override["threshold"]), f"calibration {config.override_file}"
    if bundle.threshold is None:
        raise ConfigError(f"{bundle.root}: the bundle has no threshold (an imported model); "
                          f"run 'harken calibrate' or set decision.threshold")
    return bundle.threshold, "bundle"


def build(config: Config, seq_start: int = 1) -> tuple[Bundle, Pipeline]:
    bundle = open_bundle(config.path(config.model.bundle))
    if config.agent.section not in bundle.sections:
        raise ConfigError(f"{config.source_file}: key 'agent.section' = {config.agent.section}: "
                          f"the bundle has sections {bundle.sections}")
    scorer = BundleScorer(bundle, config.agent.section, config.model.artifact,
                          config.model.threads)
    threshold, _ = resolve_threshold(config, bundle)
    d = config.decision
    decision = Decision(threshold, DecisionConfig(d.k_on, d.n, d.n_off))
    return bundle, Pipeline(scorer, decision, d.interval_s, seq_start=seq_start)


class Runner:
    def __init__(self, config: Config, sink: JsonLinesSink | None = None,
                 max_intervals: int | None = None) -> None:
        self.config = config
        self.mqtt = None
        if config.mqtt.enabled:
            from harken.agent.mqtt import MqttSink
            state = config.path(config.agent.state_dir)
            m = config.mqtt     # certificate paths are relative to the config file
            files = {k: str(config.path(v)) for k in ("ca_file", "cert_file", "key_file")
                     if (v := getattr(m, k))}
            self.mqtt = MqttSink(m.model_copy(update=files), config.agent.node,
                                 config.agent.machine, state / m.outbox)
        try:
            self.bundle, self.pipeline = build(config, self.mqtt.seq_start if self.mqtt else 1)
        except BaseException:
            if self.mqtt is not None:
                self.mqtt.close(flush_s=0)
            raise
        out = config.output
        self.sink = sink or JsonLinesSink(out.stdout, config.path(out.file) if out.file else None,
                                          node=config.agent.node, machine=config.agent.machine)
        self.sinks = [self.sink] + ([self.mqtt] if self.mqtt is not None else [])
        self.max_intervals = max_intervals
        self.intervals = 0
        self._stop = False
        self.process = ProcessStats()
        self.stats_s = config.output.stats_s
        self._next_stats = time.monotonic() + self.stats_s
        self.mic: Microphone | None = None
        self._inference_ms: list[float] = []
        self.notify = Notifier()
        self._samples = 0
        self._ready = False

    def stop(self, *_args) -> None:
        self._stop = True

    def _push(self, chunk: np.ndarray) -> None:
        """Audio arrived: systemd hears READY once and the watchdog while audio advances."""
        if not self._ready:
            self._ready = True
            self.notify.ready(f"listening: {self.bundle.manifest['model']['id']} on "
                              f"{self.config.audio.source}")
        self._samples += chunk.size
        self.notify.progress(self._samples)
        self._emit(self.pipeline.push(chunk))

    def _feed(self, chunks: Iterator[np.ndarray]) -> None:
        """A finite source (file, stdin): every chunk, then the recording's last interval."""
        for chunk in chunks:
            self._push(chunk)
            if self._done():
                return
        self._emit(self.pipeline.finish())

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
        """The periodic health record: process, inference time, audio losses."""
        self._next_stats = time.monotonic() + self.stats_s
        record = {"status": "stats", **self.process.sample(), "intervals": self.intervals,
                  "inference_ms_median": (float(np.median(self._inference_ms))
                                          if self._inference_ms else None)}
        if self.mic is not None:
            record["overflow_samples"] = self.mic.ring.overflowed
            record["xruns"] = self.mic.status_flags
        if self.mqtt is not None:
            record.update(self.mqtt.health())
        self._inference_ms = []
        self.notify.status(f"{self.intervals} intervals, cpu {record['cpu_percent']} %, "
                           f"rss {record['rss_mb']} MB")
        for sink in self.sinks:
            sink.status(dict(record))

    def _done(self) -> bool:
        return self._stop or (self.max_intervals is not None
                              and self.intervals >= self.max_intervals)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, self.stop)
            except ValueError:            # not the main thread (tests)
                pass
        a, rate = self.config.audio, self.bundle.spec.sample_rate
        self.sink.status({"status": "started", "model": self.bundle.manifest["model"]["id"],
                          "backend": self.pipeline.scorer.backend.name,
                          "threshold": self.pipeline.decision.threshold,
                          "source": a.source})
        try:
            if a.source == "file":
                while True:
                    self._feed(wav_chunks(self.config.path(a.file), rate, a.block_s, a.realtime))
                    if not a.loop or self._done():
                        break
            elif a.source == "stdin":
                self._feed(pcm_chunks(None, rate, a.block_s, a.pcm_format, a.channels))
            else:
                self._microphone()
        finally:
            self.notify.stopping()
            self.sink.status({"status": "stopped", "intervals": self.intervals})
            for sink in self.sinks:
                sink.close()
        return 0

    def _microphone(self, sleep: Callable[[float], None] = time.sleep) -> None:
        a = self.config.audio
        mic = self.mic = Microphone(a.device, self.bundle.spec.sample_rate, a.block_s, a.ring_s)
        lost_reported = False
        silent_for = max(2.0, 5 * a.block_s)     # no callback this long: the device is gone
        last_data = time.monotonic()
        while not self._done():
            if mic.stream is not None and time.monotonic() - last_data > silent_for:
                mic.close()
            if not mic.active:
                mic.close()
                try:
                    mic.open()
                    last_data = time.monotonic()
                    if lost_reported:
                        self.sink.status({"status": "audio_restored", "device": str(a.device)})
                        self.notify.status("audio restored")
                    lost_reported = False
                except SourceError as exc:
                    mic.close()
                    if not lost_reported:
                        self.sink.status({"status": "audio_lost", "error": str(exc)})
                        self.notify.status(f"audio lost: {exc}")
                        lost_reported = True
                    sleep(a.reopen_s)
                    continue
            x = mic.read(timeout=0.5)
            if x.size:
                last_data = time.monotonic()
                self._push(x)
            else:
                self._emit([])
        mic.close()


def run_config(config: Config, max_intervals: int | None = None) -> int:
    try:
        return Runner(config, max_intervals=max_intervals).run()
    except (BundleError, SourceError) as exc:
        raise ConfigError(str(exc)) from None

