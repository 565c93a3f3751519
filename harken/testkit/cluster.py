"""A real 3-node MQTT broker cluster for the failover tests and the fleet bench: Debian's
nats-server (2.9) with its MQTT gateway, N nodes on loopback, each with its own free ports
and JetStream store, joined by cluster routes. docs/deploy.md "Many devices: a broker
cluster" says why NATS and not RabbitMQ (bench/probe_cluster.py tried both), and which
settings this kit uses: the MQTT gateway keeps retained messages, sessions and QoS 1
subscriptions in JetStream streams and consumers, and ``stream_replicas`` /
``consumer_replicas`` = N (at most 3) make all of them survive the loss of a node.

    with NatsCluster(tmp_path) as cluster:      # started, formed, MQTT answering on each node
        cluster.urls                            # ["mqtt://127.0.0.1:PORT", ...], one per node
        cluster.kill(1)                         # SIGKILL node 1
        cluster.restart(1)                      # same ports, same JetStream store

Every process the kit starts is killed at exit (``close``), whatever the test did; ``pids``
lists them so a test can check that none is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all sockets are held open until every port is
    picked (one-at-a-time picking hands out the same port twice, and a node whose route
    port is another's MQTT port dies at start)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def mqtt_answers(port: int, timeout: float = 5.0, client_id: str = "") -> bool:
    """True when an MQTT 3.1.1 CONNECT on 127.0.0.1:``port`` gets a CONNACK that accepts it
    (the NATS gateway accepts only once its JetStream streams exist: the cluster's meta
    leader is elected and the MQTT streams are placed)."""
    done, ok = threading.Event(), []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"ready-{port}-{os.getpid()}",
                    protocol=mqtt.MQTTv311)

    def on_connect(client, userdata, flags, rc, props=None):
        ok.append(not rc.is_failure)
        done.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return False
    c.loop_start()
    try:
        done.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    return bool(ok and ok[0])


class NatsCluster:
    """``nodes`` nats-server processes in ``root`` forming one cluster with JetStream and an
    MQTT listener each. ``replicas`` is the MQTT streams' and consumers' replica count (the
    default: every node, at most 3, the tested setting); ``consumer_replicas`` can be set on
    its own to show what the gateway's default does (bench/probe_cluster.py, the tests)."""

    def __init__(self, root: Path, nodes: int = 3, replicas: int | None = None,
                 consumer_replicas: int | None = -1, ready_timeout: float = 60.0) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes = {nodes}: expected 1 to 9")
        self.root, self.n, self.ready_timeout = Path(root), nodes, ready_timeout
        self.replicas = min(nodes, 3) if replicas is None else replicas
        # -1: the same as the streams; None: leave the gateway's default
        self.consumer_replicas = self.replicas if consumer_replicas == -1 else consumer_replicas
        ports = free_ports(4 * nodes)
        self.mqtt_ports, self.client_ports = ports[:nodes], ports[nodes:2 * nodes]
        self.route_ports, self.http_ports = ports[2 * nodes:3 * nodes], ports[3 * nodes:]
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.pids: list[int] = []          # every pid this kit ever started
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(nodes):
            self._write_conf(i)

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{p}" for p in self.mqtt_ports]

    def node_dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    def _write_conf(self, i: int) -> None:
        d = self.node_dir(i)
        (d / "js").mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.route_ports) if j != i)
        mqtt_opts = [f'listen: "127.0.0.1:{self.mqtt_ports[i]}"']
        if self.replicas:
            mqtt_opts.append(f"stream_replicas: {self.replicas}")
        if self.consumer_replicas is not None:
            mqtt_opts.append(f"consumer_replicas: {self.consumer_replicas}")
        cluster = (f'cluster {{ name: "harken"\n  listen: "127.0.0.1:{self.route_ports[i]}"\n'
                   f"  routes: [{routes}] }}\n") if self.n > 1 else ""
        (d / "nats.conf").write_text(
            f'server_name: "n{i}"\nlisten: "127.0.0.1:{self.client_ports[i]}"\n'
            f'http: "127.0.0.1:{self.http_ports[i]}"\n'
            f"{cluster}"
            f'jetstream {{ store_dir: "{d / "js"}" }}\n'
            "mqtt {\n  " + "\n  ".join(mqtt_opts) + "\n}\n")

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        if not Path(NATS_SERVER).exists():
            raise AssertionError("nats-server is not installed: scripts/setup --tests does it")
        log = open(self.node_dir(i) / "nats.log", "ab")
        try:
            self.procs[i] = subprocess.Popen([NATS_SERVER, "-c", str(self.node_dir(i) / "nats.conf")],
                                             stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.pids.append(self.procs[i].pid)

    def start(self) -> NatsCluster:
        try:
            for i in range(self.n):
                self._spawn(i)
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no goodbye to its clients or its peers) and reap it."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        self.procs[i] = None

    def restart(self, i: int, wait: bool = True) -> None:
        """Start node ``i`` again on its ports with its JetStream store as the kill left it."""
        self.kill(i)
        self._spawn(i)
        if wait:
            self.wait_ready([i])

    def _has_meta_leader(self, i: int) -> bool:
        """The node knows the JetStream cluster's meta leader (its /jsz monitoring page).
        Not /healthz: in 2.9 it keeps failing on a restarted node for a per-server
        consumer of the retained-message stream that is never "current" again, while MQTT
        works. A single node has no meta group."""
        if self.n == 1:
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz", timeout=2) as r:
                return bool((json.loads(r.read()).get("meta_cluster") or {}).get("leader"))
        except (OSError, ValueError):
            return False

    def _jsz(self, query: str) -> list[dict]:
        """The running nodes' /jsz monitoring pages with ``query``."""
        pages = []
        for i in range(self.n):
            if not self.alive(i):
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz?{query}",
                                            timeout=3) as r:
                    pages.append(json.loads(r.read()))
            except (OSError, ValueError):
                continue
        return pages

    def mqtt_stream_replicas(self) -> dict[str, int]:
        """The replica count of each MQTT gateway stream (``$MQTT_sess``, ``$MQTT_msgs``,
        ``$MQTT_rmsgs``) as created: without ``stream_replicas`` the gateway picks it itself
        (bench/probe_cluster.py records what it picked)."""
        out: dict[str, int] = {}
        for page in self._jsz("accounts=true&streams=true&config=true"):
            for acc in page.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    if st.get("name", "").startswith("$MQTT_"):
                        out[st["name"]] = (st.get("config") or {}).get("num_replicas", 0)
        return out

    def msgs_consumer_leaders(self) -> dict[str, int]:
        """The node leading each JetStream consumer of the MQTT gateway's QoS 1 message stream
        (``$MQTT_msgs``: one durable consumer per QoS 1 subscription of a persistent
        session), by consumer name, as the running nodes' /jsz pages report them; a test
        uses it to kill the node that holds a subscriber's consumer."""
        out: dict[str, int] = {}
        for data in self._jsz("accounts=true&streams=true&consumers=true"):
            for acc in data.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    if st.get("name") != "$MQTT_msgs":
                        continue
                    for co in st.get("consumer_detail") or []:
                        leader = (co.get("cluster") or {}).get("leader", "")
                        if leader.startswith("n") and leader[1:].isdigit():
                            out[co["name"]] = int(leader[1:])
        return out

    def wait_ready(self, nodes: list[int] | None = None, timeout: float | None = None) -> None:
        """Wait until every node in ``nodes`` (all running ones by default) knows the meta
        leader and accepts an MQTT connection; raises AssertionError naming the node otherwise."""
        todo = [i for i in (nodes if nodes is not None else range(self.n)) if self.procs[i] is not None]
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        for i in todo:
            while True:
                for j in todo:
                    p = self.procs[j]
                    if p is None or p.poll() is not None:
                        raise AssertionError(f"nats-server node {j} exited: see "
                                             f"{self.node_dir(j) / 'nats.log'}")
                if self._has_meta_leader(i) and mqtt_answers(self.mqtt_ports[i], timeout=3):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"nats-server node {i} did not answer MQTT within "
                                         f"{timeout or self.ready_timeout:.0f} s: see "
                                         f"{self.node_dir(i) / 'nats.log'}")
                time.sleep(0.2)

    def close(self) -> None:
        """Kill every node this kit started (SIGKILL: nothing of the cluster is worth a clean
        stop in a test) and reap it, so no process is left behind."""
        for i in range(self.n):
            self.kill(i)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def host_port(url: str) -> tuple[str, int]:
    """("127.0.0.1", PORT) of a kit URL "mqtt://127.0.0.1:PORT"."""
    host, _, port = url.removeprefix("mqtt://").rpartition(":")
    return host, int(port)


class Collector:
    """A paho client that records every message it gets, for the cluster tests and probe:
    ``clean_session`` False with a fixed ``client_id`` is the plant subscriber's persistent
    session (docs/deploy.md "Many devices: a broker cluster"). Waits are on events, never
    fixed sleeps."""

    def __init__(self, url: str, client_id: str, clean_session: bool = True,
                 protocol: int = mqtt.MQTTv311, will: tuple[str, str] | None = None,
                 keepalive: int = 10) -> None:
        self.url, self.messages = url, []
        self.cond = threading.Condition()
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.session_present: bool | None = None
        self.refused: str | None = None
        kw = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean_session}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kw)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.granted: list[int] = []
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.keepalive = keepalive

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:
        if rc.is_failure:
            self.refused = str(rc)
        else:
            self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, props=None) -> None:
        self.granted = [rc.value for rc in reason_codes]
        self.subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload.decode(errors="replace"), bool(msg.retain)))
            self.cond.notify_all()

    def connect(self, timeout: float = 20.0) -> bool:
        """Connect and run the network loop; True when the broker accepted."""
        host, port = host_port(self.url)
        try:
            self.client.connect(host, port, keepalive=self.keepalive)
        except OSError as exc:
            self.refused = str(exc)
            return False
        self.client.loop_start()
        return self.connected.wait(timeout) and self.refused is None

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 20.0) -> bool:
        """Subscribe; True when the SUBACK grants it (a failure code 0x80 is False: NATS
        refuses a QoS 1 subscription whose JetStream consumer it could not create, e.g.
        while a node is dead and the request times out)."""
        self.subscribed.clear()
        self.granted = []
        self.client.subscribe(topic, qos)
        return self.subscribed.wait(timeout) and bool(self.granted) and all(g < 0x80 for g in self.granted)

    def wait_for(self, pred, timeout: float) -> bool:
        """Wait until ``pred(messages)`` holds (or ``timeout`` seconds)."""
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.messages), timeout)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def drop(self) -> None:
        """Stop the network loop without a DISCONNECT (its node is dead, or the test wants
        the session left as a crash leaves it)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def publish_all(url: str, messages: list[tuple[str, str]], retain: bool = False,
                client_id: str = "", timeout: float = 30.0) -> int:
    """Publish ``messages`` (topic, payload) at QoS 1 on ``url``; returns how many the broker
    acknowledged within ``timeout`` seconds in all."""
    pub = Collector(url, client_id or f"pub-{os.getpid()}-{time.monotonic_ns()}")
    if not pub.connect(timeout):
        pub.drop()
        return 0
    infos = [pub.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
    deadline = time.monotonic() + timeout
    acked = 0
    for info in infos:
        try:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            pass
        acked += info.is_published()
    pub.close()
    return acked


def open_subscriber(url: str, client_id: str, topic: str | None = None, clean_session: bool = True,
                    timeout: float = 60.0) -> tuple[Collector, int]:
    """A connected Collector on ``url`` (subscribed to ``topic`` at QoS 1 if given), asking
    again while the broker refuses: during a node's outage nats-server 2.9 refuses some
    CONNECTs (its session lookup times out) and some QoS 1 SUBSCRIBEs (SUBACK 0x80: the
    JetStream consumer was not created in time), as a plant subscriber must expect
    (docs/deploy.md "What a plant subscriber must set"). Returns it and how many tries were
    refused; raises AssertionError when none succeeded within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        c = Collector(url, client_id, clean_session=clean_session)
        left = max(1.0, deadline - time.monotonic())
        if c.connect(min(20.0, left)) and (topic is None or c.subscribe(topic, timeout=min(20.0, left))):
            return c, refused
        refused += 1
        c.drop()
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: no accepted connection/subscription for {client_id} within "
                                 f"{timeout:.0f} s ({refused} refused)")
        time.sleep(0.5)
