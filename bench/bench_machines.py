"""One device, several machines: how the agent's cost grows with the machines it watches.

For N = 1, 2, 4, 8 and 16 machines and each model (the AE and MobileNetV2 int8 bundles),
one `harken run` listens to the first N channels of a 16-channel stream (a different
stretch of the bench corpus's fan audio on each channel) that this script writes to its
stdin as raw PCM at real-time pace, as a 16-channel audio interface delivers it: one input,
N pipelines and decisions, one shared backend, 10-s report intervals (the default), JSON
lines to a file. (A WAV file source would be memory-mapped, and its pages would count in
the RSS as the file is read.) CPU is the process's own CPU
time (utime + stime from /proc) over the run after a warm-up, as a percentage of one core;
memory is its peak RSS (VmHWM). Every point runs in this one invocation, so the curve is
measured side by side; the marginal cost per machine is the slope of a least-squares line.

    .venv/bin/python bench/bench_machines.py [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, peak_rss_mb, record  # noqa: E402
from bench._models import bundles, fan_audio  # noqa: E402
from harken.testkit.files import write_agent_config  # noqa: E402

HARKEN = ROOT / ".venv" / "bin" / "harken"
COUNTS = (1, 2, 4, 8, 16)
MODELS = {"ae": "ae", "mobilenetv2": "mobilenetv2-0.5"}   # label -> bench model (default width)
ARTIFACT = "tflite-int8"
TARGETS = {"cpu_percent_16": 15.0, "rss_mb_16": 250.0}
TICK = os.sysconf("SC_CLK_TCK")


RATE = 16000


def sixteen_channels(seconds: int) -> np.ndarray:
    """16-channel int16 frames: channel k is the fan audio started k * 7 s later."""
    x = fan_audio(seconds + 16 * 7, RATE)
    data = np.stack([x[k * 7 * RATE:k * 7 * RATE + seconds * RATE] for k in range(16)],
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


def run_point(folder: Path, bundle: Path, frames: np.ndarray, n: int, warmup: float) -> dict:
    """One `harken run` of N machines: CPU % of one core after the warm-up, peak RSS."""
    import threading
    folder.mkdir(parents=True)
    cfg = write_agent_config(
        folder / "agent.toml", agent={"node": "bench", "state_dir": folder / "state"},
        model={"bundle": bundle, "artifact": ARTIFACT, "threads": 1},
        audio={"source": "stdin", "pcm_format": "s16le", "channels": 16},
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
    cpu.axhline(TARGETS["cpu_percent_16"], color="red", ls="--", label="target at 16")
    rss.axhline(TARGETS["rss_mb_16"], color="red", ls="--", label="target at 16")
    for ax, what in ((cpu, "CPU, % of one core"), (rss, "peak RSS, MB")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(COUNTS, [str(c) for c in COUNTS])
        ax.set_xlabel("machines watched (channels of one input)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("harken run at real-time pace (16-channel PCM on stdin), int8 TFLite, "
                 "10-s report intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="audio per run (real time)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds of each run left out of the CPU figure (start-up)")
    args = p.parse_args()
    found = bundles(list(MODELS.values()))
    frames = sixteen_channels(args.seconds)
    rows: dict[str, list[dict]] = {label: [] for label in MODELS}
    with tempfile.TemporaryDirectory() as tmp:
        for n in COUNTS:                  # models alternate at each N: drift hits both alike
            for label, model in MODELS.items():
                point = run_point(Path(tmp) / f"{label}-{n}", found[model], frames, n,
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
    png = ROOT / "docs" / "img" / "machines-scale.png"
    plot(rows, png)
    at16 = {label: points[-1] for label, points in rows.items()}
    met = {label: {"cpu_percent_16": p["cpu_percent"] < TARGETS["cpu_percent_16"],
                   "rss_mb_16": p["peak_rss_mb"] < TARGETS["rss_mb_16"]}
           for label, p in at16.items()}
    record("machines", "bench/bench_machines.py", {
        "seconds": args.seconds, "warmup_s": args.warmup, "artifact": ARTIFACT,
        "interval_s": 10, "models": MODELS, "rows": rows, "fits": fits, "targets": TARGETS,
        "met": met, "plot": str(png.relative_to(ROOT))})


if __name__ == "__main__":
    main()
