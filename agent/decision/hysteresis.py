"""The anomaly decision: interval scores against the threshold, with k-of-n hysteresis so
that one noisy interval does not flap the state, and start/end events.

State goes ON when at least ``k_on`` of the last ``n`` scored intervals are above the
threshold, and back OFF when ``n_off`` scored intervals in a row are at or below it.
Intervals that could not be scored (silent or clipped microphone) neither raise nor clear
the state: a dead microphone is not evidence that the machine is fine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecisionConfig:
    k_on: int = 2
    n: int = 3
    n_off: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.k_on <= self.n:
            raise ValueError(f"decision: k_on must be between 1 and n={self.n}, got {self.k_on}")
        if self.n_off < 1:
            raise ValueError(f"decision: n_off must be at least 1, got {self.n_off}")


@dataclass
class Event:
    type: str                 # "start" | "end"
    ts: float                 # time of the interval that changed the state
    peak_score: float
    duration_s: float         # 0 at start; from the start interval to the end at end

    def to_dict(self) -> dict:
        return {"type": self.type, "ts": round(self.ts, 3),
                "peak_score": round(self.peak_score, 6),
                "duration_s": round(self.duration_s, 3)}


@dataclass
class Decision:
    threshold: float
    config: DecisionConfig = field(default_factory=DecisionConfig)
    anomaly: bool = field(default=False, init=False)   # every decision starts OFF

    def __post_init__(self) -> None:
        self._recent: deque[bool] = deque(maxlen=self.config.n)
        self._below = 0
        self._start_ts = 0.0
        self._peak = float("-inf")

    def hold(self, ts: float) -> Event | None:
        """An interval of a machine in maintenance (at ``ts``): no anomaly, and nothing
        remembered, so the state starts afresh when maintenance ends (docs/agent.md
        "Maintenance"). An event running when maintenance began ends here: its ``end`` is
        returned, so a plant never sees a start without an end."""
        was = self.anomaly
        self.anomaly = False
        self._recent.clear()
        self._below = 0
        if was:
            return Event("end", ts, self._peak, ts - self._start_ts)
        return None

    def update(self, score: float | None, ts: float) -> Event | None:
        """Feed one interval (``score`` None: not scoreable); returns an event on a change."""
        if score is None:
            return None
        above = score > self.threshold
        self._recent.append(above)
        self._below = 0 if above else self._below + 1
        if self.anomaly:
            self._peak = max(self._peak, score)
            if self._below >= self.config.n_off:
                self.anomaly = False
                self._recent.clear()
                return Event("end", ts, self._peak, ts - self._start_ts)
        elif sum(self._recent) >= self.config.k_on:
            self.anomaly, self._start_ts = True, ts
            self._peak = score
            return Event("start", ts, score, 0.0)
        return None
