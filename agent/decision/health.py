"""Is this audio worth scoring? A dead, disconnected or saturated microphone must be
reported as such, never scored (an AE can call silence perfectly normal)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENT_DBFS = -90.0        # RMS below this: a muted, unplugged or dead microphone
CLIP_LEVEL = 0.999         # |sample| at or above this counts as clipped
CLIP_FRACTION = 1e-3       # more than 0.1 % clipped samples: saturated input


@dataclass(frozen=True)
class AudioCheck:
    status: str            # ok | silent | clipped | invalid
    rms_dbfs: float
    clipped_fraction: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_audio(x: np.ndarray, silent_dbfs: float = SILENT_DBFS,
                clip_fraction: float = CLIP_FRACTION, block: int = 1600) -> AudioCheck:
    """Status of one report interval of float samples in [-1, 1]. Silence is judged on
    the median level of ``block``-sample pieces (0.1 s at 16 kHz), so an interval in which
    the microphone died a moment after it began counts as silent."""
    if x.size == 0 or not np.isfinite(x).all():
        return AudioCheck("invalid", float("nan"), float("nan"))
    power = np.square(x, dtype=np.float64)
    dbfs = 10 * np.log10(max(float(power.mean()), 1e-24))
    n = max(1, x.size // block)
    blocks = power[:n * block].reshape(n, -1) if x.size >= block else power[None, :]
    median_dbfs = 10 * np.log10(max(float(np.median(blocks.mean(axis=1))), 1e-24))
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if clipped > clip_fraction:
        return AudioCheck("clipped", dbfs, clipped)
    if median_dbfs < silent_dbfs:
        return AudioCheck("silent", dbfs, clipped)
    return AudioCheck("ok", dbfs, clipped)
