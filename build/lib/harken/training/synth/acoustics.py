"""Acoustic building blocks for the synthetic machines: tones that follow a drifting
shaft speed, coloured noise, structural resonances excited by impacts, the room, the
microphone and the factory background. Everything is vectorised numpy/scipy so a 10 s
clip renders in tens of milliseconds."""

from __future__ import annotations

import numpy as np
import scipy.signal

SR = 16000


def db(x: float) -> float:
    """Decibels to amplitude ratio."""
    return float(10.0 ** (x / 20.0))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def scale_to(x: np.ndarray, target_rms: float) -> np.ndarray:
    return x * (target_rms / rms(x))


def drift(n: int, rng: np.random.Generator, rel_std: float, corner_hz: float = 0.5) -> np.ndarray:
    """Slow random multiplicative wander around 1 (speed, load or flow fluctuation)."""
    k = max(4, int(n * corner_hz / SR) + 4)
    knots = rng.standard_normal(k) * rel_std
    return 1.0 + np.interp(np.arange(n), np.linspace(0, n - 1, k), knots)


def phase_of(freq: np.ndarray | float, n: int) -> np.ndarray:
    """Instantaneous phase (radians) of a tone whose frequency follows ``freq``."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return 2.0 * np.pi * np.cumsum(f) / SR


def harmonics(phase: np.ndarray, amps: np.ndarray, rng: np.random.Generator,
              f0: np.ndarray | float | None = None) -> np.ndarray:
    """Sum of k-th harmonics of ``phase`` with amplitudes ``amps[k-1]`` and random
    phases; harmonics that would pass Nyquist are left out."""
    out = np.zeros_like(phase)
    top = float(np.max(f0)) if f0 is not None else 0.0
    for k, a in enumerate(amps, start=1):
        if a == 0.0 or (f0 is not None and k * top >= 0.95 * SR / 2):
            continue
        out += a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def colored_noise(n: int, rng: np.random.Generator, slope_db_oct: float = -3.0) -> np.ndarray:
    """Gaussian noise with a power slope in dB per octave (-3: pink, -6: brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SR)
    f[0] = f[1]
    spec *= (f / 1000.0) ** (slope_db_oct / 20.0 / np.log10(2.0))
    return np.fft.irfft(spec, n)


def bandpass(x: np.ndarray, lo: float, hi: float, order: int = 4) -> np.ndarray:
    sos = scipy.signal.butter(order, [lo, min(hi, 0.98 * SR / 2)], btype="band", fs=SR,
                              output="sos")
    return scipy.signal.sosfilt(sos, x)


def highpass(x: np.ndarray, fc: float, order: int = 4) -> np.ndarray:
    return scipy.signal.sosfilt(scipy.signal.butter(order, fc, "high", fs=SR, output="sos"), x)


def lowpass(x: np.ndarray, fc: float, order: int = 4) -> np.ndarray:
    return scipy.signal.sosfilt(scipy.signal.butter(order, fc, "low", fs=SR, output="sos"), x)


def resonances(x: np.ndarray, freqs: list[float], q: float = 12.0) -> np.ndarray:
    """Structural modes: the sum of the input through narrow resonators (iirpeak)."""
    out = np.zeros_like(x)
    for f in freqs:
        b, a = scipy.signal.iirpeak(min(f, 0.95 * SR / 2), q, fs=SR)
        out += scipy.signal.lfilter(b, a, x)
    return out


def impulse_train(n: int, rate_hz: np.ndarray | float, rng: np.random.Generator,
                  jitter: float = 0.0, amp_jitter: float = 0.1) -> np.ndarray:
    """Impacts at ``rate_hz`` (may follow a drifting speed) with timing jitter (fraction
    of a period) and amplitude jitter: bearing defects, gear teeth, strokes."""
    phase = np.cumsum(np.broadcast_to(np.asarray(rate_hz, dtype=np.float64), (n,))) / SR
    phase += rng.uniform(0, 1)
    idx = np.nonzero(np.diff(np.floor(phase)) > 0)[0] + 1
    if jitter > 0 and idx.size:
        period = SR / float(np.mean(rate_hz))
        idx = idx + np.round(rng.normal(0, jitter * period, idx.size)).astype(int)
        idx = idx[(idx >= 0) & (idx < n)]
    out = np.zeros(n)
    np.add.at(out, idx, 1.0 + amp_jitter * rng.standard_normal(idx.size))
    return out


def burst(n_total: int, start: int, length: int, rng: np.random.Generator,
          decay_s: float = 0.01) -> np.ndarray:
    """A short decaying noise burst (a click, a clank) placed at ``start``."""
    out = np.zeros(n_total)
    length = max(1, min(length, n_total - start))
    if start >= n_total or start < 0:
        return out
    t = np.arange(length) / SR
    out[start:start + length] = rng.standard_normal(length) * np.exp(-t / decay_s)
    return out


# --- room, microphone, background --------------------------------------------------------
def room(x: np.ndarray, rng: np.random.Generator, rt60: float, wet: float) -> np.ndarray:
    """Exponentially decaying diffuse tail: a small hall or a machine room."""
    n_ir = int(rt60 * SR)
    t = np.arange(n_ir) / SR
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)
    ir = lowpass(ir, 5000.0, order=2)
    ir /= np.sqrt(np.sum(ir ** 2))
    tail = scipy.signal.fftconvolve(x, ir)[: x.size]
    return (1.0 - wet) * x + wet * tail


def microphone(x: np.ndarray, hp_hz: float, lp_hz: float, tilt_db_oct: float) -> np.ndarray:
    """Microphone and preamp: band limits and a spectral tilt (a different mic model or
    mounting position in the target domain)."""
    y = highpass(x, hp_hz, order=2)
    y = lowpass(y, lp_hz, order=2)
    if tilt_db_oct:
        b, a = _tilt_filter(tilt_db_oct)
        y = scipy.signal.lfilter(b, a, y)
    return y


def _tilt_filter(db_per_oct: float) -> tuple[np.ndarray, np.ndarray]:
    # First-order shelf around 1 kHz: a gentle tilt, enough to shift a mel spectrum.
    g = db(db_per_oct * 3.0)
    return scipy.signal.bilinear([g / (2 * np.pi * 1000.0), 1.0], [1.0 / (2 * np.pi * 1000.0), 1.0], fs=SR)


def factory_background(n: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Ambient noise of the hall: pink floor, mains hum of other equipment, distant
    machines and occasional impacts (tools, doors, forklifts)."""
    x = colored_noise(n, rng, -3.0 if kind != "hvac" else -5.0)
    mains = 50.0 if kind != "hall60" else 60.0
    hum = harmonics(phase_of(mains * drift(n, rng, 0.0005), n),
                    np.array([0.0, 0.6, 0.2, 0.3, 0.1, 0.15]), rng, mains)
    x = x / rms(x) + 0.4 * hum
    if kind in ("hall", "hall60", "workshop"):
        other = 25.0 + rng.uniform(-3, 3)
        x += 0.3 * harmonics(phase_of(other * drift(n, rng, 0.003), n),
                             0.5 ** np.arange(12), rng, other)
    n_events = rng.poisson({"hall": 2, "hall60": 2, "workshop": 5, "hvac": 0.5}.get(kind, 1)
                           * n / SR / 10)
    for _ in range(n_events):
        ev = burst(n, int(rng.integers(0, n)), int(0.2 * SR), rng, decay_s=rng.uniform(0.01, 0.06))
        x += rng.uniform(1.0, 4.0) * resonances(ev, list(rng.uniform(300, 4000, 3)), q=8)
    return x
