"""The mel filter bank (Slaney or HTK scale, Slaney area norm), as librosa builds it."""

from __future__ import annotations

import math

import numpy as np

from harken.agent.features.spec import FeatureSpec, MelScale

def hz_to_mel(freqs: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    f = np.asarray(freqs, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, logstep = 200.0 / 3.0, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    mels = f / f_sp
    log_region = f >= min_log_hz
    return np.where(log_region, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz)
                    / logstep, mels)


def mel_to_hz(mels: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    m = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3.0, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), as librosa.filters.mel."""
    fft_freqs = np.fft.rfftfreq(spec.n_fft, d=1.0 / spec.sample_rate)
    mel_edges = np.linspace(hz_to_mel(spec.fmin, spec.mel_scale),
                            hz_to_mel(spec.fmax, spec.mel_scale), spec.n_mels + 2)
    hz_edges = mel_to_hz(mel_edges, spec.mel_scale)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if spec.mel_norm == "slaney":  # equal area per filter
        weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return weights
