"""The web view's cost: `harken watch` with and without ``--web`` while 200 simulated agents
publish, side by side in one run.

The fleet is bench/bench_fleet.py's: each simulated agent the agent's real MQTT path (its
own MqttSink, durable outbox, paho client) replaying a real score stream, here paced as
agents run, one score per machine every ``--pace`` seconds (each at its own offset), stamped
when sent, against one Mosquitto. Beside it run several `harken watch` processes (stdout
not a terminal, no ``--json``; each its own ``--name``), all subscribed to the same fleet
at the same time: one without ``--web``, and one with ``--web 127.0.0.1:0`` for each number
of open pages in ``--pages``. A page is a thread of this bench reading ``/events`` over
plain HTTP and parsing every event as the page's script does (JSON.parse); with
``--browser`` one more watcher serves a real page in headless Chromium
(harken/testkit/browser.py), whose own CPU is measured too.

After ``--warmup`` seconds (every machine heard), over ``--seconds`` seconds: each watcher's
CPU (utime + stime from /proc/PID/stat, percent of one core), its resident memory (VmRSS at
the end, VmHWM its peak since start), the scores it handled per second (from the ``seq`` of
every row of its /fleet.json before and after; for the watcher without a page, the scores
the broker delivered to the bench's own subscriber, the same subscription), per page the
bytes and events per second received, and the size of the snapshot a page gets when it
opens. A page opened after a few minutes sees only those minutes of chart; the snapshot of
a full hour (every machine's 360 buckets) is built in this process from a fleet filled
through ``Fleet.handle``, and its encoded size, time to build, and the memory the fleet
holds are recorded too.

    .venv/bin/python bench/bench_web.py [--machines 200] [--seconds 60] [--pages 0 1 5]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, peak_rss_mb, positive, record  # noqa: E402
from bench.bench_fleet import PLANT_CONF, WORKERS, Plant, agents, cpu_seconds, \
    score_stream  # noqa: E402

HARKEN = ROOT / ".venv" / "bin" / "harken"


def rss_mb(pid: int) -> float | None:
    """VmRSS, the process's resident memory now."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants alive now (Chromium's renderer, GPU
    and utility processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError, IndexError):
            continue
        todo += children.get(p, [])
    return total


class Page(threading.Thread):
    """One open page: reads /events over plain HTTP, parses every event, counts bytes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.snapshot_bytes = 0
        self.snapshot_rows = 0
        self.bytes = self.events = self.rows = 0
        self.ended = False                           # the server closed the stream
        self.got_snapshot = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.start()

    def run(self) -> None:
        try:
            self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                              "Accept: text/event-stream\r\n\r\n".encode())
            f = self.sock.makefile("rb")
            while f.readline() not in (b"\r\n", b"\n", b""):     # the response's headers
                pass
            for line in f:
                self.bytes += len(line)
                if not line.startswith(b"data: "):
                    continue
                msg = json.loads(line[6:])
                if msg["type"] == "snapshot":
                    self.snapshot_bytes, self.snapshot_rows = len(line), len(msg["rows"])
                    self.got_snapshot.set()
                else:
                    self.events += 1
                    self.rows += len(msg["rows"])
        except OSError:
            pass
        self.ended = True

    def counts(self) -> tuple[int, int, int]:
        return self.bytes, self.events, self.rows

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass
class Watcher:
    """One `harken watch` process of the run."""
    label: str
    web: bool
    pages: int = 0
    browser: bool = False
    proc: subprocess.Popen | None = None
    port: int = 0
    readers: list[Page] = field(default_factory=list)
    chromium: object = None
    samples: list[float] = field(default_factory=list)   # VmRSS during the period

    def start(self, broker_port: int, i: int, seconds: float, err: Path) -> None:
        cmd = [str(HARKEN), "watch", "--broker", f"mqtt://harken@127.0.0.1:{broker_port}",
               "--name", f"bench-web-{i}", "--for", f"{seconds:g}"]
        from harken.testkit.mosquitto import PASSWORD
        self.err = err
        self.proc = subprocess.Popen(cmd + (["--web", "127.0.0.1:0"] if self.web else []),
                                     stdout=subprocess.DEVNULL, stderr=err.open("wb"),
                                     env={**os.environ, "HARKEN_MQTT_PASSWORD": PASSWORD})

    def wait_url(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.err.read_text(errors="replace").splitlines():
                if "web page at http://127.0.0.1:" in line:
                    self.port = int(line.rsplit(":", 1)[1].strip("/ \n").split("/")[0])
                    return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label}: harken watch ended:\n{self.err.read_text()}")
            time.sleep(0.2)
        raise SystemExit(f"{self.label}: no web page within {timeout:g} s:\n{self.err.read_text()}")

    def fleet(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/fleet.json", timeout=30) as r:
            return json.loads(r.read())


def handled(snapshot: dict) -> int:
    """Scores handled so far: the seq of every row (each agent's scores are numbered from 1)."""
    return sum(int(r["seq"] or 0) for r in snapshot["rows"])   # seq is text on the wire


def full_hour(machines: int) -> dict:
    """The snapshot a page gets after an hour of ``machines`` machines: built in this process
    through ``Fleet.handle`` (one score per 10-s bucket of the hour per machine)."""
    import threading as th
    import tracemalloc

    from harken.agent.plant.fleet import Fleet
    from harken.agent.plant.watch import HISTORY_S
    from harken.agent.plant.web.feed import Feed, encode
    tracemalloc.start()
    fleet = Fleet("harken", history_s=HISTORY_S, max_agents=max(1000, machines))
    now = time.time()
    # scores that vary as a real machine's do (a constant would make gzip's figure a lie)
    noise = np.random.default_rng(0).normal(0.0, 0.05, size=(360, machines))
    for step in range(360):
        ts = now - HISTORY_S + 10 * step + 5
        for m in range(machines):
            body = {"ts": ts, "seq": step + 1, "score": 0.5 + (m % 7) / 10 + float(noise[step, m]),
                    "threshold": 1.0,
                    "anomaly": False, "interval_s": 1.0, "model": "fan-ae-int8",
                    "backend": "tflite-int8", "status": "ok", "rms_dbfs": -30.0, "windows": 31,
                    "inference_ms": 1.0, "node": f"n{m:03d}", "machine": "fan", "replayed": False}
            fleet.handle(f"harken/n{m:03d}/fan/score", json.dumps(body).encode(), now=ts)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    feed = Feed(fleet, th.Lock(), lambda: [], HISTORY_S)
    import zlib
    t0 = time.process_time()
    with feed.lock:                   # what the watcher's messages wait for
        msg = feed.snapshot(now)
    t1 = time.process_time()
    data = encode(msg)                # outside the lock, once for the pages of one second
    t2 = time.process_time()
    packed = zlib.compress(data, 6, 31)
    return {"machines": machines, "snapshot_bytes": len(data), "snapshot_gzip_bytes": len(packed),
            "snapshot_ms": 1000 * (t1 - t0), "encode_ms": 1000 * (t2 - t1),
            "fleet_mb": held / 2 ** 20, "buckets": 360}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machines", type=positive, default=200)
    p.add_argument("--seconds", type=positive, default=60, help="the measured period")
    p.add_argument("--warmup", type=positive, default=20,
                   help="seconds of publishing before the period (every machine heard)")
    p.add_argument("--pace", type=float, default=1.0, help="seconds between a machine's scores")
    p.add_argument("--pages", type=int, nargs="+", default=[0, 1, 5],
                   help="a watcher with --web for each number of open pages")
    p.add_argument("--browser", action="store_true",
                   help="one more watcher, its page open in headless Chromium")
    args = p.parse_args()
    if not 0.1 <= args.pace <= 60 or any(not 0 <= n <= 30 for n in args.pages):
        p.error("--pace: expected 0.1 to 60 seconds; --pages: 0 to 30 each")
    began = time.monotonic()
    stream = score_stream()
    watchers = [Watcher("no --web", False)] + \
        [Watcher(f"--web, {n} page{'' if n == 1 else 's'}", True, n) for n in args.pages] + \
        ([Watcher("--web, 1 Chromium page", True, 0, True)] if args.browser else [])
    from harken.testkit.mosquitto import Broker
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "state").mkdir()
        broker = Broker(root, extra=PLANT_CONF)
        broker.start()
        lasts = args.warmup + args.seconds + 60
        for i, w in enumerate(watchers):
            w.start(broker.port, i, lasts + 60, root / f"watch-{i}.err")
        for w in watchers:
            if w.web:
                w.wait_url()
        plant = Plant(broker.port)
        ctx = mp.get_context("spawn")
        ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        nodes = [f"n{i:03d}" for i in range(args.machines)]
        groups = [nodes[i::WORKERS] for i in range(min(WORKERS, args.machines))]
        per_agent = math.ceil(lasts / args.pace)
        procs = [ctx.Process(target=agents, args=(broker.port, g, per_agent, stream,
                                                  root / "state", ready, go, done, args.pace))
                 for g in groups]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        go.set()
        time.sleep(args.warmup)
        web = [w for w in watchers if w.web]
        for w in web:
            rows = len(w.fleet()["rows"])
            if rows != args.machines:
                raise SystemExit(f"{w.label}: {rows} machines after the warm-up, not "
                                 f"{args.machines}: give a longer --warmup")
            w.readers = [Page(w.port) for _ in range(w.pages)]
            if w.browser:
                from harken.testkit.browser import Browser
                w.chromium = Browser()
                w.chromium.open(f"http://127.0.0.1:{w.port}/")
        for r in (r for w in web for r in w.readers):
            if not r.got_snapshot.wait(60):
                raise SystemExit("a page got no snapshot within 60 s")
        opened = {w.label: [(r.snapshot_bytes, r.snapshot_rows) for r in w.readers] for w in web}
        time.sleep(2)                       # the pages' first deltas
        before = {w.label: handled(w.fleet()) for w in web}
        pids = {w.label: w.proc.pid for w in watchers}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        browser0 = {w.label: tree_cpu_seconds(w.chromium.proc.pid) for w in web if w.chromium}
        counts0 = {w.label: [r.counts() for r in w.readers] for w in web}
        delivered0, t0 = plant.received, time.monotonic()
        while time.monotonic() < t0 + args.seconds:
            time.sleep(1.0)
            for w in watchers:
                w.samples.append(rss_mb(w.proc.pid) or math.nan)
        t1, delivered1 = time.monotonic(), plant.received
        cpu1 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        browser1 = {w.label: tree_cpu_seconds(w.chromium.proc.pid) for w in web if w.chromium}
        counts1 = {w.label: [r.counts() for r in w.readers] for w in web}
        rss = {k: (rss_mb(pid), peak_rss_mb(pid)) for k, pid in pids.items()}
        after = {w.label: handled(w.fleet()) for w in web}
        late = {}                           # the snapshot a page opened now gets
        for w in web:
            page = Page(w.port)
            t = time.monotonic()
            page.got_snapshot.wait(60)
            late[w.label] = (page.snapshot_bytes, page.snapshot_rows, time.monotonic() - t)
            page.close()
        span = t1 - t0
        rows = []
        for w in watchers:
            k = w.label
            got = [(b1 - b0, e1 - e0, r1 - r0) for (b0, e0, r0), (b1, e1, r1)
                   in zip(counts0.get(k, []), counts1.get(k, []))]
            row = {"watcher": k, "web": w.web, "pages": w.pages, "browser": w.browser,
                   "cpu_percent": 100 * (cpu1[k] - cpu0[k]) / span,
                   "rss_end_mb": rss[k][0], "rss_peak_mb": rss[k][1],
                   "rss_max_in_period_mb": max(w.samples),
                   "scores_per_s": (after[k] - before[k]) / span if w.web else
                   (delivered1 - delivered0) / span,
                   "scores_from": "its /fleet.json seq" if w.web else "broker to the bench",
                   "page_bytes_per_s": [b / span for b, _, _ in got],
                   "page_events_per_s": [e / span for _, e, _ in got],
                   "page_rows_per_event": [r / e if e else 0 for _, e, r in got],
                   "pages_dropped": sum(r.ended for r in w.readers),
                   "snapshot_at_open": opened.get(k, []),
                   "snapshot_late": late.get(k)}
            if w.chromium is not None:
                row["chromium_cpu_percent"] = 100 * (browser1[k] - browser0[k]) / span
                row["chromium_console_errors"] = len(w.chromium.console_errors())
                row["chromium_cards"] = w.chromium.evaluate(
                    "document.querySelectorAll('article.card').length")
            rows.append(row)
            extra = (f", pages {[round(b / 1024, 1) for b in row['page_bytes_per_s']]} kB/s"
                     if w.pages else "")
            print(f"{k:>24}: CPU {row['cpu_percent']:5.1f} % of a core, RSS "
                  f"{row['rss_end_mb']:.0f} MB (peak {row['rss_peak_mb']:.0f}), "
                  f"{row['scores_per_s']:.0f} scores/s{extra}")
        for w in watchers:
            for r in w.readers:
                r.close()
            if w.chromium is not None:
                w.chromium.close()
            w.proc.send_signal(signal.SIGINT)
        for w in watchers:
            try:
                w.proc.wait(60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        for proc in procs:
            proc.terminate()
            proc.join()
        plant.close()
        broker.stop()
    hour = full_hour(args.machines)
    print(f"a full hour of {args.machines} machines: snapshot {hour['snapshot_bytes'] / 1024:.0f} kB "
          f"built in {hour['snapshot_ms']:.0f} ms, the fleet holds {hour['fleet_mb']:.1f} MB")
    figures = {"machines": args.machines, "pace_s": args.pace, "seconds": span,
               "warmup_s": args.warmup, "workers": WORKERS,
               "scores_delivered_per_s": (delivered1 - delivered0) / span,
               "rows": rows, "full_hour": hour, "elapsed_s": time.monotonic() - began}
    command = " ".join(["bench/bench_web.py", *sys.argv[1:]])
    print(f"wrote {record('web', command, figures)} ({figures['elapsed_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
