"""A fleet on a 3-node broker cluster (harken/testkit/cluster.py: nats-server 2.9, the
settings docs/deploy.md "Many devices: a broker cluster" names) losing a node: 20 real
MqttSinks, each listing the nodes rotated (agent k starts on node k % 3), publish QoS 1
scores at a steady pace; the plant subscriber is `harken watch` with the three URLs in
--json mode (persistent session, QoS 1), connected first to the node that is SIGKILLed
mid-run and restarted later. Every (node, seq) must arrive; a duplicate may only be the
same score again (a QoS 1 re-delivery or the agent's replay of a row the dead node never
acknowledged); every agent of the dead node reconnects to another. A real `harken run`
process with ``mqtt.brokers`` moves to the next node when its first dies. Waits are on
events (log lines, stats, messages), never fixed sleeps; the reconnect times are printed,
not asserted (bench/bench_fleet.py --cluster measures them)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

from harken.agent.decision.records import IntervalResult
from harken.agent.sinks.mqtt.settings import MqttSection
from harken.agent.sinks.mqtt.sink import MqttSink
from harken.testkit.cluster import NatsCluster, open_subscriber, publish_all
from harken.testkit.files import write_agent_config
from harken.testkit.mosquitto import STARTED
from tests.helpers import collect_lines, gone, wait_for

AGENTS = 20
KILLED = 0                      # the node SIGKILLed: the watcher's first, agents 0, 3, 6 ...
PACE_S = 0.25                   # one score per agent every PACE_S seconds


def name(url: str) -> str:
    return url.removeprefix("mqtt://")


def result(seq: int) -> IntervalResult:
    return IntervalResult(ts=1000.0 + seq, seq=seq, score=seq / 1000, threshold=2.0,
                          anomaly=False, interval_s=2.0, model="m", backend="onnx", status="ok",
                          rms_dbfs=-20.0, windows=3, inference_ms=0.1)


class Pacer:
    """One thread giving every sink its next score every PACE_S seconds (a steady fleet)."""

    def __init__(self, sinks: list[MqttSink]) -> None:
        self.sinks, self.seq, self.stop = sinks, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(PACE_S):
            self.seq += 1
            for s in self.sinks:
                s.interval(result(self.seq))

    def halt(self) -> int:
        self.stop.set()
        self.thread.join(10)
        return self.seq


def watched(out: list[str]) -> dict[str, list[dict]]:
    """The watcher's score records by node, in arrival order (every one, duplicates too)."""
    got: dict[str, list[dict]] = defaultdict(list)
    for line in list(out):
        x = json.loads(line)
        if x["kind"] == "score":
            got[x["node"]].append(x["payload"])
    return got


def test_fleet_on_a_cluster_loses_no_score_when_a_node_dies(tmp_path):
    watch = None
    with NatsCluster(tmp_path / "nats") as cluster:
        u = cluster.urls
        # a retained marker: the watcher prints it once its subscription is in place
        assert publish_all(u[1], [("harken/marker/m/status", "online")], retain=True) == 1
        first = [u[KILLED]] + [x for i, x in enumerate(u) if i != KILLED]
        watch = subprocess.Popen(
            [sys.executable, "-m", "harken.agent.cli", "watch", *first, "--client-id",
             "plant-cluster", "--json", "--for", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = collect_lines(watch.stdout), collect_lines(watch.stderr)
        wait_for("the watcher subscribed", lambda: any('"marker"' in x for x in list(out)), 60)
        logs: list[list[str]] = [[] for _ in range(AGENTS)]
        nodes = [f"a{k:02d}" for k in range(AGENTS)]
        sinks = [MqttSink(MqttSection(enabled=True, brokers=u[k % 3:] + u[:k % 3],
                                      client_id=f"harken-{nodes[k]}"),
                          nodes[k], "fan", tmp_path / "state" / f"{nodes[k]}.db",
                          log=logs[k].append) for k in range(AGENTS)]
        pacer = None
        try:
            wait_for("every agent on its first node", lambda: all(
                s.publisher.broker == name(u[k % 3]) for k, s in enumerate(sinks)), 60)
            pacer = Pacer(sinks)
            wait_for("scores from every agent watched", lambda: len(
                [n for n, p in watched(out).items() if len(p) >= 4]) == AGENTS, 60)
            # the kill: the watcher's node and the first node of agents 0, 3, 6 ...
            killed_at = time.monotonic()
            cluster.kill(KILLED)
            moved = [k for k in range(AGENTS) if k % 3 == KILLED]
            back: dict[int, float] = {}

            def reconnected() -> bool:
                for k in moved:
                    h = sinks[k].health()
                    if k not in back and h["mqtt_connected"] and h["broker_changes"] >= 1 \
                            and h["broker"] not in (None, name(u[KILLED])):
                        back[k] = time.monotonic() - killed_at
                return len(back) == len(moved)
            wait_for("every agent of the dead node on another", reconnected, 90)
            for k in moved:
                assert any(m.startswith("connected to ") and "of 3)" in m
                           and name(u[KILLED]) not in m for m in logs[k]), logs[k]
            wait_for("the watcher on another node", lambda: any(
                "connected again to" in x for x in list(err)), 90)
            after = pacer.seq          # scores made after every agent is back: watched
            wait_for("the fleet watched after the kill", lambda: all(
                max((p["seq"] for p in ps), default=0) > after for ps in watched(out).values())
                and len(watched(out)) == AGENTS, 90)
            cluster.restart(KILLED)
            again = pacer.seq
            wait_for("the fleet watched after the restart", lambda: all(
                max((p["seq"] for p in ps), default=0) > again for ps in watched(out).values()),
                90)
            last = pacer.halt()
            for s in sinks:          # every score handed over (PUBACK) by some node
                s.publisher.flush(s.lane, 60)
            assert all(s.outbox.depth == 0 for s in sinks), [s.outbox.depth for s in sinks]
            expected = {(n, q) for n in nodes for q in range(1, last + 1)}
            wait_for("every (node, seq) watched", lambda: {
                (n, p["seq"]) for n, ps in watched(out).items() for p in ps} >= expected, 90)
        finally:
            if pacer is not None:
                pacer.halt()
            for s in sinks:
                s.close(flush_s=2)
            watch.send_signal(signal.SIGTERM)
            watch.wait(30)
        got = watched(out)
        seen = {(n, p["seq"]) for n, ps in got.items() for p in ps}
        assert seen == expected, sorted(seen - expected)[:5]      # nothing that was not sent
        duplicates = 0
        for n, ps in got.items():
            first_of: dict[int, dict] = {}
            for p in ps:
                same = {k: v for k, v in p.items() if k != "replayed"}
                if p["seq"] in first_of:
                    duplicates += 1          # only the same score again (QoS 1, a replay)
                    assert same == first_of[p["seq"]], (n, p, first_of[p["seq"]])
                else:
                    first_of[p["seq"]] = same
        print(f"\n{len(expected)} scores from {AGENTS} agents, {duplicates} duplicates; the "
              f"{len(moved)} agents of the dead node back after "
              + ", ".join(f"{back[k]:.1f}" for k in moved) + " s")
        assert watch.returncode == 0 and not any("Traceback" in x for x in list(err)), err
    assert all(gone(pid) for pid in cluster.pids), "a nats-server process was left behind"


def test_harken_run_moves_to_the_next_node_when_its_first_dies(tmp_path, ae_bundle, wav):
    """A real `harken run` with ``mqtt.brokers`` = the three nodes: on the first (its log
    and its stats say so); the first SIGKILLed: it says it connected to another node, its
    stats say that broker and a change, and its scores go on arriving."""
    with NatsCluster(tmp_path / "nats") as cluster:
        u = cluster.urls
        cfg = write_agent_config(
            tmp_path / "agent.toml",
            agent={"node": "n1", "machine": "fan", "state_dir": tmp_path / "state"},
            model={"bundle": ae_bundle, "artifact": "onnx-int8"},
            audio={"source": "file", "file": wav, "realtime": True, "loop": True},
            decision={"interval_s": 2, "threshold": 1e9},
            output={"stdout": False, "stats_s": 1},
            mqtt={"enabled": True, "brokers": u})
        sub, _ = open_subscriber(u[2], "read-n1", "harken/n1/fan/#")
        proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                                 str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        STARTED.append(proc)
        err = collect_lines(proc.stderr)

        def stats() -> list[dict]:
            return [json.loads(p) for t, p, _ in list(sub.messages) if t.endswith("/stats")]

        def scores() -> list[int]:
            return [json.loads(p)["seq"] for t, p, _ in list(sub.messages) if t.endswith("/score")]
        try:
            wait_for("on the first node", lambda: any(
                f"connected to {name(u[0])} (broker 1 of 3)" in x for x in list(err)), 90)
            wait_for("its stats say so", lambda: any(s.get("broker") == name(u[0])
                                                     for s in stats()), 60)
            wait_for("a score", lambda: scores(), 60)
            cluster.kill(0)
            seen = max(scores())
            wait_for("on another node", lambda: any(
                f"connected to {name(x)} (broker {i + 1} of 3)" in y
                for i, x in enumerate(u) if i for y in list(err)), 90)
            # at least one change: while a node is dead nats may refuse a CONNECT on a live
            # one too, and the agent then moves on once more (docs/deploy.md)
            wait_for(lambda: f"stats: the new broker, a change counted (last stats "
                     f"{[(s.get('broker'), s.get('broker_changes')) for s in stats()[-3:]]}, "
                     f"log {list(err)[-6:]})", lambda: any(
                s.get("broker") in (name(u[1]), name(u[2])) and s.get("broker_changes", 0) >= 1
                for s in stats()), 60)
            wait_for("scores go on", lambda: max(scores()) > seen, 60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            sub.close()
        assert not any("Traceback" in x for x in list(err)), err
    assert all(gone(pid) for pid in cluster.pids)
