"""What one report interval produces, as the sinks receive it: the score record (the
payload of docs/mqtt.md "Score payload") with its health and, when the state changed, the
anomaly event. Lives below the sinks so that they need nothing from the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from harken.agent.decision.hysteresis import Event


@dataclass
class IntervalResult:
    """One report interval: the score payload of docs/schemas/score.schema.json, plus health."""
    ts: float
    seq: int
    score: float | None
    threshold: float
    anomaly: bool
    interval_s: float
    model: str
    backend: str
    status: str                      # ok | silent | dropout | clipped | invalid
    rms_dbfs: float
    windows: int
    inference_ms: float
    event: Event | None = None
    extra: dict = field(default_factory=dict)
    arrived: float = 0.0             # time.monotonic() when the audio completing it arrived
    clock: str | None = None         # "unsynced": ts was stamped before the clock was set
    # kept on the device only, never in the payload: the interval's bank statistics (a
    # bank rule's, for the feedback store: agent/operator/) and its audio (int16, only when
    # evidence audio is enabled: docs/agent.md "Hearing the alarm")
    statistics: dict[str, np.ndarray] | None = None
    audio: np.ndarray | None = None
    maintenance: bool = False        # scored while the machine was in maintenance

    def payload(self) -> dict:
        """The contract's score payload (JSON-ready); ``"clock": "unsynced"`` only when the
        wall clock was not synchronised when ``ts`` was stamped (docs/agent.md)."""
        clock = {} if self.clock is None else {"clock": self.clock}
        return {"ts": round(self.ts, 3), "seq": self.seq,
                "score": None if self.score is None else round(self.score, 6),
                "threshold": self.threshold, "anomaly": self.anomaly,
                "interval_s": self.interval_s, "model": self.model, "backend": self.backend,
                "status": self.status,
                "rms_dbfs": None if not np.isfinite(self.rms_dbfs) else round(self.rms_dbfs, 1),
                "windows": self.windows, "inference_ms": round(self.inference_ms, 3),
                **clock, **({"maintenance": True} if self.maintenance else {}), **self.extra}


# -- status events ----------------------------------------------------------------------
# What the runner tells its sinks besides intervals. Each kind is a type, so a sink picks
# the ones it carries by type (isinstance); ``to_dict`` is the status record exactly as the
# JSON lines and the MQTT stats topic have always written it (docs/mqtt.md "Stats").

@dataclass(frozen=True)
class StatusEvent:
    """A status record; ``status`` names its kind in the written record."""
    status: ClassVar[str]

    def to_dict(self) -> dict:
        return {"status": self.status, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class EnrolledBankInfo:
    """Which on-site bank scores (harken enroll), as the ``started`` record names it."""
    audio_s: float
    intervals: int
    created: str

    def to_dict(self) -> dict:
        return {"enrolled": True, "audio_s": self.audio_s, "intervals": self.intervals,
                "created": self.created}


@dataclass(frozen=True)
class Started(StatusEvent):
    """The machine is ready: what scores it (its model and backend) and on what input."""
    status: ClassVar[str] = "started"
    model: str
    backend: str
    threshold: float
    source: str
    channel: int | None
    bank: EnrolledBankInfo | None = None

    def to_dict(self) -> dict:
        record = {"status": self.status, "model": self.model, "backend": self.backend,
                  "threshold": self.threshold, "source": self.source, "channel": self.channel}
        if self.bank is not None:
            record["bank"] = self.bank.to_dict()
        return record


@dataclass(frozen=True)
class Stats(StatusEvent):
    """The periodic health record: the process, the machine's intervals and inference
    time, its input's figures and its sinks' (each a dict of figures, merged in order)."""
    status: ClassVar[str] = "stats"
    ts: float
    process: dict
    intervals: int
    inference_ms_median: float | None
    audio: str
    interval_status: dict
    source: dict
    sinks: dict
    clock: str | None = None         # synced | unsynced | unknown (agent/clock.py)

    def to_dict(self) -> dict:
        clock = {} if self.clock is None else {"clock": self.clock}
        return {"status": self.status, "ts": self.ts, **self.process,
                "intervals": self.intervals, "inference_ms_median": self.inference_ms_median,
                "audio": self.audio, "interval_status": dict(self.interval_status),
                **clock, **self.source, **self.sinks}


@dataclass(frozen=True)
class MaintenanceChanged(StatusEvent):
    """The machine went into maintenance or out of it (docs/agent.md "Maintenance"):
    ``until`` the UTC epoch time it ends by itself (None: until turned off), ``by`` the
    operator named, ``via`` the way the command came (cli, socket, mqtt, sparkplug, expiry,
    start)."""
    status: ClassVar[str] = "maintenance"
    on: bool
    until: float | None = None
    by: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class AudioHealth(StatusEvent):
    """A channel's interval status changed (went silent, clipped, or back to ok)."""
    status: ClassVar[str] = "audio_health"
    health: str
    was: str
    channel: int | None


@dataclass(frozen=True)
class InputProblem(StatusEvent):
    """A machine's input gave no audio: why, and the machine's channel of it."""
    error: str
    channel: int | None


class AudioLost(InputProblem):
    """The input vanished (reported once; the source reopens it)."""
    status = "audio_lost"


class AudioFailed(InputProblem):
    """The input failed for good (its file vanished): this machine stops listening."""
    status = "audio_failed"


@dataclass(frozen=True)
class AudioRestored(StatusEvent):
    """A lost input is back: the device now open."""
    status: ClassVar[str] = "audio_restored"
    device: str
    channel: int | None


@dataclass(frozen=True)
class Stopped(StatusEvent):
    """A clean stop, with the number of intervals the machine reported."""
    status: ClassVar[str] = "stopped"
    intervals: int


@dataclass(frozen=True)
class ClockSet(StatusEvent):
    """The wall clock stepped (NTP setting a Pi's clock after boot): by how many seconds,
    and whether the kernel now calls it synchronised. Records before it with
    ``"clock": "unsynced"`` carry the old clock's time."""
    status: ClassVar[str] = "clock_set"
    jump_s: float
    clock: str


@dataclass(frozen=True)
class SinkFailed(StatusEvent):
    """A sink stopped delivering (``output.file`` on a full disk, stdout closed): said once
    to the machine's other sinks; the failing one retries with back-off."""
    status: ClassVar[str] = "sink_failed"
    sink: str
    error: str


@dataclass(frozen=True)
class SinkRestored(StatusEvent):
    """A failed sink delivers again (what it dropped meanwhile is in its stats figures)."""
    status: ClassVar[str] = "sink_restored"
    sink: str


@dataclass(frozen=True)
class SourceNote(StatusEvent):
    """A source's report that no type above describes (a plugin source's own, or one with
    other fields), kept as the source wrote it, with the machine's channel."""
    status: ClassVar[str] = "source"
    record: dict
    channel: int | None

    def to_dict(self) -> dict:
        return {**self.record, "channel": self.channel}


def source_report(record: dict, channel: int | None) -> StatusEvent:
    """A source's report (agent/sources/base.py ``Report``: a dict, since sources sit below
    this module) as the typed event of the machine listening on ``channel``."""
    kind = record.get("status")
    if kind == AudioLost.status and set(record) == {"status", "error"}:
        return AudioLost(record["error"], channel)
    if kind == AudioRestored.status and set(record) == {"status", "device"}:
        return AudioRestored(record["device"], channel)
    return SourceNote(dict(record), channel)
