"""Cepstrum branch: the real cepstrum of each frame, mean and spread over the interval.

What it exposes: families of evenly spaced lines (a gear mesh with its sidebands, the
harmonics of a pump's pulsation) and periodic impact trains, which spread over many
spectrum bins but gather into one quefrency peak at their period; its spread over frames
shows a periodicity that comes and goes. Quefrencies from QUEFRENCY (samples of 1/16 kHz):
0.5 ms to 8 ms (periods of 2 kHz down to 125 Hz), chosen on the tuning types among 1-32 ms
(31 Hz-1 kHz), 1-16 ms, 2-32 ms and 0.5-8 ms: the cepstrum branch alone scored official
0.633 with it against 0.596-0.606 with the others on the standard corpus
(bench/probe_branches.py, bench/results/branches-standard.json; docs/architecture.md
"spectral-knn's branches").

How: the inverse FFT of each frame's 513-bin log power spectrum (dB, the spectrum the
front end already appends), computed as the type-I DCT it is for a real even spectrum
(scipy.fft.dct, float32: c[q] = DCT-I(L)[q] / n_fft, what irfft(L, n_fft) gives), the
quefrency range kept; each window's row is the mean and standard deviation over its
frames, pooled over an interval's equal windows exactly (variance = mean of window
variances + variance of window means). Cost: one 513-point DCT per frame, about the
front end's forward FFT (bench/bench_features.py has the figures).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

QUEFRENCY = (8, 129)         # [first, last) quefrency sample, at 16 kHz: 0.5 ms .. 8 ms


def quefrencies(n_freqs: int) -> tuple[int, int]:
    """The range kept for a spectrum of ``n_freqs`` bins (clipped to its n_fft / 2 + 1)."""
    return min(QUEFRENCY[0], n_freqs - 1), min(QUEFRENCY[1], n_freqs)


def window_cepstrum(spectrum_db: np.ndarray) -> np.ndarray:
    """(n, frames, n_freqs) log power spectra (dB) -> (n, 2 * q) rows: mean, then standard
    deviation over each window's frames of the cepstrum's kept quefrencies."""
    s = np.asarray(spectrum_db, dtype=np.float32)
    lo, hi = quefrencies(s.shape[-1])
    c = scipy.fft.dct(s, type=1, axis=-1, overwrite_x=s is not spectrum_db)[..., lo:hi]
    mean = c.mean(axis=1)
    c -= mean[:, None, :]
    std = np.sqrt(np.einsum("nfq,nfq->nq", c, c) / c.shape[1])
    return np.concatenate([mean, std], axis=1) / (2.0 * (s.shape[-1] - 1))   # the DCT's scale


def pool_mean_std(rows: np.ndarray) -> np.ndarray:
    """The interval's mean and std over all frames (concatenated) from equal windows'
    (mean, std) rows."""
    r = np.asarray(rows, dtype=np.float64)
    v = r.shape[1] // 2
    means, stds = r[:, :v], r[:, v:]
    var = (stds ** 2).mean(axis=0) + means.var(axis=0)
    return np.concatenate([means.mean(axis=0), np.sqrt(np.maximum(var, 0.0))])
