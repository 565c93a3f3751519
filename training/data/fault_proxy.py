"""Faint pseudo-faults mixed into normal audio: a label-free proxy for "would this detector
notice a real fault on this machine?" (docs/training.md "Choosing branches without labels").

The older proxy (training/data/pseudo_anomalies.py: other machine types and pink noise) is
so unlike a machine's own sound that every detector separates it (AUC 0.97-1.00), so it
cannot rank detectors. These are the faults that vibration analysis looks for, each added
to a held-out normal clip at a level well below the machine's own sound:

* ``impulses``: an impact train (bearing race or gear tooth defect) at 5-300 Hz with
  timing jitter, each impact ringing a random structural resonance;
* ``tone``: a new steady tonal line (whine, electrical or gear-mesh tone) with slow drift;
* ``sidebands``: one of the clip's own strongest spectral lines, amplitude-modulated at a
  rotation rate, so that lines appear at f +- f_mod (gear eccentricity, rotor bar faults);
* ``band_noise``: noise in a 1/3-1 octave band (leak hiss, cavitation, flow noise);
* ``modulation``: the whole clip amplitude-modulated at a rotation rate of 5-60 Hz
  (300-3600 rpm: imbalance, misalignment, a loose mount);
* ``transients``: a few short bursts or rattle clusters at random times (rubs, rattles,
  a loose part).

Level: the anomaly-to-normal ratio (ANR, dB) is the added sound's power over the clip's own
power in the added sound's band (``band_ratio``: power spectra weighted by the added sound's
spectrum; for broadband sound it is the plain energy ratio the synthetic corpus uses,
training/synth/corpus.py ANR_DB = -16..-4 dB). A whole-clip ratio would make a resonance
that rings where the machine is quiet obvious at -40 dB and one under the machine's loudest
band invisible at -10 dB, so the proxy would mix trivial and hopeless cases and say little.
The ranges in ``ANR_DB`` were set on the tuning types' training clips only (corpora/standard:
bearing, fan, gearbox, valve, as the issue 39 protocol allows; no validation or test type
was looked at): each kind alone was swept from -30 to 0 dB (``bench/probe_proxy.py --sweep``,
bench/results/probe-proxy-levels.json) and its range put where the default detector's AUC
for that kind runs from about 0.55 to 0.95, so the mixture lands in 0.6-0.9 instead of
saturating (docs/training.md "The pseudo-faults"). Narrow faults (a tone, sidebands) need
a level near or above their bin's own power before a 513-bin clip average moves; an
amplitude modulation of the whole sound is seen from about -20 dB (10 % depth).
Everything is seeded: the same clip, seed and kind give the same samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.signal

from harken.common.errors import DataError, UsageError

FAULT_KINDS = ("impulses", "tone", "sidebands", "band_noise", "modulation", "transients")

# ANR range (dB) per kind, over the clip's power in the fault's band (``band_ratio``); set on
# the tuning types (see the module docstring and docs/training.md).
ANR_DB: dict[str, tuple[float, float]] = {
    "impulses": (-28.0, -8.0),
    "tone": (0.0, 12.0),
    "sidebands": (-6.0, 6.0),
    "band_noise": (-10.0, 0.0),
    "modulation": (-26.0, -14.0),
    "transients": (-20.0, -8.0),
}

ROTATION_HZ = (5.0, 60.0)         # 300-3600 rpm
IMPACT_HZ = (5.0, 300.0)          # defect frequencies of bearings and gear teeth
MIN_SECONDS = 0.25                # shorter clips carry too little to mix a fault into
FFT_SIZE = 1024                   # band levels at the spectral-knn preset's resolution


@dataclass(frozen=True)
class FaultInfo:
    """What was mixed in: the kind, its level and the parameters drawn (for run.json)."""
    kind: str
    anr_db: float
    params: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int, order: int = 4) -> np.ndarray:
    nyq = sr / 2
    lo, hi = max(lo, 1.0), min(hi, 0.98 * nyq)
    if hi <= lo * 1.01:
        lo, hi = 0.9 * hi, hi
    sos = scipy.signal.butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")
    return scipy.signal.sosfilt(sos, x)


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Two-pole resonance: each impulse of ``x`` rings at ``freq`` and decays with the
    given -3 dB ``bandwidth`` (Hz), as a struck housing does."""
    r = np.exp(-np.pi * bandwidth / sr)
    a = [1.0, -2.0 * r * np.cos(2 * np.pi * freq / sr), r * r]
    return scipy.signal.lfilter([1.0], a, x)


def _impulses(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    n = len(x)
    rate = _loguniform(rng, *IMPACT_HZ)
    jitter = float(rng.uniform(0.0, 0.2))                 # fraction of a period
    period = sr / rate
    times = np.arange(rng.uniform(0, period), n, period)
    times = np.clip(times + rng.normal(0, jitter * period, len(times)), 0, n - 1).astype(int)
    train = np.zeros(n)
    np.add.at(train, times, rng.lognormal(0.0, 0.3, len(times)))
    freq = _loguniform(rng, 500.0, 0.75 * sr / 2)
    bw = _loguniform(rng, 30.0, 300.0)
    return _resonator(train, freq, bw, sr), {"rate_hz": rate, "jitter": jitter,
                                             "resonance_hz": freq, "bandwidth_hz": bw}


def _tone(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    n = len(x)
    freq = _loguniform(rng, 80.0, 0.75 * sr / 2)
    wander = 1.0 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * np.arange(n) / sr
                                  + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(freq * wander) / sr + rng.uniform(0, 2 * np.pi)
    return np.sin(phase), {"freq_hz": freq}


def _strongest_lines(x: np.ndarray, sr: int, count: int = 3) -> np.ndarray:
    """Frequencies (Hz) of the clip's most prominent spectral peaks (Welch average)."""
    f, p = scipy.signal.welch(x, sr, nperseg=min(len(x), 4096))
    logp = 10 * np.log10(p + 1e-20)
    peaks, props = scipy.signal.find_peaks(logp, prominence=0.0)
    keep = (f[peaks] > 20.0) & (f[peaks] < 0.9 * sr / 2)
    peaks, prom = peaks[keep], props["prominences"][keep]
    if len(peaks) == 0:
        return np.array([f[int(np.argmax(p[1:])) + 1]])
    return f[peaks[np.argsort(prom)[::-1][:count]]]


def _sidebands(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    line = float(rng.choice(_strongest_lines(x, sr)))
    fmod = _loguniform(rng, *ROTATION_HZ)
    width = max(2.0, 0.01 * line)
    carrier = _bandpass(x, line - width, line + width, sr, order=2)
    n = np.arange(len(x))
    added = carrier * np.cos(2 * np.pi * fmod * n / sr + rng.uniform(0, 2 * np.pi))
    return added, {"line_hz": line, "mod_hz": fmod}


def _band_noise(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    centre = _loguniform(rng, 150.0, 0.8 * sr / 2)
    octaves = float(rng.uniform(1 / 3, 1.0))
    lo, hi = centre * 2 ** (-octaves / 2), centre * 2 ** (octaves / 2)
    return _bandpass(rng.standard_normal(len(x)), lo, hi, sr), {"centre_hz": centre,
                                                                "octaves": octaves}


def _modulation(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    fmod = _loguniform(rng, *ROTATION_HZ)
    n = np.arange(len(x))
    return x * np.cos(2 * np.pi * fmod * n / sr + rng.uniform(0, 2 * np.pi)), {"mod_hz": fmod}


def _transients(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    n = len(x)
    seconds = n / sr
    events = max(1, int(rng.poisson(rng.uniform(0.3, 1.5) * seconds)))
    rattle = bool(rng.random() < 0.5)           # a cluster of clicks, else a rub (a burst)
    added = np.zeros(n)
    centre = _loguniform(rng, 400.0, 0.75 * sr / 2)
    for _ in range(events):
        start = int(rng.integers(0, n))
        if rattle:
            clicks = np.zeros(min(n - start, int(0.12 * sr)))
            if len(clicks) == 0:
                continue
            where = rng.integers(0, len(clicks), int(rng.integers(3, 9)))
            clicks[where] = rng.lognormal(0.0, 0.4, len(where))
            part = _resonator(clicks, centre * rng.uniform(0.8, 1.25), 200.0, sr)
        else:
            length = min(n - start, int(rng.uniform(0.02, 0.2) * sr))
            if length < 4:
                continue
            part = _bandpass(rng.standard_normal(length), centre / 1.5, centre * 1.5, sr) \
                * np.hanning(length)
        added[start:start + len(part)] += part
    return added, {"events": events, "rattle": rattle, "centre_hz": centre}


_RENDER = {"impulses": _impulses, "tone": _tone, "sidebands": _sidebands,
           "band_noise": _band_noise, "modulation": _modulation, "transients": _transients}


def check_levels(levels: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The ANR ranges per kind, refused in one line if a kind is unknown or a range is
    not (low <= high) within -80..+20 dB."""
    out = {}
    for kind, rng in levels.items():
        if kind not in _RENDER:
            raise UsageError(f"pseudo-fault kind {kind!r} is not one of {list(FAULT_KINDS)}")
        try:
            lo, hi = (float(v) for v in rng)
        except (TypeError, ValueError):
            raise UsageError(f"pseudo-fault level of {kind!r} = {rng!r}; expected (low, high) "
                             f"in dB") from None
        if not (-80.0 <= lo <= hi <= 20.0):
            raise UsageError(f"pseudo-fault level of {kind!r} = ({lo}, {hi}) dB; expected "
                             f"-80 <= low <= high <= 20")
        out[kind] = (lo, hi)
    return out


def mix_fault(clip: np.ndarray, sample_rate: int, rng: np.random.Generator | int,
              kind: str | None = None, anr_db: float | None = None,
              levels: Mapping[str, tuple[float, float]] = ANR_DB
              ) -> tuple[np.ndarray, FaultInfo]:
    """``clip`` with one pseudo-fault added: of ``kind`` (drawn from ``levels``' kinds when
    None), at ``anr_db`` (drawn from ``levels[kind]`` when None) over the clip's own power
    in the fault's band (``band_ratio``); the whole-clip ratio is in the info's params
    (``global_anr_db``). Same length, float32."""
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    x = np.asarray(clip, dtype=np.float64)
    if x.ndim != 1 or len(x) < MIN_SECONDS * sample_rate:
        raise DataError(f"a pseudo-fault needs a mono clip of at least {MIN_SECONDS} s, got "
                        f"shape {x.shape} at {sample_rate} Hz")
    if not np.all(np.isfinite(x)):
        raise DataError("a pseudo-fault needs finite samples; the clip has NaN or inf")
    level = _rms(x)
    if level <= 0.0:
        raise DataError("a pseudo-fault's level is relative to the clip's; the clip is silent")
    kinds = list(levels)
    kind = kinds[int(rng.integers(len(kinds)))] if kind is None else kind
    if kind not in _RENDER:
        raise UsageError(f"pseudo-fault kind {kind!r} is not one of {list(FAULT_KINDS)}")
    if anr_db is None:
        anr_db = float(rng.uniform(*levels[kind]))
    added, params = _RENDER[kind](x, sample_rate, rng)
    if not _rms(added) > 0.0:                   # nothing rendered (e.g. no event fitted)
        added, params = _band_noise(x, sample_rate, rng)
        kind = "band_noise"
    gain = np.sqrt(10 ** (anr_db / 10) / band_ratio(added, x, sample_rate))
    added = added * gain
    params["global_anr_db"] = 10 * np.log10(np.sum(added ** 2) / np.sum(x ** 2))
    return (x + added).astype(np.float32), FaultInfo(
        kind, float(anr_db), {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v)
                              for k, v in params.items()})


def band_ratio(added: np.ndarray, clip: np.ndarray, sample_rate: int) -> float:
    """The added sound's power over the clip's in the added sound's own band: the power
    spectra (Welch, the spectrum branch's 1024-point resolution) weighted by the added
    sound's spectrum, sum(Pa^2) / sum(Pa * Pclip). Broadband (white) added sound gives the
    plain energy ratio; a tone gives its level over the clip's power in its bin."""
    n = min(len(clip), FFT_SIZE)
    _, pa = scipy.signal.welch(np.asarray(added, dtype=np.float64), sample_rate, nperseg=n)
    _, px = scipy.signal.welch(np.asarray(clip, dtype=np.float64), sample_rate, nperseg=n)
    return float(np.sum(pa * pa) / max(float(np.sum(pa * px)), 1e-300))


def pseudo_faults(clips: Sequence[np.ndarray], sample_rate: int, seed: int = 0,
                  per_clip: int | Sequence[int] = 1, kinds: Sequence[str] | None = None,
                  levels: Mapping[str, tuple[float, float]] = ANR_DB
                  ) -> tuple[list[np.ndarray], list[FaultInfo], np.ndarray]:
    """``per_clip`` faulty copies of each clip (one number, or one per clip): kinds cycle
    through ``kinds`` (all of ``levels``' by default) so every kind is equally represented;
    each copy's draws come from its own generator (seed, clip position, copy), so a clip's
    copies do not depend on the other clips. Returns the copies, what was mixed in, and each
    copy's clip index."""
    levels = check_levels(levels)
    kinds = list(kinds or levels)
    for k in kinds:
        if k not in levels:
            raise UsageError(f"pseudo-fault kind {k!r} has no level; known: {list(levels)}")
    counts = [per_clip] * len(clips) if isinstance(per_clip, (int, np.integer)) else list(per_clip)
    if len(counts) != len(clips) or min(counts, default=1) < 1:
        raise UsageError(f"pseudo-faults per clip must be at least 1 for each of the "
                         f"{len(clips)} clips, got {per_clip}")
    out, infos, base = [], [], []
    for i, (x, n) in enumerate(zip(clips, counts)):
        for j in range(int(n)):
            rng = np.random.default_rng([seed, i, j])
            kind = kinds[(i * int(n) + j) % len(kinds)]
            mixed, info = mix_fault(x, sample_rate, rng, kind, levels=levels)
            out.append(mixed)
            infos.append(info)
            base.append(i)
    return out, infos, np.asarray(base, dtype=int)
