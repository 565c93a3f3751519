"""Prometheus metrics of a running agent (docs/deploy.md "Prometheus"): ``[metrics] listen``
turns on one HTTP endpoint per process that serves every machine's figures, labelled
``node`` and ``machine``.

Opt-in and optional: without ``listen`` no port is opened, and ``prometheus_client`` (the
``metrics`` extra) is imported only when the sink starts, so the device-only install runs
without it. The machines of one process share one registry and one server, keyed by the
listen address (a module-level table, counted so the last machine's close stops it).

Names follow Prometheus conventions (units in the name, ``_total`` on counters): the score
and threshold of each interval, the anomaly and maintenance states (0/1), intervals by
status, the audio level in dBFS; from each stats record (agent/runner.py ``_stats``) the
outbox depth, the publish latency, the input's dropped audio; and the standard
``process_*`` figures (CPU seconds, resident memory) of ``prometheus_client``'s process
collector.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
from typing import Annotated, Any

from pydantic import AfterValidator

from harken.agent.decision.records import IntervalResult, Stats, StatusEvent
from harken.agent.sinks.base import Sink, SinkSettings, register
from harken.common.errors import ConfigError, EnvironmentFailure
from harken.common.settings import Text

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"


def split_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, value
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host.split("%")[0])      # ValueError: not an IPv6 address
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. '[::1]:9108'")
    if not host:
        raise ValueError("no host before ':' (e.g. '127.0.0.1:9108')")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535 "
                         "(expected HOST:PORT, e.g. '127.0.0.1:9108')")
    return host, int(port)


def _listen(value: str) -> str:
    split_listen(value)
    return value


Listen = Annotated[Text(260, chars=r"[A-Za-z0-9_.:\[\]%-]",
                        said="HOST:PORT, e.g. 127.0.0.1:9108"), AfterValidator(_listen)]


class MetricsSection(SinkSettings):
    """``[metrics]``: where the Prometheus endpoint listens (none: no endpoint)."""
    listen: Listen | None = None


class _Endpoint:
    """The registry and HTTP server of one listen address, shared by a process's machines."""

    def __init__(self, host: str, port: int) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise ConfigError("metrics.listen: the Prometheus metrics need the "
                              "prometheus_client package (pip install 'harken[metrics]')") from None
        self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=self.registry)
        labels = ["node", "machine"]
        r = self.registry
        self.score = pc.Gauge("harken_score", "The last interval's anomaly score (NaN: not scored)",
                              labels, registry=r)
        self.threshold = pc.Gauge("harken_threshold", "The score above which an interval is "
                                  "anomalous", labels, registry=r)
        self.anomaly = pc.Gauge("harken_anomaly", "1 while the machine is in an anomaly event",
                                labels, registry=r)
        self.maintenance = pc.Gauge("harken_maintenance", "1 while the machine is in maintenance",
                                    labels, registry=r)
        self.intervals = pc.Counter("harken_intervals", "Report intervals by audio status",
                                    labels + ["status"], registry=r)
        self.level = pc.Gauge("harken_audio_level_dbfs", "The last interval's audio level (RMS)",
                              labels, registry=r)
        self.inference = pc.Gauge("harken_inference_seconds", "The last interval's inference "
                                  "time", labels, registry=r)
        self.outbox = pc.Gauge("harken_outbox_messages", "Messages waiting in the MQTT outbox",
                               labels, registry=r)
        self.latency = pc.Gauge("harken_publish_latency_seconds", "Publish-to-acknowledge "
                                "latency of the scores since the last stats record",
                                labels + ["quantile"], registry=r)
        self.dropped = pc.Counter("harken_audio_dropped_samples", "Audio samples lost to a "
                                  "full capture buffer", labels, registry=r)
        self.xruns = pc.Counter("harken_audio_xruns", "Capture overruns the audio driver "
                                "reported", labels, registry=r)
        self.cpu = pc.Gauge("harken_process_cpu_percent", "The agent's CPU use (percent of "
                            "one core) over the last stats period", ["node"], registry=r)
        try:
            self.server, self.thread = pc.start_http_server(port, addr=host, registry=r)
        except OSError as exc:
            raise EnvironmentFailure(f"metrics.listen: cannot listen on {host}:{port} "
                                     f"({exc.strerror or exc}); is another process using "
                                     f"the port?") from None
        self.users = 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_endpoints: dict[tuple[str, int], _Endpoint] = {}
_lock = threading.Lock()


def _acquire(host: str, port: int) -> _Endpoint:
    with _lock:
        ep = _endpoints.get((host, port))
        if ep is None:
            ep = _endpoints[(host, port)] = _Endpoint(host, port)
        ep.users += 1
        return ep


def _release(key: tuple[str, int]) -> None:
    with _lock:
        ep = _endpoints.get(key)
        if ep is None:
            return
        ep.users -= 1
        if ep.users <= 0:
            del _endpoints[key]
            ep.stop()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


@register
class MetricsSink(Sink):
    """One machine's figures on the process's Prometheus endpoint (module docstring)."""
    name = "metrics"
    table = "metrics"
    Settings = MetricsSection

    def __init__(self, endpoint: _Endpoint, key: tuple[str, int], node: str, machine: str) -> None:
        self.ep, self.key, self.labels = endpoint, key, (node, machine)
        self.node = node
        self._seen = {"overflow_samples": None, "xruns": None}
        self._closed = False

    @classmethod
    def enabled(cls, config) -> bool:
        return config.metrics.listen is not None

    @classmethod
    def from_config(cls, config) -> MetricsSink:
        host, port = split_listen(config.metrics.listen)
        ep = _acquire(host, port)
        return cls(ep, (host, port), config.agent.node, config.agent.machine)

    def interval(self, result: IntervalResult) -> None:
        ep, lb = self.ep, self.labels
        ep.score.labels(*lb).set(math.nan if result.score is None else result.score)
        ep.threshold.labels(*lb).set(result.threshold)
        ep.anomaly.labels(*lb).set(1 if result.anomaly else 0)
        ep.maintenance.labels(*lb).set(1 if result.maintenance else 0)
        ep.intervals.labels(*lb, result.status).inc()
        ep.level.labels(*lb).set(result.rms_dbfs)
        ep.inference.labels(*lb).set(result.inference_ms / 1000.0)

    def status(self, event: StatusEvent) -> None:
        if isinstance(event, Stats):
            self._stats(event)

    def _stats(self, event: Stats) -> None:
        ep, lb = self.ep, self.labels
        cpu = _number(event.process.get("cpu_percent"))
        if cpu is not None:
            ep.cpu.labels(self.node).set(cpu)
        depth = _number(event.sinks.get("outbox_depth"))
        if depth is not None:
            ep.outbox.labels(*lb).set(depth)
        for key, quantile in (("publish_ms_median", "0.5"), ("publish_ms_p99", "0.99")):
            ms = _number(event.sinks.get(key))
            if ms is not None:
                ep.latency.labels(*lb, quantile).set(ms / 1000.0)
        # the source's figures are running totals: the counters advance by what is new
        for key, counter in (("overflow_samples", ep.dropped), ("xruns", ep.xruns)):
            now = _number(event.source.get(key))
            if now is None:
                continue
            before = self._seen[key]
            counter.labels(*lb).inc(max(0.0, now - before) if before is not None else now)
            self._seen[key] = now

    def close(self, flush_s: float = 5.0) -> None:
        if not self._closed:
            self._closed = True
            _release(self.key)
