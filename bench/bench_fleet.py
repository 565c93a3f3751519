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

    .venv/bin/python bench/bench_fleet.py [--fleets 10 50 200] [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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


def agents(port: int, nodes: list[str], per_agent: int, stream, state: Path, ready, go,
           done, pace_s: float = 0.0) -> None:
    """One worker process: a MqttSink per node, all replaying the stream once ``go``: as
    fast as the sink takes it, or with ``pace_s`` one score per node every ``pace_s``
    seconds, stamped now, each node at its own offset in the period (as real agents are)."""
    import dataclasses
    import random

    from harken.agent.config import MqttSection
    from harken.agent.sinks.mqtt.sink import MqttSink
    from harken.testkit.mosquitto import PASSWORD, USER
    settings = MqttSection(enabled=True, host="127.0.0.1", port=port, username=USER,
                           password=PASSWORD)
    errors = []
    sinks = [MqttSink(settings.model_copy(update={"client_id": f"harken-{n}"}), n, "fan",
                      state / f"{n}.db", log=lambda m: errors.append(m)) for n in nodes]
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
    for s in sinks:
        s.close(flush_s=300)        # waits until the broker has acknowledged everything
    done.put({"errors": [e for e in errors if not e.startswith("connected")]})


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleets", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--messages", type=int, default=20000, help="scores per fleet in all")
    args = p.parse_args()
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
