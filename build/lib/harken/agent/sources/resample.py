"""Polyphase resampling of a stream in chunks, for inputs that cannot run at the model's rate."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


class StreamResampler:
    """Polyphase resampling of a stream in chunks (scipy.signal.resample_poly per block).

    resample_poly alone would treat every chunk as a whole signal and click at the
    borders, so each block is processed with ``context`` input samples of history on
    both sides and only its middle is kept: the output equals resampling the whole stream
    (as if preceded by silence, up to float rounding); it trails the input by ``context``
    input samples.
    """

    def __init__(self, from_rate: int, to_rate: int, context: int | None = None) -> None:
        ratio = Fraction(to_rate, from_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        # resample_poly's default filter spans 10 * max(up, down) taps at the high rate,
        # i.e. 10 * max(up, down) / up input samples on each side
        need = math.ceil(10 * max(self.up, self.down) / self.up) + 1
        self.context = int(math.ceil((context or need) / self.down) * self.down)
        self._buf = np.zeros(self.context, dtype=np.float64)     # leading silence

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        usable = (len(self._buf) - 2 * self.context) // self.down * self.down
        if usable <= 0:
            return np.zeros(0, np.float32)
        block = self._buf[:usable + 2 * self.context]
        import scipy.signal          # only when resampling: a second to import (features.py)
        y = scipy.signal.resample_poly(block, self.up, self.down)
        c = self.context * self.up // self.down
        out = y[c:c + usable * self.up // self.down]
        self._buf = self._buf[usable:]
        return out.astype(np.float32)
