"""Modulation branch: the envelope's modulation power spectrum per band group.

What it exposes: faults that live in how a band's level moves rather than in its mean
level: amplitude modulation at the rotation rate (unbalance, a rubbing blade, a cracked
gear tooth), slow impact trains and machine cycles. The classical vibration-analysis
envelope spectrum: a fault shows as a line. Clip-level means and spreads (the mel branch)
average such lines away.

How: per band group (bands.py) the frame-power envelope of a window (32 frames at 31.25
frames/s, about 1 s) is centred, Hann-tapered and transformed (scipy.fft.rfft); the power
of the lines 1 .. frames/2 (about 1 to 15.6 Hz) is divided by the squared tapered sum of
the envelope, i.e. it is the modulation depth, independent of the band's level. An
interval's statistic is the mean of its windows' (windows are equal in size, so the mean
of the windows is exact whatever chunks the audio came in), then log10. Cost: one 32-point
FFT per group and window (0.5 % of the front end's frame FFTs).
"""

from __future__ import annotations

import numpy as np
import scipy.fft


FLOOR = 1e-10          # below any measurable modulation depth (log10 -> -10)


def n_lines(frames: int) -> int:
    return frames // 2


def window_modulation(env: np.ndarray) -> np.ndarray:
    """(n, frames, groups) band power of windows (bands.py ``band_power``) -> (n, groups *
    lines) modulation depths (line-major: all groups of line 1, then line 2 ...)."""
    env = np.asarray(env, dtype=np.float64)
    frames = env.shape[1]
    taper = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frames) / frames)
    centred = (env - env.mean(axis=1, keepdims=True)) * taper[None, :, None]
    lines = scipy.fft.rfft(centred, axis=1)[:, 1:n_lines(frames) + 1]
    depth = np.abs(lines) ** 2 / np.maximum((env * taper[None, :, None]).sum(axis=1) ** 2,
                                            1e-300)[:, None, :]
    return depth.reshape(len(env), -1)


def pool_modulation(rows: np.ndarray) -> np.ndarray:
    """The interval's (or clip's) vector from its windows' rows: log10 of their mean."""
    return np.log10(np.asarray(rows, dtype=np.float64).mean(axis=0) + FLOOR)
