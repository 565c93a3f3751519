"""What one report interval produces, as the sinks receive it: the score record (the
payload of docs/mqtt.md "Score payload") with its health and, when the state changed, the
anomaly event. Lives below the sinks so that they need nothing from the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harken.agent.decision.hysteresis import Event


@dataclass
class IntervalResult:
    """One report interval: the score payload of DESIGN contract 3, plus health."""
    ts: float
    seq: int
    score: float | None
    threshold: float
    anomaly: bool
    interval_s: float
    model: str
    backend: str
    status: str                      # ok | silent | clipped | invalid
    rms_dbfs: float
    windows: int
    inference_ms: float
    event: Event | None = None
    extra: dict = field(default_factory=dict)
    arrived: float = 0.0             # time.monotonic() when the audio completing it arrived

    def payload(self) -> dict:
        """The contract's score payload (JSON-ready)."""
        return {"ts": round(self.ts, 3), "seq": self.seq,
                "score": None if self.score is None else round(self.score, 6),
                "threshold": self.threshold, "anomaly": self.anomaly,
                "interval_s": self.interval_s, "model": self.model, "backend": self.backend,
                "status": self.status,
                "rms_dbfs": None if not np.isfinite(self.rms_dbfs) else round(self.rms_dbfs, 1),
                "windows": self.windows, "inference_ms": round(self.inference_ms, 3),
                **self.extra}
