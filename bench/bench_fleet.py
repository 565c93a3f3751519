"""A fleet of agents publishing to one Mosquitto, and one plant subscriber with a persistent
QoS 1 session: messages per second delivered, and messages lost, for N = 10, 50, 200.

Each simulated agent is the agent's real MQTT path: its own MqttSink (durable SQLite
outbox, paho client, PUBACK window; agent/sinks/mqtt/sink.py on publisher.py) replaying the score stream that
`harken run` made from a WAV file (the AE bundle over the bench corpus's fan audio, 1-s
report intervals), as fast as the sink takes it: accelerated, like a file source with
`realtime = false`. Running the model N times would only measure the model; one score
stream feeds every agent. The agents run in worker processes beside the broker and the
subscriber, all on this machine, so the figures are a floor for a broker on its own host.
Every fleet runs twice: with the plant broker setting (``max_queued_messages 0``: no limit
on what the broker queues for a subscriber) and with Mosquitto's defaults.

With ``--cluster`` the fleet (1,000 agents by default) runs on a 3-node nats-server cluster
instead (harken/testkit/cluster.py, the settings of docs/deploy.md "Many devices: a broker
cluster"), each agent listing the nodes rotated, paced (one score per agent every
``--pace`` seconds, stamped when made, so the sinks' publish latency means something),
twice: without and with node 0 SIGKILLed mid-run and restarted; the plant subscriber fails
over between nodes. Lost, duplicated, publish p99, each affected agent's reconnect time and
the brokers' CPU go into bench/results/fleet-cluster.json.

    .venv/bin/python bench/bench_fleet.py [--fleets 10 50 200] [--messages 20000]
    .venv/bin/python bench/bench_fleet.py --cluster [--agents 1000] [--messages 20000] [--pace 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import record  # noqa: E402
from bench._models import bundles, fan_audio  # noqa: E402

WORKERS = 4                 # processes the agents are spread over


def score_stream(seconds: int = 120):
    """The IntervalResults of a real pipeline run over ``seconds`` of fan audio."""
    from harken.agent.model.bundle import open_bundle
    from harken.agent.decision import Decision
    from harken.agent.pipeline import Pipeline
    from harken.agent.model.scorer import BundleScorer
    bundle = open_bundle(bundles(["ae"])["ae"])
    pipe = Pipeline(BundleScorer(bundle, 0, "onnx-int8"), Decision(bundle.threshold),
                    interval_s=1.0)
    x = fan_audio(seconds)
    return [r for i in range(0, len(x), 1600) for r in pipe.push(x[i:i + 1600])]


def agents(target: int | dict[str, list[str]], nodes: list[str], per_agent: int, stream,
           state: Path, ready, go, done, pace_s: float = 0.0) -> None:
    """One worker process: a MqttSink per node, all replaying the stream once ``go``: as
    fast as the sink takes it, or with ``pace_s`` one score per node every ``pace_s``
    seconds, stamped now, each node at its own offset in the period (as real agents are).
    ``target``: the one Mosquitto's port (password file), or each node's ``mqtt.brokers``
    list (a cluster: the list rotated per agent, docs/deploy.md "Many devices: a broker
    cluster"). The report also carries each node's connection times (wall clock, from its
    "connected to" log lines), its failover stats and its publish latencies."""
    import dataclasses
    import random

    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import MqttSink
    from harken.testkit.mosquitto import PASSWORD, USER
    if isinstance(target, int):
        settings = {n: MqttSection(enabled=True, host="127.0.0.1", port=target, username=USER,
                                   password=PASSWORD) for n in nodes}
    else:
        settings = {n: MqttSection(enabled=True, brokers=target[n]) for n in nodes}
    errors = []
    connects: dict[str, list[float]] = {n: [] for n in nodes}

    def log(node: str, m: str) -> None:
        if m.startswith("connected to"):
            connects[node].append(time.time())
        errors.append(m)

    sinks = [MqttSink(settings[n].model_copy(update={"client_id": f"harken-{n}"}), n, "fan",
                      state / f"{n}.db", log=lambda m, n=n: log(n, m)) for n in nodes]
    while not all(s.health()["mqtt_connected"] for s in sinks):
        time.sleep(0.05)
    ready.release()
    go.wait()

    def replay(sink: MqttSink) -> None:
        start = time.monotonic() + random.uniform(0, pace_s)
        for i in range(per_agent):
            now = {}
            if pace_s:
                time.sleep(max(0.0, start + i * pace_s - time.monotonic()))
                now = {"ts": time.time(), "arrived": time.monotonic()}
            sink.interval(dataclasses.replace(stream[i % len(stream)], seq=i + 1, event=None,
                                              **now))

    threads = [threading.Thread(target=replay, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # until the brokers have acknowledged everything (a sink's flush returns at once while
    # it has no connection: a cluster node's outage), at most 300 s
    deadline = time.monotonic() + 300
    while any(s.outbox.depth for s in sinks) and time.monotonic() < deadline:
        for s in sinks:
            s.publisher.flush(s.lane, 0.5)
        time.sleep(0.2)
    failover = {s.node: {"broker": s.publisher.broker, "changes": s.publisher.broker_changes}
                for s in sinks}
    for s in sinks:
        s.close(flush_s=300 if isinstance(target, int) else 5)
    latency = {s.node: s.publisher.take_latency_ms(s.lane) for s in sinks}
    done.put({"errors": [e for e in errors if not e.startswith("connected")],
              "connects": connects, "latency_ms": latency, "failover": failover,
              "unacknowledged": {n: unacknowledged_scores(state / f"{n}.db") for n in nodes}})


def unacknowledged_scores(db: Path) -> int:
    """Scores still in a closed sink's outbox: never acknowledged by a broker, so not
    handed over (the agent keeps them and sends them at its next connection)."""
    import sqlite3
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM messages WHERE kind = 'score'").fetchone()[0]
    finally:
        con.close()


class Plant:
    """The plant subscriber: persistent session, QoS 1, every score counted by (node, seq)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        from harken.testkit.mosquitto import PASSWORD, USER
        self.seen: set[tuple[str, int]] = set()
        self.received = 0
        self.first = self.last = 0.0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plant",
                             clean_session=False)
        self.c.username_pw_set(USER, PASSWORD)
        self.c.on_message = self._message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("harken/+/+/score", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _message(self, client, userdata, m) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.received += 1
        self.seen.add((m.topic.split("/")[1], json.loads(m.payload)["seq"]))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (/proc/PID/stat, clock ticks)."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# what a plant broker needs so that a subscriber falling behind a burst loses nothing:
# Mosquitto's default max_queued_messages (1000 per client) drops QoS 1 messages beyond it
PLANT_CONF = "max_queued_messages 0\n"


def fleet(n: int, total: int, stream, tmp: Path, conf: str) -> dict:
    from harken.testkit.mosquitto import Broker
    per_agent = max(1, total // n)
    root = tmp / f"fleet-{n}-{'plant' if conf else 'default'}"
    (root / "state").mkdir(parents=True)
    log = root / "mosquitto.log"                # Mosquitto says when it drops messages
    broker = Broker(root, extra=f"{conf}log_dest file {log}\nlog_type warning\n"
                                "log_type notice\n")
    broker.start()
    plant = Plant(broker.port)
    ctx = mp.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    nodes = [f"n{i:03d}" for i in range(n)]
    groups = [nodes[i::WORKERS] for i in range(min(WORKERS, n))]
    procs = [ctx.Process(target=agents, args=(broker.port, g, per_agent, stream,
                                              root / "state", ready, go, done)) for g in groups]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0, broker_cpu0 = time.monotonic(), cpu_seconds(broker.proc.pid)
    go.set()
    reports = [done.get() for _ in procs]
    for p in procs:
        p.join()
    expected = n * per_agent
    deadline = time.monotonic() + 60
    while len(plant.seen) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    broker_cpu = cpu_seconds(broker.proc.pid) - broker_cpu0
    plant.close()
    broker.stop()
    span = plant.last - t0
    row = {"agents": n, "broker": "plant" if conf else "default",
           "messages_per_agent": per_agent, "sent": expected,
           "received_unique": len(plant.seen), "received": plant.received,
           "lost": expected - len(plant.seen), "seconds": span,
           "messages_per_s": len(plant.seen) / span,
           "broker_cpu_percent": 100 * broker_cpu / span,
           "broker_logged_drops": sum("dropped" in line
                                       for line in log.read_text(errors="replace").splitlines()),
           "errors": sorted({e for r in reports for e in r["errors"]})}
    print(f"N={n:>3}, {row['broker']} Mosquitto config: {expected} scores, {row['lost']} lost, "
          f"{row['received'] - len(plant.seen)} duplicates, {row['messages_per_s']:.0f} msg/s "
          f"over {span:.1f} s, Mosquitto "
          f"{row['broker_cpu_percent']:.0f} % of a core, {row['broker_logged_drops']} drop "
          "notices in its log")
    return row


CLUSTER_WORKERS = 8         # processes the cluster fleet's agents are spread over
KILLED = 0                  # the node SIGKILLed mid-run; the plant subscriber starts on node 1
SCORES = "harken/+/+/score"


class ClusterPlant:
    """The plant subscriber on a cluster as docs/deploy.md "What a plant subscriber must
    set" says: fixed client id, clean session false, QoS 1; on a lost connection the next
    node of the list (paho reconnects to the host of the last ``connect_async``, as `harken
    watch` does); a refused QoS 1 subscription asked again. Every score counted by (node,
    seq)."""

    def __init__(self, urls: list[str], first: int = 0, client_id: str = "plant") -> None:
        import paho.mqtt.client as mqtt

        from harken.testkit.cluster import host_port
        self.urls, self.at = [host_port(u) for u in urls], first
        self.seen: set[tuple[str, int]] = set()
        self.received = self.refused = self.moves = 0
        self.first = self.last = 0.0
        self.cond, self.ready, self.closing = threading.Condition(), threading.Event(), False
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        self.c.on_connect, self.c.on_subscribe = self._connected, self._subscribed
        self.c.on_disconnect, self.c.on_message = self._lost, self._message
        self.c.on_connect_fail = lambda c, u: self._next(c)
        self.c.reconnect_delay_set(1, 2)
        self.c.connect(*self.urls[self.at], keepalive=10)
        self.c.loop_start()

    def _connected(self, client, userdata, flags, rc, props=None) -> None:
        if rc.is_failure:
            self.refused += 1       # nats-server 2.9 during an outage: asked again (next node)
        elif not flags.session_present:
            client.subscribe(SCORES, qos=1)
        else:
            self.ready.set()

    def _subscribed(self, client, userdata, mid, codes, props=None) -> None:
        if any(c.is_failure for c in codes):    # SUBACK 0x80: ask again
            self.refused += 1
            threading.Timer(0.5, lambda: client.subscribe(SCORES, qos=1)).start()
        else:
            self.ready.set()

    def _lost(self, client, userdata, flags, rc, props=None) -> None:
        if not self.closing:
            self._next(client)

    def _next(self, client) -> None:
        self.at = (self.at + 1) % len(self.urls)
        self.moves += 1
        client.connect_async(*self.urls[self.at], keepalive=10)

    def _message(self, client, userdata, m) -> None:
        now = time.monotonic()
        with self.cond:
            self.first = self.first or now
            self.last = now
            self.received += 1
            self.seen.add((m.topic.split("/")[1], json.loads(m.payload)["seq"]))
            self.cond.notify_all()

    def wait_seen(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.seen) >= count, timeout)

    def close(self) -> None:
        self.closing = True
        self.c.disconnect()
        self.c.loop_stop()


def cluster_fleet(n: int, per_agent: int, pace_s: float, stream, tmp: Path, kill: bool) -> dict:
    """``n`` agents over a 3-node nats-server cluster (harken/testkit/cluster.py, the tested
    settings), agent k listing the nodes rotated by k (docs/deploy.md), each publishing one
    score every ``pace_s`` seconds; with ``kill``, node KILLED is SIGKILLed once the plant
    has a third of the scores and restarted at two thirds."""
    import numpy as np

    from harken.testkit.cluster import NatsCluster
    root = tmp / f"cluster-{n}-{'kill' if kill else 'steady'}"
    (root / "state").mkdir(parents=True)
    with NatsCluster(root / "nats") as cluster:
        urls = cluster.urls
        plant = ClusterPlant(urls, first=1)
        assert plant.ready.wait(60), "the plant subscriber was not subscribed within 60 s"
        nodes = [f"n{i:04d}" for i in range(n)]
        brokers = {node: urls[k % 3:] + urls[:k % 3] for k, node in enumerate(nodes)}
        ctx = mp.get_context("spawn")
        ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        groups = [nodes[i::CLUSTER_WORKERS] for i in range(min(CLUSTER_WORKERS, n))]
        procs = [ctx.Process(target=agents, args=({g_n: brokers[g_n] for g_n in g}, g, per_agent,
                                                  stream, root / "state", ready, go, done, pace_s))
                 for g in groups]
        t_start = time.monotonic()
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        connected_s = time.monotonic() - t_start
        cpu = {i: cpu_seconds(cluster.procs[i].pid) for i in range(3)}
        spent = 0.0                     # CPU of the killed node's first process
        t0 = time.monotonic()
        go.set()
        expected = n * per_agent
        killed_at = restarted_s = None
        if kill:
            plant.wait_seen(expected // 3, per_agent * pace_s + 120)
            spent = cpu_seconds(cluster.procs[KILLED].pid) - cpu[KILLED]
            killed_at = time.time()
            cluster.kill(KILLED)
            plant.wait_seen(2 * expected // 3, per_agent * pace_s + 120)
            cpu[KILLED] = 0.0           # the restarted process counts from 0
            t = time.monotonic()
            try:
                cluster.restart(KILLED)
                restarted_s = time.monotonic() - t
            except AssertionError as exc:       # not ready within the kit's 60 s: said
                print(f"restart: {exc}")
        reports = [done.get() for _ in procs]
        for p in procs:
            p.join()
        left = sum(v for r in reports for v in r["unacknowledged"].values())
        complete = plant.wait_seen(expected - left, 120)
        broker_cpu = spent + sum(cpu_seconds(cluster.procs[i].pid) - cpu[i] for i in range(3))
        plant.close()
    span = plant.last - t0
    latency = np.array([x for r in reports for v in r["latency_ms"].values() for x in v])
    connects = {k: v for r in reports for k, v in r["connects"].items()}
    failover = {k: v for r in reports for k, v in r["failover"].items()}
    row = {"agents": n, "node_killed": kill, "messages_per_agent": per_agent, "pace_s": pace_s,
           "sent": expected, "unacknowledged": left, "acknowledged": expected - left,
           "received_unique": len(plant.seen), "received": plant.received,
           # acknowledged by a node (handed over) and never at the plant; a score still in
           # an outbox that the plant got anyway (its PUBACK lost with a node) is no loss
           "lost": max(0, expected - left - len(plant.seen)),
           "duplicates": plant.received - len(plant.seen),
           "complete_within_120_s": complete, "seconds": span, "fleet_connected_s": connected_s,
           "messages_per_s": len(plant.seen) / span,
           "broker_cpu_percent": 100 * broker_cpu / span,
           "publish_ms_median": float(np.percentile(latency, 50)) if latency.size else None,
           "publish_ms_p99": float(np.percentile(latency, 99)) if latency.size else None,
           "publish_ms_max": float(latency.max()) if latency.size else None,
           "published": int(latency.size),
           "plant_refused": plant.refused, "plant_moves": plant.moves,
           "broker_changes": sum(f["changes"] for f in failover.values()),
           "errors": sorted({e for r in reports for e in r["errors"]})[:20]}
    if kill:
        # the agents that were on the killed node: a "connected to" after the kill
        first_choice = [node for k, node in enumerate(nodes) if k % 3 == KILLED]
        back = sorted(min(t for t in connects[x] if t > killed_at) - killed_at
                      for x in first_choice if any(t > killed_at for t in connects[x]))
        row.update({"affected": len(first_choice), "reconnected": len(back),
                    "others_moved": sum(failover[x]["changes"] > 0 for x in nodes
                                        if x not in first_choice),
                    "still_on_killed_node": sum(failover[x]["broker"] == urls[KILLED][7:]
                                                and failover[x]["changes"] == 0
                                                for x in first_choice),
                    "reconnect_s_median": float(np.median(back)) if back else None,
                    "reconnect_s_max": back[-1] if back else None,
                    "restart_s": restarted_s})
    print(f"N={n} on 3 nats-server nodes, {'node killed' if kill else 'no kill'}: {expected} "
          f"scores, {left} never acknowledged, {row['lost']} lost, {row['duplicates']} "
          f"duplicates, publish p99 "
          f"{row['publish_ms_p99']} ms, broker {row['broker_cpu_percent']:.0f} % of a core"
          + (f", {row['reconnected']} of {row['affected']} reconnected (median "
             f"{row['reconnect_s_median']} s, max {row['reconnect_s_max']} s)" if kill else ""))
    return row


def cluster_main(args) -> None:
    from harken.testkit.cluster import NATS_SERVER, NatsCluster
    stream = score_stream()
    with tempfile.TemporaryDirectory() as tmp:
        # the same scores per agent in every fleet (--messages for the largest): the same
        # run time, the kill at the same point of it
        per_agent = max(1, args.messages // max(args.agents))
        rows = [cluster_fleet(n, per_agent, args.pace, stream, Path(tmp), kill)
                for n in args.agents for kill in (False, True)]
        probe = NatsCluster(Path(tmp) / "conf")       # the kit's settings, written, not started
        conf = (probe.node_dir(0) / "nats.conf").read_text()
    version = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout
    settings = "\n".join(x for x in conf[conf.index("mqtt {"):].splitlines() if "listen" not in x)
    figures = {"workers": CLUSTER_WORKERS, "nodes": 3, "engine": version.strip(),
               "mqtt_settings": " ".join(settings.split()), "killed_node": KILLED,
               "rows": rows, "target_lost": 0, "met": all(r["lost"] == 0 for r in rows)}
    command = " ".join(["bench/bench_fleet.py", *sys.argv[1:]])
    print(f"wrote {record('fleet-cluster', command, figures)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleets", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--messages", type=int, default=20000, help="scores per fleet in all")
    p.add_argument("--cluster", action="store_true", help="a fleet on a 3-node nats-server "
                   "cluster, with and without a node killed mid-run (record fleet-cluster)")
    p.add_argument("--agents", type=int, nargs="+", default=[1000],
                   help="--cluster: fleet sizes (default 1000)")
    p.add_argument("--pace", type=float, default=5.0, help="--cluster: seconds between one "
                   "agent's scores (default 5)")
    args = p.parse_args()
    if args.cluster:
        cluster_main(args)
        return
    stream = score_stream()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [fleet(n, args.messages, stream, Path(tmp), conf)
                for conf in (PLANT_CONF, "") for n in args.fleets]
    figures = {"workers": WORKERS, "plant_conf": PLANT_CONF, "rows": rows, "target_lost": 0,
               "met": all(r["lost"] == 0 for r in rows if r["broker"] == "plant")}
    command = " ".join(["bench/bench_fleet.py", *sys.argv[1:]])
    print(f"wrote {record('fleet', command, figures)}")


if __name__ == "__main__":
    main()
