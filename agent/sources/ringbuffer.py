"""Single-producer single-consumer float32 ring buffer between the audio callback and
the processing thread.

The PortAudio callback must never block or allocate, so the writer only copies into a
preallocated array and advances a counter. When the reader falls behind, the oldest
audio is overwritten; the reader notices on its next read and counts exactly how many
samples it lost. Positions are monotonic sample counters (Python ints, assigned
atomically under the GIL), which is what makes the lock-free hand-off safe.
"""

from __future__ import annotations

import threading

import numpy as np


class RingBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring buffer capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0   # total samples completely written (writer-owned)
        self._claimed = 0   # total samples the writer has started to write
        self._read = 0      # total samples consumed or counted lost (reader-owned)
        self._lost = 0      # samples overwritten before the reader got them
        self._ready = threading.Event()

    # -- writer side (audio callback) ----------------------------------------------------
    def write(self, samples: np.ndarray) -> None:
        """Copy ``samples`` in. Never blocks, never allocates a buffer."""
        n = samples.shape[0]
        if n == 0:
            return
        cap = self.capacity
        if n > cap:  # only the newest `cap` samples can be kept
            self._claimed = self._written = self._written + n - cap
            samples = samples[n - cap:]
            n = cap
        pos = self._written % cap
        self._claimed = self._written + n  # announce before touching the slots
        first = min(n, cap - pos)
        self._data[pos:pos + first] = samples[:first]
        if first < n:
            self._data[:n - first] = samples[first:]
        self._written = self._claimed
        self._ready.set()

    # -- reader side (processing thread) -------------------------------------------------
    @property
    def available(self) -> int:
        return min(self._written - self._read, self.capacity)

    @property
    def overflowed(self) -> int:
        """Samples lost so far, including those overwritten but not yet noticed."""
        return self._lost + max(0, self._written - self._read - self.capacity)

    @property
    def written(self) -> int:
        return self._written

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for unread audio (None: forever); True if there is
        some. Several rings written by one callback wait on the first one."""
        if self._written == self._read:
            self._ready.clear()
            if self._written == self._read:
                self._ready.wait(timeout)
        return self._written > self._read

    def read(self, max_samples: int | None = None, timeout: float | None = 0.0) -> np.ndarray:
        """Return up to ``max_samples`` of the oldest unread audio (a new array).

        Waits up to ``timeout`` seconds for data when none is there (None: forever).
        """
        if timeout != 0.0:
            self.wait(timeout)
        written = self._written
        cap = self.capacity
        if written - self._read > cap:  # overwritten before we got there
            self._lost += written - self._read - cap
            self._read = written - cap
        n = written - self._read
        if max_samples is not None:
            n = min(n, max_samples)
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        start = self._read
        pos = start % cap
        first = min(n, cap - pos)
        out = np.empty(n, dtype=np.float32)
        out[:first] = self._data[pos:pos + first]
        if first < n:
            out[first:] = self._data[:n - first]
        # The writer may have lapped us while we copied: drop what it (began to) overwrite.
        clobbered = self._claimed - cap - start
        if clobbered > 0:
            clobbered = min(clobbered, n)
            self._lost += clobbered
            out = out[clobbered:]
        self._read = start + n
        return out
