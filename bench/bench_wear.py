"""Wear: the bytes `harken run` writes to the disk per day per machine (an SD card wears out),
by component: what the default config writes (the seq reservation and whatever state the
default sinks keep, the feedback store among them where it is on), the MQTT outbox, evidence
audio, and the logs (the JSON lines on stdout, which the shipped systemd unit hands to the
journal). Goal: under 50 MB per day per machine at the default settings.

Each figure is the difference between runs that differ in one component, read from the
agent process's own ``/proc/self/io`` at its exit: ``write_bytes``, the bytes it caused to be
written to the storage layer (page-cache pages it dirtied; each fsync makes them clean, so a
page written again after a sync counts again), not counting file-system metadata or the
card's own erase-block amplification. Stdout goes to a pipe and is counted apart.

1. At real-time pacing (the outbox commits each message and deletes it on the broker's
   PUBACK as it would from a microphone), ``--realtime-s`` of the bench corpus's fan audio
   in 1-s report intervals (ten times the default rate: more intervals per second of bench),
   the default bundle's own threshold: without MQTT (the base: the default config) and
   publishing to a real Mosquitto on loopback (the outbox), each for a quarter of that and
   for all of it: the bytes per interval are the difference over the intervals between, so
   what a start writes once cancels out. Scaled to a day of the default 10-s intervals
   (8640).
2. As fast as possible with 10-s intervals, a decision that starts one anomaly event at the
   fifth interval (threshold -1e9, ``k_on = n = 5``: the 30 s before it are there), once with
   ``[evidence] enabled = true`` at its defaults and once without: the bytes of one event's
   evidence, and of its files as kept.

    .venv/bin/python bench/bench_wear.py [--bundle DIR] [--wav FILE] [--realtime-s 120]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import bundle_dir, positive, record  # noqa: E402

from harken.agent.sinks.evidence import EvidenceSection  # noqa: E402
from harken.testkit.files import write_agent_config  # noqa: E402
from harken.testkit.mosquitto import PASSWORD, USER, Broker  # noqa: E402

DAY_INTERVALS = 86400 // 10           # report intervals per day at the default 10 s
GOAL_MB_PER_DAY = 50.0
MB = 1e6

# the agent in a child process that prints its own /proc/self/io at exit (after every
# thread of the runner has ended and every file is closed)
CHILD = textwrap.dedent("""
    import sys
    from harken.agent.cli import main
    rc = main(["run", "--config", sys.argv[1], *sys.argv[3:]])
    with open(sys.argv[2], "w") as f:
        f.write(open("/proc/self/io").read())
    sys.exit(rc)
""")


def run(cfg: Path, intervals: int | None = None) -> dict:
    """One ``harken run``: its /proc io counters, stdout bytes, intervals and the state
    folder's files by kind (their sizes at the end)."""
    io = cfg.parent / "io.txt"
    more = ["--intervals", str(intervals)] if intervals else []
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(io), *more],
                          capture_output=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"harken run failed:\n{proc.stderr.decode()[-3000:]}")
    counters = dict(line.split(": ") for line in io.read_text().splitlines())
    lines = [json.loads(s) for s in proc.stdout.decode().splitlines() if s.startswith("{")]
    files: dict[str, int] = {}
    for p in (cfg.parent / "state").rglob("*"):
        if p.is_file():
            kind = p.relative_to(cfg.parent / "state").parts[0].split("-")[0].split(".")[0]
            files[kind] = files.get(kind, 0) + p.stat().st_size
    return {"write_bytes": int(counters["write_bytes"]), "wchar": int(counters["wchar"]),
            "stdout_bytes": len(proc.stdout), "stderr_bytes": len(proc.stderr),
            "intervals": sum(r.get("kind") == "score" for r in lines),
            "events": sum(r.get("kind") == "event" and r.get("type") == "start" for r in lines),
            "state_files": files}


def slope(runs: list[dict], key: str) -> float:
    """Bytes per interval between a short run and a long one (start-up cancels out)."""
    short, long = runs
    return (long[key] - short[key]) / (long["intervals"] - short["intervals"])


def config(folder: Path, bundle: Path, wav: Path, *, realtime: bool, interval_s: float,
           threshold: float, port: int | None = None, evidence: bool = False,
           k: int | None = None) -> Path:
    folder.mkdir(parents=True)
    sections: dict = {
        "agent": {"node": "bench", "machine": "fan", "state_dir": folder / "state"},
        "model": {"bundle": bundle, "threads": 1},
        "audio": {"source": "file", "file": wav, "realtime": realtime},
        "decision": {"interval_s": interval_s, "threshold": threshold,
                     **({"k_on": k, "n": k} if k else {})}}
    if port is not None:
        (folder / "secret").write_text(PASSWORD)
        (folder / "secret").chmod(0o600)
        sections["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": port,
                            "username": USER, "password_file": "secret"}
    if evidence:
        sections["evidence"] = {"enabled": True}
    return write_agent_config(folder / "agent.toml", **sections)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=bundle_dir, help="bundle to run (default: the default "
                   "detector's bench bundle, bench/_models.py)")
    p.add_argument("--wav", type=Path, help="normal audio, at least --realtime-s long (default: "
                   "the bench corpus's fan clips, looped)")
    p.add_argument("--realtime-s", type=positive, default=120,
                   help="seconds of each real-time run (default 120)")
    args = p.parse_args()
    # the record says paths as a reader of the repository runs it (relative to its root)
    root = str(Path(__file__).resolve().parent.parent) + "/"
    command = " ".join(["bench/bench_wear.py", *(a.replace(root, "") for a in sys.argv[1:])])
    if args.bundle is None:
        from bench._models import bundles
        args.bundle = bundles(["spectral-knn"])["spectral-knn"]
    if args.wav is None:
        from bench.bench_agent import long_wav
        args.wav = long_wav(max(240, args.realtime_s))
    threshold = float(json.loads((args.bundle / "manifest.json").read_text())
                      ["threshold"]["value"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # a first run writes Python's byte-code caches, which the agent does not on site
        run(config(root / "warm", args.bundle, args.wav, realtime=False, interval_s=10,
                   threshold=threshold))
        # 1. real time: the base (the default config) and the MQTT outbox, each at two
        # lengths, so that what a start writes once (the outbox's database) cancels out
        short = max(5, args.realtime_s // 4)
        base = [run(config(root / f"base-{n}", args.bundle, args.wav, realtime=True,
                           interval_s=1, threshold=threshold), n) for n in (short, args.realtime_s)]
        (root / "broker").mkdir()
        broker = Broker(root / "broker")
        broker.start()
        try:
            mqtt = [run(config(root / f"mqtt-{n}", args.bundle, args.wav, realtime=True,
                               interval_s=1, threshold=threshold, port=broker.port), n)
                    for n in (short, args.realtime_s)]
        finally:
            broker.stop()
        # 2. fast: one default-sized evidence event
        quiet = run(config(root / "event", args.bundle, args.wav, realtime=False,
                           interval_s=10, threshold=-1e9, k=5))
        heard = run(config(root / "evidence", args.bundle, args.wav, realtime=False,
                           interval_s=10, threshold=-1e9, k=5, evidence=True))
    if heard["events"] != 1 or quiet["events"] != 1:
        raise SystemExit(f"expected one anomaly event per evidence run, got {quiet['events']} "
                         f"and {heard['events']}")
    base_slope, mqtt_slope = slope(base, "write_bytes"), slope(mqtt, "write_bytes")
    day = {       # a difference below one page over the runs is noise: none
        "default config (seq, state of the default sinks)": base_slope * DAY_INTERVALS,
        "MQTT outbox": (mqtt_slope - base_slope) * DAY_INTERVALS,
        "logs (stdout JSON lines to the journal)": slope(base, "stdout_bytes") * DAY_INTERVALS,
    }
    event_bytes = heard["write_bytes"] - quiet["write_bytes"]
    kept_bytes = heard["state_files"].get("evidence", 0)
    day = {k: max(0.0, v) for k, v in day.items()}
    total = sum(day.values())
    figures = {
        "realtime_s": args.realtime_s, "interval_s_measured": 1, "day_intervals": DAY_INTERVALS,
        "runs": {"base": base, "mqtt": mqtt, "event": quiet, "evidence": heard},
        "start_bytes": {"base": base[0]["write_bytes"] - base_slope * base[0]["intervals"],
                        "mqtt": mqtt[0]["write_bytes"] - mqtt_slope * mqtt[0]["intervals"]},
        "mb_per_day": {k: v / MB for k, v in day.items()},
        "evidence_mb_per_event": event_bytes / MB, "evidence_kept_mb_per_event": kept_bytes / MB,
        "total_mb_per_day": total / MB, "goal_mb_per_day": GOAL_MB_PER_DAY,
        "events_within_goal": int(max(0.0, GOAL_MB_PER_DAY * MB - total) // max(event_bytes, 1)),
        # the most evidence written in any 24 h: its default cap (agent/sinks/evidence.py)
        "evidence_cap_mb_per_day": EvidenceSection().max_mb_per_day,
        "met": total / MB < GOAL_MB_PER_DAY,
    }
    for k, v in figures["mb_per_day"].items():
        print(f"{k}: {v:.2f} MB/day")
    print(f"evidence: {event_bytes / MB:.2f} MB written per event ({kept_bytes / MB:.2f} MB "
          f"kept); total without evidence {total / MB:.2f} MB/day (goal < {GOAL_MB_PER_DAY:g}); "
          f"{figures['events_within_goal']} evidence events a day fit within the goal")
    print(f"wrote {record('wear', command, figures)}")


if __name__ == "__main__":
    main()
