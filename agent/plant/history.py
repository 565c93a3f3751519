"""The last hour of one machine's scores, for the web view's chart, bounded whatever arrives.

A machine scores every interval (1 to 10 s); a thousand machines at one point per score
would be millions of Python objects. So the hour is cut into ``BUCKETS`` buckets (10 s each
for an hour) and each bucket keeps the highest score heard in it (an alarm is a peak: the
mean would hide it), the threshold, and whether any score in it was anomalous or in
maintenance. The buckets live in numpy arrays allocated on the first score: about 9 kB per
machine, whatever the rate or the number of messages. Written by hand because no library
keeps a fixed-size, time-bucketed maximum; it runs once per message.

Times are the scores' own ``ts`` (a queued score belongs where it was made). A ``ts`` from
the future (a clock set wrong, or a hostile publisher) would push every later score out of
the window, so one more than ``AHEAD_S`` ahead of the watcher's clock is placed at its
arrival instead; one older than the window, or older than the newest bucket by more than
the window, is not kept.
"""

from __future__ import annotations

import math

import numpy as np

BUCKETS = 360                 # per window: 10 s each for an hour
AHEAD_S = 60.0                # a ts further ahead than this is placed at its arrival

ANOMALY = 1                   # flags of a bucket
MAINTENANCE = 2


class History:
    """A ring of ``BUCKETS`` time buckets covering the last ``window_s`` seconds."""

    __slots__ = ("window_s", "step", "t", "score", "threshold", "flags", "newest", "changed")

    def __init__(self, window_s: float = 3600.0) -> None:
        self.window_s = float(window_s)
        self.step = self.window_s / BUCKETS
        self.t = np.full(BUCKETS, -np.inf)               # each slot's bucket start
        self.score = np.full(BUCKETS, np.nan)            # float64: a float32 turns 1e39 into inf
        self.threshold = np.full(BUCKETS, np.nan)
        self.flags = np.zeros(BUCKETS, np.uint8)
        self.newest = -math.inf                          # the newest bucket's start
        self.changed = math.inf                          # the oldest bucket changed since
                                                         # the web feed last sent this one

    def add(self, ts: float, score: float | None, threshold: float | None,
            anomaly: bool, maintenance: bool, now: float) -> float | None:
        """Put one score in its bucket; the bucket's start, or None when it was not kept."""
        if not math.isfinite(ts) or ts > now + AHEAD_S:
            ts = now
        if ts < now - self.window_s or ts < self.newest - self.window_s:
            return None
        start = math.floor(ts / self.step) * self.step
        i = int(math.floor(ts / self.step)) % BUCKETS
        if self.t[i] != start:                           # a new bucket over an old one
            self.t[i] = start
            self.score[i] = np.nan
            self.threshold[i] = np.nan
            self.flags[i] = 0
        if score is not None and math.isfinite(score) and not (self.score[i] >= score):
            self.score[i] = score                         # (NaN compares False)
        if threshold is not None and math.isfinite(threshold):
            self.threshold[i] = threshold
        self.flags[i] |= (ANOMALY if anomaly else 0) | (MAINTENANCE if maintenance else 0)
        self.newest = max(self.newest, start)
        self.changed = min(self.changed, start)
        return start

    def points(self, since: float = -math.inf, now: float | None = None) -> dict[str, list]:
        """The buckets from ``since`` on (oldest first) within the window before ``now``, as
        columns: ``t`` (bucket starts), ``score``, ``threshold`` (5 significant digits, NaN
        as None) and ``flags``. Columns, vectorised: a new page's snapshot asks this of every
        machine under the fleet's lock, and a list per bucket would cost a second for a
        thousand machines."""
        end = self.newest if now is None else now
        keep = np.flatnonzero((self.t >= since) & (self.t >= end - self.window_s))
        keep = keep[np.argsort(self.t[keep], kind="stable")]
        return {"t": self.t[keep].tolist(), "score": _rounded(self.score[keep]),
                "threshold": _rounded(self.threshold[keep]), "flags": self.flags[keep].tolist()}


def _rounded(x: np.ndarray, digits: int = 5) -> list:
    """``x`` to ``digits`` significant digits (short on the wire), NaN as None."""
    x = x.astype(np.float64)
    finite = np.isfinite(x) & (x != 0)
    x = np.where(np.isfinite(x), x, np.nan)       # never an inf for the JSON encoder
    mag = np.zeros_like(x)
    mag[finite] = np.floor(np.log10(np.abs(x[finite])))
    scale = 10.0 ** (digits - 1 - mag)
    r = np.round(x * scale) / scale
    return [None if v != v else v for v in r.tolist()]
