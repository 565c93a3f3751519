"""Polyphase resampling, of a whole recording or of a stream in chunks, for inputs that
cannot run at the model's rate (docs/agent.md "Other sample rates")."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np

# The anti-aliasing low-pass: flat to 97.5 % of the lower Nyquist rate, 80 dB down at
# 102.5 %. scipy's default (10 zero crossings, Kaiser beta 5) rolls off from about 90 %,
# which takes the top mel bands (7.2 to 8 kHz at 16 kHz) and made a 48-kHz copy of a
# recording score 10 % higher than the 16-kHz original; this one keeps it within 0.1 %.
PASS_EDGE, STOP_EDGE, STOP_DB = 0.975, 1.025, 80.0


@lru_cache(maxsize=8)
def lowpass(up: int, down: int) -> np.ndarray:
    """Kaiser-windowed sinc for resampling by ``up / down`` (coefficients at the
    up-sampled rate, unit gain at DC): designed with numpy (the formulas of Kaiser's
    window design, as scipy.signal.kaiserord) and cached per ratio."""
    nyq = max(up, down)                       # the lower Nyquist rate, at the up-sampled rate
    width = (STOP_EDGE - PASS_EDGE) / nyq * math.pi           # radians per sample
    n = int(math.ceil((STOP_DB - 7.95) / (2.285 * width))) | 1    # odd: a centred filter
    beta = 0.1102 * (STOP_DB - 8.7)
    fc = (PASS_EDGE + STOP_EDGE) / 2 / nyq   # of the up-sampled Nyquist rate
    t = np.arange(n) - (n - 1) / 2
    h = fc * np.sinc(fc * t) * np.kaiser(n, beta)
    h /= h.sum()
    h.setflags(write=False)
    return h


def ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    """``(up, down)``: the exact rational ratio in lowest terms."""
    r = Fraction(int(to_rate), int(from_rate))
    return r.numerator, r.denominator


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x`` resampled by ``up / down`` with ``lowpass``: scipy.signal.resample_poly
    (upfirdn, polyphase) given this filter instead of its default."""
    import scipy.signal          # only when resampling: a second to import (features.py)
    return scipy.signal.resample_poly(x, up, down, window=lowpass(up, down))


class StreamResampler:
    """Polyphase resampling of a stream in chunks (``resample_poly`` per block).

    resample_poly alone would treat every chunk as a whole signal and click at the
    borders, so each block is processed with ``context`` input samples of history on
    both sides and only its middle is kept: the output equals resampling the whole stream
    (as if preceded by silence, up to float rounding); it trails the input by ``context``
    input samples, and by up to ``block_s`` more: blocks shorter than that are held back,
    as each call costs about a filter's length whatever its size (10-ms blocks at 44.1 kHz
    cost ten times the resampling itself; docs/agent.md "Other sample rates").
    """

    def __init__(self, from_rate: int, to_rate: int, context: int | None = None,
                 block_s: float = 0.1) -> None:
        self.up, self.down = ratio(from_rate, to_rate)
        self.min_block = max(1, math.ceil(block_s * from_rate / self.down)) * self.down
        # half the filter, at the up-sampled rate, in input samples on each side
        need = math.ceil(len(lowpass(self.up, self.down)) / 2 / self.up) + 1
        self.context = int(math.ceil((context or need) / self.down) * self.down)
        self._buf = np.zeros(self.context, dtype=np.float64)     # leading silence

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        usable = (len(self._buf) - 2 * self.context) // self.down * self.down
        if usable < self.min_block:
            return np.zeros(0, np.float32)
        block = self._buf[:usable + 2 * self.context]
        y = resample_poly(block, self.up, self.down)
        c = self.context * self.up // self.down
        out = y[c:c + usable * self.up // self.down]
        self._buf = self._buf[usable:]
        return out.astype(np.float32)
