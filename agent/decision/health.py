"""Is this audio worth scoring? A dead, disconnected or saturated microphone must be
reported as such, never scored (an AE can call silence perfectly normal); a large DC
offset is reported with its value (the device removes it before the features:
agent/sources/dc.py, docs/agent.md "Audio health"). An interval partly at digital zero (a
dropout: the microphone or its cable cut out for a moment) is not scored either: its score
says nothing of the machine, and one such score put into a calibration's fit made the
threshold unreachable (docs/reliability.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENT_DBFS = -90.0        # RMS below this: a muted, unplugged or dead microphone
CLIP_LEVEL = 0.999         # |sample| at or above this counts as clipped
CLIP_FRACTION = 1e-3       # more than 0.1 % clipped samples: saturated input
DC_OFFSET_REPORT = 0.01    # |mean| at or above this (-40 dBFS) is reported as dc_offset
DROPOUT_FRACTION = 0.1     # this share of silent 0.1-s pieces or more (not most): a dropout


@dataclass(frozen=True)
class AudioCheck:
    status: str            # ok | silent | dropout | clipped | invalid
    rms_dbfs: float        # the level without the DC offset
    clipped_fraction: float
    dc_offset: float = 0.0  # the interval's mean, in full scale

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def large_dc_offset(self) -> bool:
        return bool(abs(self.dc_offset) >= DC_OFFSET_REPORT)

    def invalid(self) -> AudioCheck:
        """The same figures, marked invalid (features or score not finite)."""
        return AudioCheck("invalid", self.rms_dbfs, self.clipped_fraction, float("nan"))


def check_audio(x: np.ndarray, silent_dbfs: float = SILENT_DBFS,
                clip_fraction: float = CLIP_FRACTION, block: int = 1600) -> AudioCheck:
    """Status of one report interval of float samples in [-1, 1]. Silence is judged on
    the median level of ``block``-sample pieces (0.1 s at 16 kHz), so an interval in which
    the microphone died a moment after it began counts as silent, and without the DC
    offset, so a dead microphone that outputs a constant is silent too. Where fewer than
    half but at least ``DROPOUT_FRACTION`` of the pieces are silent, the interval is a
    ``dropout``: audio that cut out for a moment, not the machine's sound."""
    if x.size == 0 or not np.isfinite(x).all():
        return AudioCheck("invalid", float("nan"), float("nan"), float("nan"))
    dc = float(x.mean(dtype=np.float64))
    if not np.isfinite(dc):        # finite samples whose sum is not (1e308 and the like)
        return AudioCheck("invalid", float("nan"), float("nan"), float("nan"))
    n = max(1, x.size // block)
    blocks = x[:n * block].reshape(n, -1) if x.size >= block else x[None, :]
    # each block's level without its own mean: a constant is silence, and a silent block
    # stays silent beside loud ones
    levels = blocks.var(axis=1, dtype=np.float64)
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    return _judge(dc, float(x.var(dtype=np.float64)), levels, clipped, clip_fraction,
                  silent_dbfs)


def _judge(dc: float, var: float, levels: np.ndarray, clipped: float, clip_fraction: float,
           silent_dbfs: float) -> AudioCheck:
    """The status from an interval's figures (one rule for ``check_audio`` and
    ``IntervalAudio``)."""
    dbfs = 10 * np.log10(max(var, 1e-24))
    median_dbfs = 10 * np.log10(max(float(np.median(levels)), 1e-24))
    # each piece judged in dB as the median is, so the two agree at the threshold itself
    silent_share = float(np.mean(10 * np.log10(np.maximum(levels, 1e-24)) < silent_dbfs))
    if clipped > clip_fraction:
        return AudioCheck("clipped", dbfs, clipped, dc)
    if median_dbfs < silent_dbfs:
        return AudioCheck("silent", dbfs, clipped, dc)
    if silent_share >= DROPOUT_FRACTION:
        return AudioCheck("dropout", dbfs, clipped, dc)
    return AudioCheck("ok", dbfs, clipped, dc)


class IntervalAudio:
    """``check_audio`` of one interval fed piece by piece, keeping figures instead of the
    samples (64 machines on one device: agent/pipeline.py holds no interval of audio): per
    ``block``-sample piece its level, and the count, mean and spread of all (merged as
    Chan et al.'s pairwise update), so the figures equal ``check_audio``'s up to float
    rounding (1e-12)."""

    def __init__(self, block: int = 1600) -> None:
        self.block = block
        self.n = 0                           # samples so far
        self._mean, self._m2 = 0.0, 0.0      # of the samples in completed pieces
        self._levels: list[float] = []
        self._clipped = 0
        self._finite = True
        self._part = np.empty(0, np.float32)  # the piece being filled

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not x.size:
            return
        self.n += x.size
        self._finite = self._finite and bool(np.isfinite(x).all())
        if not self._finite:
            return                           # invalid whatever follows
        self._clipped += int(np.count_nonzero(np.abs(x) >= CLIP_LEVEL))
        x = np.concatenate([self._part, x]) if self._part.size else x
        n = x.size // self.block
        for piece in x[:n * self.block].reshape(n, -1) if n else ():
            self._merge(piece)
            self._levels.append(float(piece.var(dtype=np.float64)))
        self._part = x[n * self.block:].copy()

    def _merge(self, x: np.ndarray) -> None:
        before = len(self._levels) * self.block
        mean = float(x.mean(dtype=np.float64))
        m2 = float(x.var(dtype=np.float64)) * x.size
        delta, total = mean - self._mean, before + x.size
        self._mean += delta * x.size / total
        self._m2 += m2 + delta * delta * before * x.size / total

    def check(self, silent_dbfs: float = SILENT_DBFS,
              clip_fraction: float = CLIP_FRACTION) -> AudioCheck:
        """The interval's status, as ``check_audio`` of its samples."""
        nan = float("nan")
        if self.n == 0 or not self._finite:
            return AudioCheck("invalid", nan, nan, nan)
        levels = self._levels
        mean, m2, done = self._mean, self._m2, len(levels) * self.block
        if self._part.size:                  # the tail: in the figures, not a piece of its own
            p = self._part
            pm, pm2 = float(p.mean(dtype=np.float64)), float(p.var(dtype=np.float64)) * p.size
            delta = pm - mean
            mean += delta * p.size / self.n
            m2 += pm2 + delta * delta * done * p.size / self.n
            if not levels:                   # shorter than a piece: it is the one piece
                levels = [float(p.var(dtype=np.float64))]
        if not np.isfinite(mean):
            return AudioCheck("invalid", nan, nan, nan)
        return _judge(mean, m2 / self.n, np.array(levels), self._clipped / self.n,
                      clip_fraction, silent_dbfs)
