"""DC offset removal on the device, before the features (docs/agent.md "Audio health").

Cheap USB microphones often add a constant offset (0.05 of full scale is common). The
offset lands in the lowest FFT bins of every frame, which a model trained on offset-free
clips reads as an anomaly in every interval. The device subtracts it before the front end;
training clips, which carry none, are left as they are (the front end itself, shared with
training, is unchanged). bench/bench_dc_offset.py measures the effect on detection.

The offset is estimated as the mean of the last 10 s of audio (a causal moving average,
the expanding mean of what has arrived at the start of a stream), so a constant offset is
gone from the start and a drifting one followed within 10 s, and what remains above a
fraction of a hertz is kept. The 10 s are kept as the sums of 0.1-s blocks of the stream
(the oldest one fading out sample by sample as the current one fills), so a machine's
remover holds about 2 KB rather than 10 s of per-sample sums (2.5 MB), and each sample's
estimate depends only on its position in the stream, not on how it was chunked.
A wild sample (NaN, infinite or beyond twice full scale) is left out of the estimate: the
health check marks its interval invalid, and the next is scored as usual.
"""

from __future__ import annotations

import numpy as np

# beyond this a sample is damaged, not offset: it is left out of the estimate
_LIMIT = 2.0
# the mean over this long: the longer, the less of the audio's own lowest frequencies goes
# with the offset (bench/bench_dc_offset.py "stream": how much scores of offset-free audio
# move with a window of 1 s and of 10 s); a new offset is followed within this time
WINDOW_S = 10.0
# the window is kept as this many block sums (0.1 s each for 10 s), not as samples
BLOCKS = 100


class DCRemover:
    """Push float32 chunks of one stream in any sizes; each comes back with the running
    mean of the last ``seconds`` of audio subtracted. The output depends only on each
    sample's position in the stream, never on how the stream is cut into chunks (bit for
    bit: every sum is added up sample after sample in stream order).

    The window is kept as ``BLOCKS`` block sums, not as samples, so a remover costs a few
    KB whatever ``seconds`` is (64 machines on one device: docs/agent.md "Audio health"). A
    sample's window is its own block up to itself, the blocks before it, and of the oldest
    block the share still inside the window, taken at that block's mean: the oldest block
    fades out sample by sample as the current one fills, so the estimate moves smoothly
    (dropping it whole at each block boundary put a 10-Hz sawtooth into the lowest FFT
    bins). With one-sample blocks (a window under ``BLOCKS`` samples) it is the exact mean
    of the last ``span`` samples. Sums are float64: after a year of audio at full scale a
    window's mean is still right to 1e-9."""

    def __init__(self, rate: int, seconds: float = WINDOW_S) -> None:
        self.span = max(1, int(round(rate * seconds)))
        self.block = max(1, self.span // BLOCKS)
        self.n_blocks = self.span // self.block       # the window: this many blocks
        self.reset()

    def reset(self) -> None:
        """A new stream (the next recording): nothing of the last one is kept."""
        self._sums = np.zeros(self.n_blocks, dtype=np.float64)  # ring: completed blocks' sums
        self._counts = np.zeros(self.n_blocks, dtype=np.int64)  # and their sane samples
        self._done = 0                      # blocks completed since the stream began
        self._rest_sum, self._rest_n = 0.0, 0   # the ring but its oldest block
        self._part_sum, self._part_n = 0.0, 0   # the current block so far
        self._fill = 0                          # its samples so far

    @property
    def state_nbytes(self) -> int:
        """Bytes of array state one remover keeps (not growing with the window)."""
        return int(self._sums.nbytes + self._counts.nbytes)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float32)
        k = x.size
        if k == 0:
            return x
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore"):
            sane = np.abs(x64) <= _LIMIT                 # False for NaN and infinities too
        vals = np.where(sane, x64, 0.0)
        mean = np.empty(k, dtype=np.float64)
        i, b = 0, self.block
        while i < k:                                     # one pass per block touched
            n = min(b - self._fill, k - i)
            # the block's running sum, added sample after sample from its start (cumsum is
            # sequential): the same whatever chunk a sample came in
            sums = np.cumsum(np.r_[self._part_sum, vals[i:i + n]])[1:]
            counts = self._part_n + np.cumsum(sane[i:i + n])
            at = self._done % self.n_blocks              # the oldest block (zeros at first)
            share = (b - (self._fill + np.arange(1, n + 1))) / b     # its part still inside
            total = self._rest_sum + share * self._sums[at] + sums
            mean[i:i + n] = total / np.maximum(self._rest_n + share * self._counts[at] + counts,
                                               1)
            self._part_sum, self._part_n = float(sums[-1]), int(counts[-1])
            self._fill += n
            i += n
            if self._fill == b:                          # complete: it replaces the oldest
                self._sums[at], self._counts[at] = self._part_sum, self._part_n
                self._done += 1
                rest = np.arange(self.n_blocks) != self._done % self.n_blocks
                self._rest_sum = float(self._sums[rest].sum())
                self._rest_n = int(self._counts[rest].sum())
                self._part_sum, self._part_n, self._fill = 0.0, 0, 0
        return (x - mean).astype(np.float32)


def remove_dc(x: np.ndarray, rate: int) -> np.ndarray:
    """A whole recording through a fresh ``DCRemover`` (in one-second pieces, so an hour
    of audio needs no hour of float64): what the device does to the same audio."""
    dc = DCRemover(rate)
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate([dc.push(x[i:i + rate]) for i in range(0, len(x), rate)] or [x])
