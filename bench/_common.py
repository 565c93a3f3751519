"""Shared by the bench scripts: one-thread settings, timing, machine description, and
writing results that bench/report.py turns into docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def pin_one_thread() -> None:
    """Re-exec with single-threaded BLAS/OpenMP unless already so (must run before numpy)."""
    if any(os.environ.get(k) != v for k, v in ONE_THREAD.items()):
        os.environ.update(ONE_THREAD)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def cpu_seconds(fn, repeats: int = 7) -> float:
    """Median CPU time of ``fn`` (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import scipy
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__}


def record(name: str, command: str, figures: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"name": name, "command": command, "when": dt.datetime.now(dt.timezone.utc)
            .isoformat(timespec="seconds"), "machine": machine(), **figures}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
