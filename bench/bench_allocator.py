"""What training/allocator.py buys: the same `harken-train evaluate` of a MobileNetV2 run
(bench/_models.py, the bench corpus's fan test clips) with the raised glibc malloc
thresholds (the default) and with glibc's own (``MALLOC_TRIM_THRESHOLD_`` set to its
default value, which makes ``keep_freed_memory`` leave the process alone), alternated
so that both see the same machine state. Wall, user and system seconds of the child.

    .venv/bin/python bench/bench_allocator.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import record  # noqa: E402
from bench._models import CACHE, TRAIN, bundles, corpus  # noqa: E402

MODEL = "mobilenetv2-dual-0.5"
GLIBC_DEFAULT = {"MALLOC_TRIM_THRESHOLD_": "131072"}


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    bundles([MODEL])                       # trains the run once (cached)
    run = CACHE / "runs" / MODEL
    data = corpus()
    rows: dict[str, list[dict]] = {"raised thresholds (default)": [], "glibc defaults": []}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(TRAIN), "evaluate", str(run), "--data", str(data), "--out", tmp,
               "--no-baseline", "--no-plots", "--quiet", "--force"]
        for i in range(args.repeats):
            for label, env in (("raised thresholds (default)", {}),
                               ("glibc defaults", GLIBC_DEFAULT)):
                rows[label].append(timed(cmd, env))
                print(f"{label}, run {i + 1}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in rows[label][-1].items()), flush=True)
    best = {label: min(r, key=lambda x: x["wall_s"]) for label, r in rows.items()}
    speedup = best["glibc defaults"]["wall_s"] / best["raised thresholds (default)"]["wall_s"]
    print(f"speed-up {speedup:.2f}x")
    path = record("allocator", " ".join(["bench/bench_allocator.py", *sys.argv[1:]]),
                  {"model": MODEL, "runs": rows, "best": best, "speedup": speedup})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
