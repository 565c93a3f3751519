"""Which clustered MQTT broker keeps the agent's contract (docs/mqtt.md) when a node dies?

Issue 43 names two engines in Debian's packages: nats-server 2.9 (MQTT gateway on JetStream)
and rabbitmq-server 3.10 (MQTT plugin). This probe starts each as a 3-node cluster on
loopback (its own ports and data folders under a temporary folder, started and stopped
from here; an engine that is not installed is reported as skipped) in two configurations,
the engine's defaults and the settings docs/deploy.md "Many devices: a broker cluster"
names, and checks with paho clients:

- MQTT 5 accepted, or 3.1.1 only;
- a retained ``status`` taken by node 0 seen from node 1 (exact topic, and ``<prefix>/#``),
  and from node 2 after node 0 was SIGKILLed;
- a Last Will when the client dies (SIGKILL of the client process) and when its node dies;
- how many connections and QoS 1 subscriptions a node of the cluster refuses during the
  outage (each asked again, as a plant subscriber must);
- a persistent-session QoS 1 subscriber (fixed client id, clean_session false) whose node is
  SIGKILLed, reconnecting to another node: how many of the messages published meanwhile it
  gets;
- a Sparkplug ``spBv1.0/...`` topic crossing nodes unchanged.

    .venv/bin/python bench/probe_cluster.py        # writes bench/results/cluster-probe.json

bench/report.py renders the record into docs/benchmarks.md and docs/deploy.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import record  # noqa: E402
from harken.testkit.cluster import (NATS_SERVER, Collector, NatsCluster, free_ports,  # noqa: E402
                                    mqtt_answers, open_subscriber, publish_all)

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
BURST = 20            # messages published while the persistent subscriber's node is down
WAIT_S = 15.0         # how long a check waits for a message that may never come


class RabbitCluster:
    """rabbitmq-server 3.10 nodes r0..rN-1@localhost in ``root``: their own epmd (a child
    of this process on a free port, not the system's), AMQP, distribution and MQTT ports,
    Mnesia and log folders, one Erlang cookie (``HOME``); nodes 1.. join node 0 with
    ``rabbitmqctl join_cluster``. ``tuned``: the MQTT plugin's Sparkplug setting and a
    policy that mirrors the MQTT subscription queues on every node (ha-mode all)."""

    def __init__(self, root: Path, nodes: int = 3, tuned: bool = False) -> None:
        self.root, self.n, self.tuned = root, nodes, tuned
        ports = free_ports(4 * nodes + 1)
        self.mqtt_ports, self.amqp_ports = ports[:nodes], ports[nodes:2 * nodes]
        self.dist_ports, self.ctl_ports = ports[2 * nodes:3 * nodes], ports[3 * nodes:4 * nodes]
        self.epmd_port = ports[-1]
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.epmd: subprocess.Popen | None = None
        (root / ".erlang.cookie").write_text("HARKENCLUSTERPROBE")
        (root / ".erlang.cookie").chmod(0o400)
        (root / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        for i in range(nodes):
            d = root / f"r{i}"
            (d / "log").mkdir(parents=True, exist_ok=True)
            (d / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{self.amqp_ports[i]}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_ports[i]}\n"
                "mqtt.allow_anonymous = true\n"
                + ("mqtt.sparkplug = true\n" if tuned else ""))

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{p}" for p in self.mqtt_ports]

    def env(self, i: int) -> dict:
        d = self.root / f"r{i}"
        return {**os.environ, "HOME": str(self.root), "ERL_EPMD_PORT": str(self.epmd_port),
                "RABBITMQ_NODENAME": f"r{i}@localhost", "RABBITMQ_NODE_PORT": str(self.amqp_ports[i]),
                "RABBITMQ_DIST_PORT": str(self.dist_ports[i]),
                "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_ports[i]),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_ports[i]),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_PID_FILE": str(d / "pid")}

    def ctl(self, i: int, *args: str, timeout: float = 120) -> str:
        r = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", f"r{i}@localhost", *args],
                           env=self.env(i), capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on r{i}: {r.stderr.strip()[-400:]}")
        return r.stdout

    def _spawn(self, i: int) -> None:
        log = open(self.root / f"r{i}" / "server.out", "ab")
        try:
            self.procs[i] = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(i),
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        finally:
            log.close()

    def _wait_node(self, i: int, timeout: float = 180) -> None:
        """Until node ``i`` has booted (await_startup fails at once while the node has not
        registered with epmd yet, so it is asked again)."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.procs[i]
            if p is None or p.poll() is not None:
                raise RuntimeError(f"rabbitmq node r{i} exited: see {self.root / f'r{i}'}")
            try:
                self.ctl(i, "await_startup", "--timeout", "60", timeout=90)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def start(self) -> RabbitCluster:
        try:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(self.n):
                self._spawn(i)
            for i in range(self.n):
                self._wait_node(i)
            for i in range(1, self.n):
                self.ctl(i, "stop_app")
                self.ctl(i, "join_cluster", "r0@localhost")
                self.ctl(i, "start_app")
            if self.tuned:
                self.ctl(0, "set_policy", "mqtt-ha", "^mqtt-subscription-",
                         '{"ha-mode":"all","ha-sync-mode":"automatic"}', "--apply-to", "queues")
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(self.n):
            while not mqtt_answers(self.mqtt_ports[i], 3):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rabbitmq node r{i} does not answer MQTT")
                time.sleep(0.3)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s whole process group (the start script, beam.smp and its
        erl_child_setup)."""
        p = self.procs[i]
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        self.kill(i)
        self._spawn(i)
        self._wait_node(i)
        self.wait_ready([i])

    def close(self) -> None:
        for i in range(self.n):
            self.kill(i)
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait(10)
            self.epmd = None

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


WILL_CLIENT = """
import sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=mqtt.MQTTv311)
c.will_set(sys.argv[4], "offline", qos=1, retain=True)
c.on_connect = lambda *a: print("connected", flush=True)
c.connect(sys.argv[1], int(sys.argv[2]), keepalive=5)
c.loop_forever()
"""


def will_client(url: str, client_id: str, topic: str) -> subprocess.Popen:
    """A client with a Last Will in its own process (so SIGKILL ends it as a power cut
    would: no DISCONNECT), returned once the broker accepted it."""
    host, _, port = url.removeprefix("mqtt://").rpartition(":")
    p = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, host, port, client_id, topic],
                         stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "connected":
        p.kill()
        raise RuntimeError(f"will client on {url} did not connect")
    return p


def got(c: Collector, topic: str, payload: str | None = None, timeout: float = WAIT_S) -> bool:
    return c.wait_for(lambda ms: any(t == topic and (payload is None or p == payload)
                                     for t, p, _ in ms), timeout)


def probe(cluster, engine: str) -> dict:
    """The checks above on a started 3-node ``cluster``. Node ``a`` is the one that gets
    killed: the node a persistent subscriber is on and (NATS) that leads its QoS 1
    consumer; it also takes the retained status and the will clients."""
    out: dict = {}
    sub = Collector(cluster.urls[0], "plant-subscriber", clean_session=False)
    sub.connect()
    sub.subscribe("harken/+/+/score", qos=1)
    a = 0
    leaders = getattr(cluster, "msgs_consumer_leaders", lambda: {})()
    if leaders and next(iter(leaders.values())) != 0:
        a = next(iter(leaders.values()))
        sub.close()
        sub = Collector(cluster.urls[a], "plant-subscriber", clean_session=False)
        sub.connect()
    out["killed_node_leads_consumer"] = bool(leaders) and a == cluster.msgs_consumer_leaders().get(
        next(iter(leaders)), -1)
    u = [cluster.urls[(a + k) % 3] for k in range(3)]
    if hasattr(cluster, "mqtt_stream_replicas"):
        out["stream_replicas"] = cluster.mqtt_stream_replicas()

    v5 = Collector(u[0], "probe-v5", protocol=5)
    out["mqtt5"] = v5.connect(10)
    v5.drop()

    status = "harken/n1/m1/status"
    out["retained_publish_acked"] = publish_all(u[0], [(status, "online")], retain=True) == 1
    exact = Collector(u[1], "probe-exact")
    exact.connect()
    exact.subscribe(status)
    out["retained_other_node"] = got(exact, status, "online")
    exact.close()
    for name, url in (("retained_wildcard_same_node", u[0]), ("retained_wildcard_other_node", u[1])):
        w = Collector(url, f"probe-{name}")
        w.connect()
        w.subscribe("harken/#")
        out[name] = got(w, status, "online", 5)
        w.close()

    sp = Collector(u[1], "probe-sparkplug")
    sp.connect()
    sp.subscribe("spBv1.0/harken/#")
    sp_topic = "spBv1.0/harken/NDATA/edge1"
    publish_all(u[0], [(sp_topic, "x")], timeout=5)
    out["sparkplug_topic_unchanged"] = got(sp, sp_topic, timeout=5)
    out["sparkplug_topics_seen"] = sorted({t for t, _, _ in sp.messages})
    sp.close()

    # Last Will: the client dies (its node lives)
    will_topic = "harken/n1/w1/status"
    watcher = Collector(u[1], "probe-will-watch")
    watcher.connect()
    watcher.subscribe("harken/+/+/status")
    p = will_client(u[0], "probe-will-client", will_topic)
    p.kill()
    p.wait()
    out["will_when_client_dies"] = got(watcher, will_topic, "offline")

    # node a dies with a will client and the persistent subscriber on it
    node_topic = "harken/n1/w2/status"
    p = will_client(u[0], "probe-will-node", node_topic)
    warm = publish_all(u[1], [("harken/n1/m1/score", "warm")])
    out["persistent_warmup_received"] = bool(warm) and got(sub, "harken/n1/m1/score", "warm")
    t0 = time.monotonic()
    cluster.kill(a)
    sub.drop()
    p.kill()
    p.wait()
    burst = [("harken/n1/m1/score", f"s{k}") for k in range(BURST)]
    out["burst_acked"] = publish_all(u[1], burst, timeout=WAIT_S)
    out["burst_publish_s"] = round(time.monotonic() - t0, 2)
    out["will_when_node_dies"] = got(watcher, node_topic, "offline", WAIT_S)
    watcher.close()

    refused = 0

    def reopen(client_id: str, topic: str | None, clean: bool = True) -> Collector | None:
        """A fresh client on node C, asked again while refused (open_subscriber)."""
        nonlocal refused
        try:
            c, n = open_subscriber(u[2], client_id, topic, clean_session=clean, timeout=WAIT_S * 2)
        except AssertionError:
            refused += 1
            return None
        refused += n
        return c
    for key, topic in (("retained_after_node_kill", status),
                       ("retained_wildcard_after_node_kill", "harken/#")):
        late = reopen(f"probe-{key}", topic)
        out[key] = late is not None and got(late, status, "online")
        if late:
            late.close()

    again = reopen("plant-subscriber", None, clean=False)
    out["persistent_reconnect"] = again is not None
    out["persistent_session_present"] = again.session_present if again else None
    out["refused_during_outage"] = refused
    if again is None:
        out["persistent_received"], out["persistent_expected"] = 0, BURST
        return out
    wanted = {p for _, p in burst}
    again.wait_for(lambda ms: wanted <= {p for _, p, _ in ms}, WAIT_S)
    out["persistent_received"] = len(wanted & {p for _, p, _ in again.messages})
    out["persistent_expected"] = BURST
    again.close()
    return out


# (engine, config name, what it sets, how the cluster is made)
CONFIGS = [
    ("nats", "defaults", "no replica settings in the mqtt block",
     lambda root: NatsCluster(root, replicas=0, consumer_replicas=None)),
    ("nats", "consumers R1", "mqtt { stream_replicas: 3, consumer_replicas: 1 }",
     lambda root: NatsCluster(root, replicas=3, consumer_replicas=1)),
    ("nats", "tested", "mqtt { stream_replicas: 3, consumer_replicas: 3 }",
     lambda root: NatsCluster(root, replicas=3, consumer_replicas=3)),
    ("rabbitmq", "defaults", "mqtt plugin enabled, nothing else",
     lambda root: RabbitCluster(root)),
    ("rabbitmq", "tuned", "mqtt.sparkplug = true; policy ha-mode all on ^mqtt-subscription-",
     lambda root: RabbitCluster(root, tuned=True)),
]


def run_config(engine: str, name: str, sets: str, make) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"cluster-probe-{engine}-"))
    t0 = time.monotonic()
    try:
        with make(root) as cluster:
            start_s = round(time.monotonic() - t0, 1)
            res = probe(cluster, engine)
        return {"engine": engine, "config": name, "sets": sets, "start_s": start_s, "checks": res}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def versions() -> dict:
    out = {}
    if Path(NATS_SERVER).exists():
        out["nats"] = subprocess.run([NATS_SERVER, "--version"], capture_output=True,
                                     text=True).stdout.strip()
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True,
                       text=True)
    if r.returncode == 0 and (RABBIT_BIN / "rabbitmq-server").exists():
        out["rabbitmq"] = f"rabbitmq-server {r.stdout.strip()}"
    return out


def main() -> None:
    t0 = time.monotonic()
    have = versions()
    runs, skipped = [], []
    for engine in ("nats", "rabbitmq"):
        if engine not in have:
            skipped.append(engine)
            continue
        for eng, name, sets, make in CONFIGS:
            if eng == engine:
                print(f"probing {engine} ({name})", flush=True)
                runs.append(run_config(engine, name, sets, make))
                print(runs[-1], flush=True)
    path = record("cluster-probe", "bench/probe_cluster.py",
                  {"versions": have, "skipped": skipped, "burst": BURST, "wait_s": WAIT_S,
                   "runs": runs, "seconds": round(time.monotonic() - t0, 1)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
