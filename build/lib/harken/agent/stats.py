"""Process health for the periodic stats record: CPU share, resident memory, uptime
(stdlib only: resource and /proc, no psutil on the device)."""

from __future__ import annotations

import os
import resource
import time


class ProcessStats:
    def __init__(self) -> None:
        self._t0 = self._t = time.monotonic()
        self._cpu = time.process_time()

    def sample(self) -> dict:
        """CPU percent of one core since the last sample, RSS now, uptime."""
        now, cpu = time.monotonic(), time.process_time()
        share = 100.0 * (cpu - self._cpu) / max(now - self._t, 1e-9)
        self._t, self._cpu = now, cpu
        return {"cpu_percent": round(share, 1), "rss_mb": round(rss_bytes() / 2 ** 20, 1),
                "uptime_s": round(now - self._t0, 1)}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):   # not Linux: the peak is what we can get
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
