"""Temporal branch: how impulsive each band group is over the interval.

What it exposes: short events that a clip's mean and spread hide: impacts, rattles,
bearing-race clicks, a valve's late slam. Per band group (bands.py), over all frames of
the interval: the kurtosis of frame power (spectral kurtosis: 3 for steady noise, high for
rare loud frames), the crest factor (peak over mean power, dB) and the 90th and 99th
percentiles of frame energy above its median (dB: how loud the loudest tenth and hundredth
are, independent of the band's level, which the mel branch already has).

Exactness: each window's row carries its power mean, central moments 2-4 and maximum
and its frames' powers; ``pool_temporal`` combines them into the statistics of all the
interval's frames (the moments by the exact parallel formula for equal-size windows,
percentiles over every frame), so an interval's vector does not depend on how the audio
was chunked, and training's clip vectors are the same function of the same windows.
A few lines of numpy (no scipy.stats on the device).

Cost (issue 39's goal, bench/bench_features.py): the percentiles are np.percentile's
"linear" rule written out over ``np.partition`` (the two order statistics around each
percentile, not a full sort), and since dB is monotonic in power, the order statistics
of power are those of energy: only those few are taken to dB, not every frame.
"""

from __future__ import annotations

import numpy as np


PERCENTILES = (90.0, 99.0)       # above the median (50)
TINY = 1e-300


def window_temporal(p: np.ndarray) -> np.ndarray:
    """(n, frames, groups) band power of windows (bands.py ``band_power``) -> (n, 5 * groups
    + frames * groups) rows: mean, central moments 2, 3, 4 and max of each group's frame
    power, then the frames' powers (frame-major)."""
    p = np.asarray(p, dtype=np.float64)
    mean = p.mean(axis=1)
    d = p - mean[:, None, :]
    d2 = d * d
    return np.concatenate([mean, d2.mean(axis=1), (d2 * d).mean(axis=1), (d2 * d2).mean(axis=1),
                           p.max(axis=1), p.reshape(len(p), -1)], axis=1)


def row_width(frames: int, groups: int) -> int:
    return (5 + frames) * groups


def pool_temporal(rows: np.ndarray, groups: int) -> np.ndarray:
    """The interval's vector (4 * groups: log10 kurtosis, crest dB, p90 - p50 and
    p99 - p50 dB per group) from its windows' rows (``window_temporal``)."""
    r = np.asarray(rows, dtype=np.float64)
    g = groups
    mean, m2, m3, m4, peak = (r[:, i * g:(i + 1) * g] for i in range(5))
    mu = mean.mean(axis=0)
    delta = mean - mu                                   # each window's mean off the pooled
    var = (m2 + delta ** 2).mean(axis=0)
    fourth = (m4 + 4 * delta * m3 + 6 * delta ** 2 * m2 + delta ** 4).mean(axis=0)
    kurtosis = fourth / np.maximum(var * var, TINY)
    crest = 10.0 * np.log10(np.maximum(peak.max(axis=0), TINY) / np.maximum(mu, TINY))
    q = _percentiles_db(r[:, 5 * g:].reshape(-1, g))    # every frame of the interval
    return np.concatenate([np.log10(np.maximum(kurtosis, TINY)), crest, q[1] - q[0],
                           q[2] - q[0]])


def _percentiles_db(power: np.ndarray) -> np.ndarray:
    """(3, groups): the 50th and PERCENTILES of ``power``'s columns in dB, as
    ``np.percentile(10 log10 power, q, axis=0)`` (its default "linear" rule: between the
    order statistics at floor and ceil of q / 100 (n - 1))."""
    n = len(power)
    at = np.array((50.0, *PERCENTILES)) / 100.0 * (n - 1)
    lo = np.floor(at).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(power, np.unique(np.r_[lo, hi]), axis=0)
    a = 10.0 * np.log10(np.maximum(part[lo], TINY))
    b = 10.0 * np.log10(np.maximum(part[hi], TINY))
    return a + (b - a) * (at - lo)[:, None]
