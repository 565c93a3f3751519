"""The Sparkplug B edge node: one MQTT connection for the agent, its machines as devices.

It connects once every device has said its model (the runner's ``started``). On every
connection (clean session, as the specification requires): NBIRTH (``seq`` 0, the
connection's ``bdSeq``), a DBIRTH per device with every metric's name, type and current
value, then what each device's durable outbox holds, then live DDATA. A DDATA made while the
connection was down (the broker away, an earlier run killed) goes out after the births with
``is_historical`` and its own timestamps, so a historian fills the gap and live values stay
live. ``seq`` counts every message of the session from 0 to 255 and wraps. NDEATH is the
connection's Last Will, carrying the ``bdSeq`` of the NBIRTH it ends; a new connection takes
the next ``bdSeq`` (kept in the state folder, so a restart after a kill -9 goes on counting).
An NCMD ``Node Control/Rebirth`` = true publishes the births again.

DDATA goes out at QoS 1 (the specification asks for 0): a row leaves the outbox only when
the broker's PUBACK arrives, which is what lets nothing be lost across an outage or a
kill -9. Births and deaths are QoS 0 and 1 as specified.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harken.agent.sinks.mqtt.broker import ConnectionReports, make_client, refusal
from harken.agent.sinks.mqtt.outbox import Outbox
from harken.common.atomic import write_atomic
from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric, decode, \
    metric_value, topic

_log = logging.getLogger("harken")
WINDOW = 32                     # DDATA in flight (unacknowledged) at a time
REBIRTH = "Node Control/Rebirth"

# the device metrics of every DDATA: (name, Sparkplug type, score payload key, unit)
DEVICE_METRICS = [("score", DataType.Float, "score", None),
                  ("threshold", DataType.Float, "threshold", None),
                  ("anomaly", DataType.Boolean, "anomaly", None),
                  ("status", DataType.String, "status", None),
                  ("rms_dbfs", DataType.Float, "rms_dbfs", "dBFS"),
                  ("inference_ms", DataType.Float, "inference_ms", "ms"),
                  ("interval_seq", DataType.Int64, "seq", None)]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Device:
    """One monitored machine: its outbox of DDATA rows and what its DBIRTH says."""
    name: str
    outbox: Outbox
    properties: dict                       # model, backend, interval_s, section
    last: dict = field(default_factory=dict)      # the latest score payload (DBIRTH values)
    born: bool = False                     # DBIRTH sent on this connection
    described: bool = False                # its model and backend are known
    made_in: OrderedDict = field(default_factory=OrderedDict)   # row -> connection made on


class EdgeNode(ConnectionReports):
    def __init__(self, settings, group: str, edge_node: str, state_dir: Path, version: str,
                 log: Callable[[str], None] | None = None) -> None:
        self.log = log or (lambda msg: _log.info(f"sparkplug: {msg}"))
        self.s, self.group, self.edge_node, self.version = settings, group, edge_node, version
        self._bdseq_file = state_dir / f"sparkplug-bdseq-{edge_node}"
        self.bdseq = self._next_bdseq()
        self.devices: dict[str, Device] = {}
        # seq, births and the device table. paho calls on_publish holding its own message
        # mutex, which publish() needs: so on_publish never takes this lock, only
        # _flight_lock, which is never held across a publish()
        self._lock = threading.RLock()
        self._flight_lock = threading.Lock()
        self._seq = 0
        self._inflight: dict[int, tuple[Device, int]] = {}
        self._acked_early: set[int] = set()      # PUBACKs that beat their bookkeeping
        self._last_sent: dict[str, int] = {}
        self._session: int | None = None
        self._need_birth = False
        self._wake, self._stop = threading.Event(), threading.Event()
        self._connected, self._settled = threading.Event(), threading.Event()
        client_id = f"{settings.client_id}-spb" if settings.client_id else \
            f"harken-spb-{group}-{edge_node}"
        self.client, self.tls = make_client(settings, client_id, self.log)
        self._set_will()
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._started = False
        self._sender = threading.Thread(target=self._send_loop, name="sparkplug", daemon=True)
        self._sender.start()

    def start(self) -> None:
        """Connect: once every device has said its model (the births carry it), or at the
        first data, whichever comes first."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self.client.loop_start()

    # -- bdSeq and the Will ---------------------------------------------------------------
    def _next_bdseq(self) -> int:
        """The bdSeq of the next connection: one more than the last one used (0-255)."""
        try:
            last = int(self._bdseq_file.read_text().strip())
        except (OSError, ValueError):
            last = -1
        value = (last + 1) % 256
        write_atomic(self._bdseq_file, f"{value}\n")
        return value

    def _death(self) -> bytes:
        p = Payload(timestamp=now_ms())
        add_metric(p, "bdSeq", DataType.Int64, self.bdseq, p.timestamp)
        return p.SerializeToString()

    def _set_will(self) -> None:
        self.client.will_set(topic(self.group, "NDEATH", self.edge_node), self._death(),
                             qos=1, retain=False)

    # -- paho callbacks (paho's thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report(refusal(self.s.host, self.s.port, reason_code,
                                 "check mqtt.username and the password"))
            self._settled.set()
            return
        self._last_error = ""
        self.log(f"edge node {self.group}/{self.edge_node} connected to {self.s.host}:"
                 f"{self.s.port} (bdSeq {self.bdseq})")
        client.subscribe(topic(self.group, "NCMD", self.edge_node), qos=0)
        with self._flight_lock:
            self._inflight.clear()
            self._acked_early.clear()
        with self._lock:
            self._last_sent.clear()               # resend everything not acknowledged
            self._session = (self._session or 0) + 1
            self._need_birth = True
        self._connected.set()
        self._settled.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._settled.set()
        if was and not self._stop.is_set():
            # the broker sends this connection's NDEATH; the next one is a new session
            self.bdseq = self._next_bdseq()
            self._set_will()
            self._report(f"disconnected from {self.s.host}:{self.s.port} ({reason_code}); "
                         "retrying")

    def _on_message(self, client, userdata, message) -> None:
        try:
            payload = decode(message.payload)
        except ValueError:
            return
        if any(m.name == REBIRTH and metric_value(m) is True for m in payload.metrics):
            with self._lock:
                self._need_birth = True
            self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._flight_lock:
            sent = self._inflight.pop(mid, None)
            if sent is None:
                self._acked_early.add(mid)
        if sent is not None:
            device, row = sent
            device.outbox.ack(row)
            self._wake.set()

    # -- publishing (the sender thread) -----------------------------------------------------
    def _publish(self, kind: str, payload, device: str | None = None, qos: int = 0):
        """Stamp the session's next ``seq`` and publish (caller holds the lock)."""
        payload.seq = self._seq
        self._seq = (self._seq + 1) % 256
        return self.client.publish(topic(self.group, kind, self.edge_node, device),
                                   payload.SerializeToString(), qos=qos, retain=False)

    def _births(self) -> None:
        """NBIRTH (seq 0) and every device's DBIRTH."""
        self._seq = 0
        p = Payload(timestamp=now_ms())
        t = p.timestamp
        add_metric(p, "bdSeq", DataType.Int64, self.bdseq, t)
        add_metric(p, REBIRTH, DataType.Boolean, False, t)
        add_metric(p, "Properties/Version", DataType.String, self.version, t)
        add_metric(p, "Properties/Machines", DataType.Int32, len(self.devices), t)
        for key, name in (("model", "Models"), ("backend", "Backends")):
            add_metric(p, f"Properties/{name}", DataType.String, ", ".join(dict.fromkeys(
                d.properties[key] for d in self.devices.values())), t)
        self._publish("NBIRTH", p)
        for d in self.devices.values():
            self._dbirth(d)
        self._need_birth = False

    def _dbirth(self, d: Device) -> None:
        p = Payload(timestamp=now_ms())
        t = p.timestamp
        for name, dtype, key, unit in DEVICE_METRICS:
            add_metric(p, name, dtype, d.last.get(key), t,
                       properties={"engUnit": (DataType.String, unit)} if unit else None)
        add_metric(p, "Properties/Model", DataType.String, d.properties["model"], t)
        add_metric(p, "Properties/Backend", DataType.String, d.properties["backend"], t)
        add_metric(p, "Properties/Section", DataType.Int32, d.properties["section"], t)
        add_metric(p, "Properties/Interval", DataType.Float, d.properties["interval_s"], t,
                   properties={"engUnit": (DataType.String, "s")})
        self._publish("DBIRTH", p, d.name)
        d.born = True

    def _ddata(self, d: Device, body: dict, historical: bool):
        p = Payload(timestamp=now_ms())
        t = int(round(body["ts"] * 1000))
        for name, dtype, key, _ in DEVICE_METRICS:
            add_metric(p, name, dtype, body.get(key), t, historical=historical)
        return self._publish("DDATA", p, d.name, qos=1)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._connected.is_set():
                continue
            with self._lock:
                if self._need_birth:
                    for d in self.devices.values():
                        d.born = False
                    self._births()
                for d in self.devices.values():
                    if not d.born:                 # registered after the NBIRTH
                        self._dbirth(d)
                    self._send_pending(d)

    def _send_pending(self, d: Device) -> None:
        with self._flight_lock:
            room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        for m in d.outbox.pending(self._last_sent.get(d.name, 0), room):
            live = self._session is not None and d.made_in.pop(m.id, None) == self._session
            info = self._ddata(d, json.loads(m.payload), historical=not live)
            if info.rc != 0:                  # not connected any more: the next one resends
                break
            self._last_sent[d.name] = m.id
            with self._flight_lock:
                early = info.mid in self._acked_early
                self._acked_early.discard(info.mid)
                if not early:
                    self._inflight[info.mid] = (d, m.id)
            if early:
                d.outbox.ack(m.id)

    # -- the devices' side (their sinks) ----------------------------------------------------
    def add_device(self, name: str, outbox: Outbox, properties: dict) -> Device:
        with self._lock:
            d = self.devices[name] = Device(name, outbox, properties)
        self._wake.set()
        return d

    def describe(self, d: Device, **properties) -> None:
        """New device properties (the model and backend once the runner starts): its
        DBIRTH is published again if it already went out without them."""
        with self._lock:
            if any(d.properties.get(k) != v for k, v in properties.items()):
                d.properties.update(properties)
                d.born = False
            d.described = True
            ready = all(x.described for x in self.devices.values())
        if ready:
            self.start()
        self._wake.set()

    def data(self, d: Device, body: dict) -> None:
        """One report interval of device ``d`` into its outbox (then published)."""
        with self._lock:
            session = self._session if self._connected.is_set() else None
            row = d.outbox.put(topic(self.group, "DDATA", self.edge_node, d.name),
                               json.dumps(body, allow_nan=False).encode(), qos=1,
                               kind="score", seq=body["seq"])
            d.last = body
            if row >= 0 and session is not None:
                d.made_in[row] = session
            while len(d.made_in) > self.s.outbox_max:
                d.made_in.popitem(last=False)
        self.start()
        self._wake.set()

    def remove_device(self, d: Device, flush_s: float) -> None:
        """Deliver what the broker takes within ``flush_s``, then DDEATH."""
        deadline = time.monotonic() + flush_s
        if self._started and not self._connected.is_set():
            self._settled.wait(flush_s)
        while d.outbox.depth and time.monotonic() < deadline and self._connected.is_set():
            self._wake.set()
            time.sleep(0.05)
        with self._lock:
            if self._connected.is_set() and d.born:
                self._publish("DDEATH", Payload(timestamp=now_ms()), d.name)
            del self.devices[d.name]
        d.outbox.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        """NDEATH before an intentional disconnect, as the specification asks."""
        if self._connected.is_set():
            with self._lock:
                info = self.client.publish(topic(self.group, "NDEATH", self.edge_node),
                                           self._death(), qos=1, retain=False)
            info.wait_for_publish(2)
        self._stop.set()
        self._wake.set()
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
        self._sender.join(timeout=2)
