"""Cepstrum branch: the real cepstrum of the interval's log spectrum, its mean and its
spread over the interval's windows.

What it exposes: families of evenly spaced lines (a gear mesh with its sidebands, the
harmonics of a pump's pulsation) and periodic impact trains, which spread over many
spectrum bins but gather into one quefrency peak at their period; its spread over the
interval's windows (about 1 s each) shows a periodicity that comes and goes. Quefrencies
from QUEFRENCY (samples of 1/16 kHz): 0.5 ms to 8 ms (periods of 2 kHz down to 125 Hz),
chosen on the tuning types among 1-32 ms (31 Hz-1 kHz), 1-16 ms, 2-32 ms and 0.5-8 ms:
the cepstrum branch alone scored official 0.633 with it against 0.596-0.606 with the
others on the standard corpus (spread over frames; spread over windows, as now: 0.618
against 0.557-0.573) (bench/probe_branches.py, bench/results/branches-standard.json;
docs/architecture.md "spectral-knn's branches").

How, and why so: the cepstrum is the inverse FFT of the 513-bin log power spectrum (dB,
the spectrum the front end already appends), i.e. for a real even spectrum its type-I
DCT (c[q] = DCT-I(L)[q] / n_fft, what irfft(L, n_fft) gives): a LINEAR map. So the mean
over frames of the frames' cepstra is the cepstrum of the mean spectrum, and each
window's mean cepstrum is the cepstrum of the window's mean spectrum, which the window
moments already carry (the model's ``moments`` output). The branch is therefore one small
matrix product per interval (its windows' mean spectra times the kept quefrencies' DCT
rows) instead of one 513-point transform per frame: about 1/300 of the cost. Until
2026-12-05 the spread was taken over frames; a per-frame transform costs at least a
full-rate matrix product (0.7x the front end's own FFT, bench/bench_features.py), which
broke issue 39's cost goal, so the spread is now over windows (the window means'
standard deviation: a periodicity that comes and goes at the window's scale, not frame to
frame). Both are exact functions of an interval's equal windows, however it was chunked.
"""

from __future__ import annotations

import functools

import numpy as np

from harken.agent.features.bands import mean_weights

QUEFRENCY = (8, 129)         # [first, last) quefrency sample, at 16 kHz: 0.5 ms .. 8 ms


def quefrencies(n_freqs: int) -> tuple[int, int]:
    """The range kept for a spectrum of ``n_freqs`` bins (clipped to its n_fft / 2 + 1)."""
    return min(QUEFRENCY[0], n_freqs - 1), min(QUEFRENCY[1], n_freqs)


@functools.lru_cache(maxsize=8)
def _dct_rows(n_freqs: int, lo: int, hi: int) -> np.ndarray:
    """(n_freqs, hi - lo): spectrum @ it = the cepstrum's quefrencies lo..hi-1 (the type-I
    DCT scaled by 1 / n_fft, n_fft = 2 (n_freqs - 1)), float64."""
    n = n_freqs - 1
    k = np.arange(n_freqs)[:, None]
    m = 2.0 * np.cos(np.pi * k * np.arange(lo, hi)[None, :] / max(n, 1))
    m[0] /= 2.0
    m[-1] /= 2.0
    return m / (2.0 * max(n, 1))


@functools.lru_cache(maxsize=8)
def _dct_rows32(n_freqs: int, lo: int, hi: int) -> np.ndarray:
    return _dct_rows(n_freqs, lo, hi).astype(np.float32)


def cepstrum_of(spectrum_db: np.ndarray) -> np.ndarray:
    """(..., n_freqs) log power spectra (dB) -> (..., q) their cepstra at the kept
    quefrencies (what ``np.fft.irfft(spectrum, 2 (n_freqs - 1))[..., lo:hi]`` gives)."""
    s = np.asarray(spectrum_db, dtype=np.float64)
    lo, hi = quefrencies(s.shape[-1])
    return s @ _dct_rows(s.shape[-1], lo, hi)


def pool_cepstrum(spectrum_means: np.ndarray) -> np.ndarray:
    """The interval's vector from its equal windows' mean log spectra (n, n_freqs): the
    mean cepstrum over all its frames (exact: the cepstrum is linear), then the standard
    deviation of the windows' mean cepstra.

    One float32 product (half a float64 one's cost) of the interval's mean spectrum less
    its mean level (a constant spectrum has no cepstrum above quefrency 0, so this changes
    nothing but the rounding) and the windows' deviations from that mean spectrum: small
    numbers, no cancellation; float64 from there."""
    s = np.asarray(spectrum_means, dtype=np.float64)
    lo, hi = quefrencies(s.shape[-1])
    mean = mean_weights(len(s)) @ s
    rows = np.empty((len(s) + 1, s.shape[-1]), np.float32)
    np.subtract(s, mean, out=rows[1:])
    np.subtract(mean, mean.mean() if lo > 0 else 0.0, out=rows[0])
    c = (rows @ _dct_rows32(s.shape[-1], lo, hi)).astype(np.float64)
    return np.concatenate([c[0], np.sqrt(np.einsum("nq,nq->q", c[1:], c[1:]) / len(s))])
