"""One word for how a machine is, as the plant views show it (docs/watch.md "States").

In order of precedence: a machine whose agent is gone (its Last Will ``offline``, or
``stopped`` on a clean shutdown) is that, whatever its last score said, since the score is
old; one in maintenance raises no alarm, so an anomaly flag under maintenance is not one;
then the anomaly; then ``stale`` for an agent still said online whose scores stopped (none
arrived for ``STALE_INTERVALS`` of its own report intervals, and at least ``STALE_MIN_S``: a
stuck agent whose connection lives); then ``ok``, or ``waiting`` before the first score.
"""

from __future__ import annotations

import math

STATES = ("anomaly", "offline", "stopped", "stale", "maintenance", "ok", "waiting")
STALE_INTERVALS = 5
STALE_MIN_S = 60.0
STALE_INTERVAL_CAP_S = 120.0   # an interval_s beyond this (1e9, or milliseconds sent as seconds)
                               # is read as this: stale within ten minutes whatever it says


def machine_state(row, now: float) -> str:
    """The state word of a fleet row (agent/plant/fleet.py ``Row``)."""
    if row.status in ("offline", "stopped"):
        return row.status
    if row.maintenance:
        return "maintenance"
    if str(row.anomaly).upper() == "ON":
        return "anomaly"
    if math.isnan(row.score_heard):
        return "waiting"
    # by the arrival of its latest score, not its ts: a clock running ahead would otherwise
    # keep a hung agent "ok" for as long as it runs ahead
    interval = min(row.interval_s or 0.0, STALE_INTERVAL_CAP_S)
    stale_s = max(STALE_MIN_S, STALE_INTERVALS * interval)
    if now - row.score_heard > stale_s:
        return "stale"
    return "ok"


def rank(state: str) -> int:
    """Sort key: what needs a look first (anomalies, then gone agents, ...)."""
    return STATES.index(state) if state in STATES else len(STATES)
