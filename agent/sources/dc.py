"""DC offset removal on the device, before the features (docs/agent.md "Audio health").

Cheap USB microphones often add a constant offset (0.05 of full scale is common). The
offset lands in the lowest FFT bins of every frame, which a model trained on offset-free
clips reads as an anomaly in every interval. The device subtracts it before the front end;
training clips, which carry none, are left as they are (the front end itself, shared with
training, is unchanged). bench/bench_dc_offset.py measures the effect on detection.

The offset is estimated as the mean of the last second of audio (a causal moving average,
the expanding mean of what has arrived at the start of a stream), so a constant or slowly
drifting offset is gone within a second and what remains above about 1 Hz is kept. A
wild sample (NaN, infinite or beyond twice full scale) is left out of the estimate: the
health check marks its interval invalid, and the next is scored as usual.
"""

from __future__ import annotations

import numpy as np

# beyond this a sample is damaged, not offset: it is left out of the estimate
_LIMIT = 2.0


class DCRemover:
    """Push float32 chunks of one stream in any sizes; each comes back with the running
    mean of the last ``seconds`` of audio subtracted. The output does not depend on how
    the stream is cut into chunks (up to float rounding)."""

    def __init__(self, rate: int, seconds: float = 1.0) -> None:
        self.span = max(1, int(round(rate * seconds)))
        self.reset()

    def reset(self) -> None:
        """A new stream (the next recording): nothing of the last one is kept."""
        self._tail = np.zeros(0, dtype=np.float64)       # the last ``span`` samples

    def push(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float32)
        if x.size == 0:
            return x
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore"):
            sane = np.abs(x64) <= _LIMIT                 # False for NaN and infinities too
        ext = np.concatenate((self._tail, np.where(sane, x64, np.nan)))
        good = ~np.isnan(ext)
        sums = np.concatenate(([0.0], np.cumsum(np.where(good, ext, 0.0))))
        counts = np.concatenate(([0], np.cumsum(good)))
        end = np.arange(len(self._tail) + 1, len(ext) + 1)      # each new sample's window
        start = np.maximum(end - self.span, 0)
        n = counts[end] - counts[start]
        mean = (sums[end] - sums[start]) / np.maximum(n, 1)
        self._tail = ext[-self.span:]
        return (x - mean).astype(np.float32)


def remove_dc(x: np.ndarray, rate: int) -> np.ndarray:
    """A whole recording through a fresh ``DCRemover`` (in one-second pieces, so an hour
    of audio needs no hour of float64): what the device does to the same audio."""
    dc = DCRemover(rate)
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate([dc.push(x[i:i + rate]) for i in range(0, len(x), rate)] or [x])
