"""Modulation branch: the envelope's modulation power spectrum per band group.

What it exposes: faults that live in how a band's level moves rather than in its mean
level: amplitude modulation at the rotation rate (unbalance, a rubbing blade, a cracked
gear tooth), slow impact trains and machine cycles. The classical vibration-analysis
envelope spectrum: a fault shows as a line. Clip-level means and spreads (the mel branch)
average such lines away.

How: per band group (bands.py) the frame-power envelope of a window (32 frames at 31.25
frames/s, about 1 s) is centred, Hann-tapered and Fourier-transformed; the power of the
lines 1 .. frames/2 (about 1 to 15.6 Hz) is divided by the squared tapered sum of the
envelope, i.e. it is the modulation depth, independent of the band's level. An
interval's statistic is the mean of its windows' (windows are equal in size, so the mean
of the windows is exact whatever chunks the audio came in), then log10. Centring, taper,
the lines' cosines and sines and the tapered sum are all linear in the envelope, so they
are one precomputed (frames, 2 lines + 1) matrix and one matrix product per interval
(cheaper than an FFT call per window and a centred, tapered copy: issue 39's cost goal,
bench/bench_features.py).
"""

from __future__ import annotations

import functools

import numpy as np

from harken.agent.features.bands import mean_weights

FLOOR = 1e-10          # below any measurable modulation depth (log10 -> -10)


def n_lines(frames: int) -> int:
    return frames // 2


@functools.lru_cache(maxsize=8)
def _transform(frames: int) -> np.ndarray:
    """(frames, 2 lines + 1): an envelope times it gives the real and imaginary parts of the
    centred, Hann-tapered envelope's DFT lines 1 .. lines, then its tapered sum."""
    t = np.arange(frames)
    taper = 0.5 - 0.5 * np.cos(2 * np.pi * t / frames)
    angle = 2 * np.pi * np.outer(t, np.arange(1, n_lines(frames) + 1)) / frames
    parts = np.concatenate([taper[:, None] * np.cos(angle), taper[:, None] * np.sin(angle)],
                           axis=1)
    parts -= parts.mean(axis=0)                   # centring the envelope, folded in
    return np.concatenate([parts, taper[:, None]], axis=1)


def window_modulation(env: np.ndarray) -> np.ndarray:
    """(n, frames, groups) band power of windows (bands.py ``band_power``) -> (n, groups *
    lines) modulation depths (line-major: all groups of line 1, then line 2 ...)."""
    env = np.asarray(env, dtype=np.float64)
    n, frames = env.shape[:2]
    lines = n_lines(frames)
    z = _transform(frames).T @ env                 # (n, 2 lines + 1, groups)
    power = z[:, :lines] ** 2 + z[:, lines:2 * lines] ** 2
    power /= np.maximum(z[:, 2 * lines:] ** 2, 1e-300)
    return power.reshape(n, -1)


def pool_modulation(rows: np.ndarray) -> np.ndarray:
    """The interval's (or clip's) vector from its windows' rows: log10 of their mean."""
    r = np.asarray(rows, dtype=np.float64)
    return np.log10(mean_weights(len(r)) @ r + FLOOR)
