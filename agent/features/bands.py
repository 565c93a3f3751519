"""Band groups of adjacent mels, in linear power: the unit the temporal and modulation
statistics (temporal.py, modulation.py) are computed in.

Sixteen groups of eight mels (of 128) keep the vectors small (a knn distance over a few
hundred values) while still telling a low rumble from a high whistle; power is linear so
that an impact's energy adds the way the sound does (dB would shrink the peaks these
statistics exist to see). docs/architecture.md "spectral-knn".
"""

from __future__ import annotations

import functools

import numpy as np

GROUPS = 16            # band groups (fewer when there are fewer mels)
_DB = np.float32(np.log(10.0) / 10.0)


def n_groups(n_mels: int) -> int:
    return min(GROUPS, n_mels)


@functools.lru_cache(maxsize=8)
def _averaging(n_mels: int) -> np.ndarray:
    """(n_mels, groups): column g averages the mels of group g."""
    edges = np.linspace(0, n_mels, n_groups(n_mels) + 1).round().astype(int)
    m = np.zeros((n_mels, len(edges) - 1), np.float32)
    for g, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        m[lo:hi, g] = 1.0 / (hi - lo)
    return m


def band_power(mel_db: np.ndarray) -> np.ndarray:
    """(..., frames, n_mels) log-mel in dB (the dcase log rule, 10 log10 power) ->
    (..., frames, groups): the mean linear power of each group of adjacent mels, float64.
    The exponential and the sums run in float32 (the features' own precision: an eighth of
    the cost of float64 here, bench/bench_features.py); the small result is float64."""
    mel = np.asarray(mel_db, dtype=np.float32)
    power = np.exp(mel * _DB) @ _averaging(mel.shape[-1])
    return power.astype(np.float64)


@functools.lru_cache(maxsize=64)
def mean_weights(n: int) -> np.ndarray:
    """n weights 1 / n: ``mean_weights(len(x)) @ x`` is x's mean over its first axis, a
    third of ``x.mean(axis=0)``'s cost on the small arrays the branches pool
    (bench/bench_features.py). Read-only: shared between calls."""
    w = np.full(n, 1.0 / n)
    w.flags.writeable = False
    return w
