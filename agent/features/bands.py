"""Band groups of adjacent mels, in linear power: the unit the temporal and modulation
statistics (temporal.py, modulation.py) are computed in.

Sixteen groups of eight mels (of 128) keep the vectors small (a knn distance over a few
hundred values) while still telling a low rumble from a high whistle; power is linear so
that an impact's energy adds the way the sound does (dB would shrink the peaks these
statistics exist to see). docs/architecture.md "spectral-knn".
"""

from __future__ import annotations

import numpy as np

GROUPS = 16            # band groups (fewer when there are fewer mels)


def n_groups(n_mels: int) -> int:
    return min(GROUPS, n_mels)


def band_power(mel_db: np.ndarray) -> np.ndarray:
    """(..., frames, n_mels) log-mel in dB (the dcase log rule, 10 log10 power) ->
    (..., frames, groups): the mean linear power of each group of adjacent mels, float64."""
    power = np.power(10.0, np.asarray(mel_db, dtype=np.float64) / 10.0)
    n_mels = power.shape[-1]
    edges = np.linspace(0, n_mels, n_groups(n_mels) + 1).round().astype(int)
    return np.add.reduceat(power, edges[:-1], axis=-1) / np.diff(edges)
