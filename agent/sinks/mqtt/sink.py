"""MQTT publishing (DESIGN.md contract 3, docs/mqtt.md) through the durable outbox.

Scores, events and anomaly-state changes go to the outbox first and are published from
it in order; a row leaves the outbox only when the broker's PUBACK arrives. On every
(re)connect the undelivered rows are published again from the oldest, so a broker that
was down, or an agent that was killed, loses nothing; a subscriber may see a message
twice, always with the same ``seq``. Status (retained, Last Will ``offline``) and the
stats record are live information and skip the outbox. A broker that is down never
blocks scoring: ``interval`` only writes to SQLite. The stats record carries the publish
latency, from the arrival of the audio that completed an interval to the PUBACK of its
score.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harken.agent.sinks.mqtt.broker import ConnectionReports, make_client, refusal
from harken.agent.sinks.mqtt.homeassistant import discovery_payload, discovery_topic
from harken.agent.sinks.mqtt.outbox import Outbox
from harken.agent.decision.records import IntervalResult
from harken.agent.sinks.base import register
from harken.agent.sinks.mqtt.settings import MqttTableSink as Sink   # reads [mqtt]
from harken.agent.sinks.mqtt.topics import MACHINE_KINDS, Topics, ha_status_topic

_log = logging.getLogger("harken")
WINDOW = 32            # messages in flight (unacknowledged) at a time


def plaintext_password_warning(settings) -> str | None:
    """One warning when a password would cross the network unencrypted (plain MQTT to a
    broker that is not this machine); None otherwise."""
    import ipaddress
    if settings.tls or not settings.username or settings.resolved_password() is None:
        return None
    host = settings.host
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if local:
        return None
    return (f"WARNING: the MQTT password goes to {host}:{settings.port} unencrypted "
            "(mqtt.tls = false); anyone on the network path can read it")


@register
class MqttSink(ConnectionReports, Sink):
    name = "mqtt"

    @classmethod
    def enabled(cls, config) -> bool:
        return config.mqtt.enabled and config.mqtt.profile in ("json", "both")

    @classmethod
    def from_config(cls, config) -> MqttSink:
        state = config.writable_folder("agent.state_dir", config.agent.state_dir)
        return cls(config.mqtt_settings(), config.agent.node, config.agent.machine,
                   state / config.mqtt.outbox, interval_s=config.decision.interval_s)

    def __init__(self, settings, node: str, machine: str, outbox_path: Path,
                 log: Callable[[str], None] | None = None, interval_s: float = 10.0) -> None:
        # the "harken" logger (configured by the command line: "harken: mqtt: ...")
        self.log = log or (lambda msg: _log.info(f"mqtt: {msg}"))
        self.s, self.node, self.machine = settings, node, machine
        self.outbox = Outbox(outbox_path, settings.outbox_max)
        scheme = Topics(settings.prefix, node)
        self.topics = {k: scheme.machine(machine, k) for k in MACHINE_KINDS}
        self.status_topic, self.stats_topic = self.topics["status"], self.topics["stats"]
        # one agent = one (node, machine): two agents of one device never share a client id
        self.client, self.tls = make_client(settings,
                                            settings.client_id or f"harken-{node}-{machine}",
                                            self.log)
        warning = plaintext_password_warning(settings)
        if warning:
            self.log(warning)
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.ha_status_topic = ha_status_topic(settings.discovery_prefix)
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}        # mid -> outbox row id
        self._last_sent = 0                         # highest outbox id handed to paho
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        # set once the first connection attempt has an outcome (connected, refused or
        # failed): a clean stop waits for it, so a short run does not exit mid-handshake
        self._settled = threading.Event()
        self._last_error = ""
        self._refused = False                  # the broker's CONNACK said no
        self._anomaly: bool | None = None
        self.interval_s = interval_s           # the report interval (score expiry)
        self._session: int | None = None          # the current connection's number
        self._made_in: OrderedDict[int, int] = OrderedDict()   # row -> connection made on
        self._arrived: OrderedDict[int, float] = OrderedDict()   # score row -> audio arrival
        self._latency_ms: list[float] = []       # PUBACKed scores since the last stats record
        self.client.connect_async(settings.host, settings.port, keepalive=settings.keepalive)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._sender.start()

    # -- paho callbacks (paho's thread) ---------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True         # the disconnect that follows says nothing new
            self._report(refusal(self.s.host, self.s.port, reason_code,
                                 "check mqtt.username and the password"))
            self._settled.set()
            return
        self._refused = False
        self._last_error = ""
        self.log(f"connected to {self.s.host}:{self.s.port}")
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.s.homeassistant:
            self._announce()
            client.subscribe(self.ha_status_topic, qos=1)
        with self._lock:
            self._inflight.clear()
            self._last_sent = 0                  # resend everything not acknowledged
            self._session = (self._session or 0) + 1
        self._connected.set()
        self._settled.set()
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        # Home Assistant restarted: it forgets non-retained state, so announce again
        if message.topic == self.ha_status_topic and message.payload == b"online":
            self._announce()

    def _announce(self) -> None:
        """Home Assistant device discovery (retained, so a later Home Assistant sees it)."""
        self.client.publish(discovery_topic(self.s.discovery_prefix, self.node, self.machine),
                            json.dumps(discovery_payload(self.s.prefix, self.node, self.machine,
                                                        self.interval_s)),
                            qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._settled.set()
        if not self._stop.is_set() and not self._refused:
            self._report(f"disconnected from {self.s.host}:{self.s.port} ({reason_code}); "
                         "retrying")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            arrived = self._arrived.pop(row, None) if row is not None else None
            if arrived is not None:
                self._latency_ms.append(1e3 * (time.monotonic() - arrived))
        if row is not None:
            self.outbox.ack(row)
            self._wake.set()

    # -- sending ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._connected.is_set():
                continue
            with self._lock:
                room, after = WINDOW - len(self._inflight), self._last_sent
            if room <= 0:
                continue
            for m in self.outbox.pending(after, room):
                info = self.client.publish(m.topic, self._as_sent(m), qos=m.qos,
                                           retain=m.retain)
                if info.rc != 0:                 # not connected any more: next connect resends
                    break
                with self._lock:
                    self._inflight[info.mid] = m.id
                    self._last_sent = m.id

    def _as_sent(self, m) -> bytes:
        """A score or event is live only when it goes out on the connection that was up
        when it was made. One made while the broker was away, by an earlier run of the
        agent, or sent again after a reconnect is history: it goes out with
        ``"replayed": true``, so a dashboard keeps it out of its live value
        (docs/mqtt.md). Decided by connection, not by age, so no clock is involved."""
        if m.kind not in ("score", "event"):
            return m.payload
        with self._lock:
            live = self._session is not None and self._made_in.pop(m.id, None) == self._session
        if live:
            return m.payload
        body = json.loads(m.payload)
        body["replayed"] = True
        return json.dumps(body, allow_nan=False).encode()

    # -- the sink interface -------------------------------------------------------------------
    def interval(self, result: IntervalResult) -> None:
        who = {"node": self.node, "machine": self.machine}
        p = {**result.payload(), **who, "replayed": False}
        # the lock spans the writes, so the sender cannot judge a row before it is recorded
        with self._lock:
            session = self._session if self._connected.is_set() else None
            row = self.outbox.put(self.topics["score"], json.dumps(p, allow_nan=False).encode(),
                                  qos=1, kind="score", seq=result.seq)
            event = -1
            if result.event is not None:
                event = self.outbox.put(self.topics["event"], json.dumps(
                    {"seq": result.seq, **result.event.to_dict(), **who, "replayed": False}
                ).encode(), qos=1, kind="event")
            if row >= 0:                   # -1: a full disk dropped it (counted)
                self._arrived[row] = result.arrived
            for r in (row, event):
                if r >= 0 and session is not None:
                    self._made_in[r] = session
            for rows in (self._arrived, self._made_in):   # evicted rows are never sent
                while len(rows) > self.s.outbox_max:
                    rows.popitem(last=False)
        # the first interval of a run always says the state: a retained ON left by an
        # earlier run must not outlive a restart on normal sound
        if result.anomaly != self._anomaly:
            self.outbox.put(self.topics["anomaly"], json.dumps(
                {"state": "ON" if result.anomaly else "OFF", "seq": result.seq,
                 "ts": round(result.ts, 3), **who}).encode(), qos=1, retain=True, kind="state")
        self._anomaly = result.anomaly
        self._wake.set()

    def status(self, record: dict) -> None:
        """Only the stats record is published (live, QoS 0, not through the outbox)."""
        if record.get("status") == "stats":
            stats = {"node": self.node, "machine": self.machine,
                     **{k: v for k, v in record.items() if k not in ("status", "kind")}}
            self.client.publish(self.stats_topic, json.dumps(stats), qos=0)

    def health(self) -> dict:
        """Outbox, connection and publish-latency figures for the stats record (latency
        percentiles over the scores acknowledged since the last record; None if none)."""
        with self._lock:
            latency, self._latency_ms = self._latency_ms, []
        q = (np.percentile(latency, [50, 99]).round(1).tolist() if latency
             else [None, None])
        return {"outbox_depth": self.outbox.depth, "outbox_evicted": self.outbox.evicted,
                "outbox_disk_full": self.outbox.disk_full,
                "mqtt_connected": self._connected.is_set(), "published": len(latency),
                "publish_ms_median": q[0], "publish_ms_p99": q[1]}

    @property
    def seq_start(self) -> int:
        return self.outbox.last_seq + 1

    def close(self, flush_s: float = 5.0) -> None:
        """Clean shutdown: deliver what the broker will take within ``flush_s``, publish
        ``stopped`` (retained), disconnect without the Last Will. A first connection still
        in progress (a TLS handshake takes a while) is waited for within the same time; a
        broker that has already refused or failed is not."""
        deadline = time.monotonic() + flush_s
        if not self._connected.is_set():
            self._settled.wait(flush_s)
        if self._connected.is_set():
            while self.outbox.depth and time.monotonic() < deadline and self._connected.is_set():
                self._wake.set()
                time.sleep(0.05)
            self.client.publish(self.status_topic, "stopped", qos=1, retain=True).wait_for_publish(2)
        self._stop.set()
        self._wake.set()
        self.client.disconnect()
        self.client.loop_stop()
        self._sender.join(timeout=2)
        self.outbox.close()
