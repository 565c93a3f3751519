"""Keep freed memory in the process instead of handing it back to the kernel at once.

Training and scoring allocate and free tensors of a few to tens of MB for every batch.
glibc's defaults return such blocks to the kernel (mmap above a threshold, trimming the
heap top), so every batch faults its memory in again: on a 2-core machine the torch
methods spent more time in the kernel than in torch (system time above user time).
Raising the mmap and trim thresholds once
at start-up keeps the pages mapped; ``bench/bench_allocator.py`` measures the two side by
side. The same as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
environment, which a user's own setting still overrides (it is read first). No library
offers this; it is glibc's ``mallopt`` through ctypes (looked up in the process's own
symbols: no ``find_library``, which would run ``ldconfig`` at every start), and a no-op
elsewhere.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 1024 * 1024        # glibc's upper limit on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024      # keep up to 1 GiB of freed heap
TOP_PAD = 64 * 1024 * 1024               # grow the heap in 64 MiB steps


def keep_freed_memory() -> bool:
    """Set the thresholds (glibc only); True if they were set."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):          # not glibc (musl, macOS)
        return False
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD)))
