"""One device, several machines: how the agent's cost grows with the machines it watches.

For N = 1, 8, 16, 32 and 64 machines and each bundle (today's default detector,
spectral-knn, as the bench model of bench/_models.py; others with `--model` or any exported
bundle with `--bundle`), one `harken run` listens to the first N channels of a 64-channel
stream (a different stretch of the bench corpus's fan audio on each channel) that this
script writes to its stdin as raw PCM at real-time pace, as a multi-channel audio interface
delivers it: one input, N pipelines and decisions, one shared backend, 10-s report
intervals (the default), JSON lines to a file. (A WAV file source would be memory-mapped,
and its pages would count in the RSS as the file is read.) CPU is the process's own CPU
time (utime + stime from /proc) over the run after a warm-up, as a percentage of one core;
memory is its peak RSS (VmHWM). Every point runs in this one invocation, so the curve is
measured side by side; the marginal cost per machine is the slope of a least-squares line.

    .venv/bin/python bench/bench_machines.py [--model spectral-knn ... | --bundle DIR ...]
        [--name LABEL] [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, bundle_dir, corpus_root, peak_rss_mb, positive, record  # noqa: E402
from bench._models import ARTIFACTS, bundles, fan_audio  # noqa: E402
from harken.agent.model.bundle import PREFERRED, open_bundle  # noqa: E402
from harken.testkit.files import write_agent_config  # noqa: E402

HARKEN = ROOT / ".venv" / "bin" / "harken"
COUNTS = (1, 8, 16, 32, 64)
CHANNELS = max(COUNTS)
TARGETS = {"machines": CHANNELS, "cpu_percent": 50.0, "rss_mb": 250.0}   # at the largest N
TICK = os.sysconf("SC_CLK_TCK")


RATE = 16000


def channels(seconds: int, n: int = CHANNELS) -> np.ndarray:
    """``n``-channel int16 frames: channel k is the fan audio started k * 7 s later."""
    x = fan_audio(seconds + n * 7, RATE)
    data = np.stack([x[k * 7 * RATE:k * 7 * RATE + seconds * RATE] for k in range(n)],
                    axis=1)
    return np.round(np.clip(data, -1, 1) * 32767).astype("<i2")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK       # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def feed(stdin, frames: np.ndarray) -> None:
    """Write ``frames`` in 0.1-s blocks at real-time pace, then close the stream."""
    block, start = RATE // 10, time.monotonic()
    try:
        for i in range(0, len(frames), block):
            wait = start + i / RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            stdin.write(frames[i:i + block].tobytes())
            stdin.flush()
    finally:
        stdin.close()


def run_point(folder: Path, bundle: Path, artifact: str, frames: np.ndarray, n: int,
              warmup: float) -> dict:
    """One `harken run` of N machines: CPU % of one core after the warm-up, peak RSS."""
    import threading
    folder.mkdir(parents=True)
    cfg = write_agent_config(
        folder / "agent.toml", agent={"node": "bench", "state_dir": folder / "state"},
        model={"bundle": bundle, "artifact": artifact, "threads": 1},
        audio={"source": "stdin", "pcm_format": "s16le", "channels": frames.shape[1]},
        decision={"interval_s": 10},
        output={"stdout": False, "file": folder / "out.jsonl", "stats_s": 3600},
        machines=[{"name": f"m{k:02d}", "channel": k} for k in range(1, n + 1)])
    with (folder / "stderr.txt").open("w") as err:
        proc = subprocess.Popen([str(HARKEN), "run", "--config", str(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        writer = threading.Thread(target=feed, args=(proc.stdin, frames), daemon=True)
        writer.start()
        start = time.monotonic()
        first = last = None
        peak = 0.0
        while proc.poll() is None:        # VmHWM only grows: the last reading is the peak
            now, cpu = time.monotonic(), cpu_seconds(proc.pid)
            peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
            if cpu is not None and now - start >= warmup:
                first = first or (now, cpu)
                last = (now, cpu)
            time.sleep(0.25)
    if proc.returncode:
        raise SystemExit(f"harken run failed:\n{(folder / 'stderr.txt').read_text()}")
    lines = [json.loads(s) for s in (folder / "out.jsonl").read_text().splitlines()]
    scored = {r["machine"] for r in lines if r["kind"] == "score" and r["score"] is not None}
    if len(scored) != n:
        raise SystemExit(f"{n} machines: only {sorted(scored)} scored")
    return {"machines": n, "cpu_percent": 100 * (last[1] - first[1]) / (last[0] - first[0]),
            "window_s": last[0] - first[0], "peak_rss_mb": peak,
            "intervals": sum(r["kind"] == "score" for r in lines)}


def plot(rows: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (cpu, rss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in rows.items():
        n = [p["machines"] for p in points]
        cpu.plot(n, [p["cpu_percent"] for p in points], "o-", label=label)
        rss.plot(n, [p["peak_rss_mb"] for p in points], "o-", label=label)
    at = f"target at {TARGETS['machines']}"
    cpu.axhline(TARGETS["cpu_percent"], color="red", ls="--", label=at)
    rss.axhline(TARGETS["rss_mb"], color="red", ls="--", label=at)
    for ax, what in ((cpu, "CPU, % of one core"), (rss, "peak RSS, MB")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(COUNTS, [str(c) for c in COUNTS])
        ax.set_xlabel("machines watched (channels of one input)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"harken run at real-time pace ({CHANNELS}-channel PCM on stdin), "
                 "10-s report intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=positive, default=60, help="audio per run (real time)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds of each run left out of the CPU figure (start-up)")
    p.add_argument("--model", choices=sorted(ARTIFACTS), action="append",
                   help="a bench model (bench/_models.py); repeat for several "
                   "(default: spectral-knn, today's default detector)")
    p.add_argument("--bundle", type=bundle_dir, action="append",
                   help="an exported bundle (its folder name labels it); repeat for several")
    p.add_argument("--artifact", choices=PREFERRED,
                   help="artifact of --bundle to run (default: the agent's preference)")
    p.add_argument("--name", help="the record's label: bench/results/machines-LABEL.json "
                   "(default: machines.json)")
    args = p.parse_args()
    if not 0 <= args.warmup < args.seconds - 5:
        p.error(f"--warmup {args.warmup:g}: expected at least 0 and below --seconds - 5 "
                f"({args.seconds - 5})")
    if args.name is not None and not re.fullmatch(r"[\w.-]{1,40}", args.name):
        p.error(f"--name {args.name!r}: expected 1 to 40 letters, digits, '_', '.' or '-'")
    models = args.model or ([] if args.bundle else ["spectral-knn"])
    found = bundles(models) if models else {}
    runs = {m: (found[m], ARTIFACTS[m]) for m in models}      # label -> (bundle, artifact)
    for b in args.bundle or []:
        runs[b.name] = (b, args.artifact or next(k for k in PREFERRED
                                                 if k in open_bundle(b).kinds))
    frames = channels(args.seconds)
    rows: dict[str, list[dict]] = {label: [] for label in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for n in COUNTS:                  # models alternate at each N: drift hits both alike
            for label, (bundle, artifact) in runs.items():
                point = run_point(Path(tmp) / f"{label}-{n}", bundle, artifact, frames, n,
                                  args.warmup)
                rows[label].append(point)
                print(f"{label:<12} {n:>2} machines: CPU {point['cpu_percent']:5.2f} % of one "
                      f"core, peak RSS {point['peak_rss_mb']:.0f} MB", flush=True)
    fits = {}
    for label, points in rows.items():
        n = np.array([q["machines"] for q in points], float)
        cpu_slope, cpu_base = np.polyfit(n, [q["cpu_percent"] for q in points], 1)
        rss_slope, rss_base = np.polyfit(n, [q["peak_rss_mb"] for q in points], 1)
        fits[label] = {"cpu_percent_per_machine": float(cpu_slope),
                       "cpu_percent_base": float(cpu_base),
                       "rss_mb_per_machine": float(rss_slope), "rss_mb_base": float(rss_base)}
        print(f"{label}: marginal {cpu_slope:.3f} % of one core and {rss_slope:.2f} MB per "
              f"machine")
    name = "machines" if args.name is None else f"machines-{args.name}"
    png = ROOT / "docs" / "img" / f"{name}-scale.png"
    plot(rows, png)
    at_most = {label: points[-1] for label, points in rows.items()}
    met = {label: {"cpu_percent": p["cpu_percent"] < TARGETS["cpu_percent"],
                   "rss_mb": p["peak_rss_mb"] < TARGETS["rss_mb"]}
           for label, p in at_most.items()}
    record(name, " ".join(["bench/bench_machines.py", *sys.argv[1:]]), {
        "seconds": args.seconds, "warmup_s": args.warmup, "channels": CHANNELS,
        "artifacts": {label: a for label, (_, a) in runs.items()},
        "bundles": {label: corpus_root(b) for label, (b, _) in runs.items()},
        "interval_s": 10, "rows": rows, "fits": fits, "targets": TARGETS,
        "met": met, "plot": str(png.relative_to(ROOT))})


if __name__ == "__main__":
    main()
