"""DC offset removal on the device, before the features (docs/agent.md "Audio health").

Cheap USB microphones often add a constant offset (0.05 of full scale is common). The
offset lands in the lowest FFT bins of every frame, which a model trained on offset-free
clips reads as an anomaly in every interval. The device subtracts it before the front end;
training clips, which carry none, are left as they are (the front end itself, shared with
training, is unchanged). bench/bench_dc_offset.py measures the effect on detection.

The offset is estimated as the mean of the last 10 s of audio (a causal moving average,
the expanding mean of what has arrived at the start of a stream), so a constant offset is
gone from the start and a drifting one followed within 10 s, and what remains above a
fraction of a hertz is kept. A wild sample (NaN, infinite or beyond twice full scale) is
left out of the estimate: the health check marks its interval invalid, and the next is
scored as usual.
"""

from __future__ import annotations

import numpy as np

# beyond this a sample is damaged, not offset: it is left out of the estimate
_LIMIT = 2.0
# the mean over this long: the longer, the less of the audio's own lowest frequencies goes
# with the offset (bench/bench_dc_offset.py "stream": how much scores of offset-free audio
# move with a window of 1 s and of 10 s); a new offset is followed within this time
WINDOW_S = 10.0


class DCRemover:
    """Push float32 chunks of one stream in any sizes; each comes back with the running
    mean of the last ``seconds`` of audio subtracted. The output does not depend on how
    the stream is cut into chunks (up to float rounding). A push costs in proportion to
    its chunk, not to the window: the running sum after each sample (float64: after a year
    of audio at full scale a window's mean is still right to 1e-9) is kept in a ring of
    the last ``seconds``, and a sample's window is the difference of two of them."""

    def __init__(self, rate: int, seconds: float = WINDOW_S) -> None:
        self.span = max(1, int(round(rate * seconds)))
        self.reset()

    def reset(self) -> None:
        """A new stream (the next recording): nothing of the last one is kept."""
        self._sums = np.zeros(self.span + 1, dtype=np.float64)   # ring: sum after g samples
        self._counts = np.zeros(self.span + 1, dtype=np.int64)   # and sane ones among them
        self._seen = 0                                           # g

    def push(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float32)
        k = x.size
        if k == 0:
            return x
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore"):
            sane = np.abs(x64) <= _LIMIT                 # False for NaN and infinities too
        ring, g = self.span + 1, self._seen
        sums = self._sums[g % ring] + np.cumsum(np.where(sane, x64, 0.0))     # after g+1..g+k
        counts = self._counts[g % ring] + np.cumsum(sane)
        # each new sample's window starts after sample max(0, i - span): from the ring, or
        # (a chunk longer than the window) from this chunk's own sums
        first = np.maximum(np.arange(g + 1, g + k + 1) - self.span, 0)
        old = first <= g
        before = np.where(old, self._sums[first % ring], sums[np.maximum(first - g - 1, 0)])
        n_before = np.where(old, self._counts[first % ring],
                            counts[np.maximum(first - g - 1, 0)])
        mean = (sums - before) / np.maximum(counts - n_before, 1)
        tail = slice(max(0, k - ring), k)                # only the last span + 1 are kept
        at = np.arange(g + 1, g + k + 1)[tail] % ring
        self._sums[at], self._counts[at] = sums[tail], counts[tail]
        self._seen = g + k
        return (x - mean).astype(np.float32)


def remove_dc(x: np.ndarray, rate: int) -> np.ndarray:
    """A whole recording through a fresh ``DCRemover`` (in one-second pieces, so an hour
    of audio needs no hour of float64): what the device does to the same audio."""
    dc = DCRemover(rate)
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate([dc.push(x[i:i + rate]) for i in range(0, len(x), rate)] or [x])
