"""Temporal branch: how impulsive each band group is over the interval.

What it exposes: short events that a clip's mean and spread hide: impacts, rattles,
bearing-race clicks, a valve's late slam. Per band group (bands.py), over all frames of
the interval: the kurtosis of frame power (spectral kurtosis: 3 for steady noise, high for
rare loud frames), the crest factor (peak over mean power, dB) and the 90th and 99th
percentiles of frame energy above its median (dB: how loud the loudest tenth and hundredth
are, independent of the band's level, which the mel branch already has).

Exactness: each window's row is its frames' band powers (frame-major); ``pool_temporal``
computes the statistics over all the interval's frames from them, so an interval's vector
does not depend on how the audio was chunked, and training's clip vectors are the same
function of the same windows. A few lines of numpy (no scipy.stats on the device).

Cost (issue 39's goal, bench/bench_features.py): one sort of the interval's frame powers
per band group gives the maximum and the order statistics np.percentile's "linear" rule
interpolates between (np.percentile would sort again per call); since dB is monotonic in
power, the order statistics of power are those of energy, so only the few needed are
taken to dB, not every frame. Until 2026-12-05 each window's row also carried its power
moments (pooled by the parallel formula); the frames themselves are in the row anyway, so
the moments are now taken over them at once (the same statistics, fewer operations).
"""

from __future__ import annotations

import functools

import numpy as np


PERCENTILES = (90.0, 99.0)       # above the median (50)
TINY = 1e-300


def window_temporal(p: np.ndarray) -> np.ndarray:
    """(n, frames, groups) band power of windows (bands.py ``band_power``) -> (n, frames *
    groups) rows: the frames' powers (frame-major)."""
    p = np.asarray(p, dtype=np.float64)
    return p.reshape(len(p), -1)


def row_width(frames: int, groups: int) -> int:
    return frames * groups


@functools.lru_cache(maxsize=8)
def _order(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """np.percentile's "linear" rule for the 50th and PERCENTILES of n values: the order
    statistics at floor and ceil of q / 100 (n - 1), and the weight of the second; then
    n weights 1 / n (a mean as a product)."""
    at = np.array((50.0, *PERCENTILES)) / 100.0 * (n - 1)
    lo = np.floor(at).astype(int)
    return lo, np.minimum(lo + 1, n - 1), (at - lo)[:, None], np.full(n, 1.0 / n)


def pool_temporal(rows: np.ndarray, groups: int) -> np.ndarray:
    """The interval's vector (4 * groups: log10 kurtosis, crest dB, p90 - p50 and
    p99 - p50 dB per group) from its windows' rows (``window_temporal``)."""
    p = np.sort(np.asarray(rows, dtype=np.float64).reshape(-1, groups), axis=0)
    n = len(p)
    lo, hi, w, u = _order(n)
    mu = u @ p                   # means as a product: a third of a reduction's cost here
    d = p - mu
    d *= d
    var = u @ d
    fourth = np.einsum("fg,fg->g", d, d)
    # dB of the order statistics, the maximum (the last sorted) and the mean
    ends = 10.0 * np.log10(np.maximum(np.concatenate([p[lo], p[hi], p[-1:], mu[None]]), TINY))
    q = ends[:3] + (ends[3:6] - ends[:3]) * w
    return np.concatenate([np.log10(np.maximum(fourth / (n * np.maximum(var * var, TINY)), TINY)),
                           ends[6] - ends[7], q[1] - q[0], q[2] - q[0]])
