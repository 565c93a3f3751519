"""The Sparkplug B edge node: one MQTT connection for the agent, its machines as devices.
An encoder on the durable publisher (agent/sinks/mqtt/publisher.py), which delivers: this
module decides the births, deaths, ``seq``, ``bdSeq`` and the DDATA payloads.

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

Maintenance (docs/mqtt.md "Commands"): each DBIRTH carries a ``Maintenance`` Boolean, the
machine's current state; a change is published at once as a DDATA of that metric alone.
The specification has no flag for a writable metric; the metric's ``readOnly`` property
says it (false only while the device takes commands: ``mqtt.commands``, the runner's
handler set). Only then does the node subscribe to the device's DCMD, and a DCMD write of
``Maintenance`` becomes a maintenance command through the same handler as the JSON
command topic (operator ``sparkplug``). Its id is made of the DCMD itself: ``sparkplug-``,
the payload's timestamp, the metric's timestamp and the value written, so that the same
DCMD delivered again (a broker's redelivery, a retained DCMD at a reconnect) is a replay
that the dispatcher refuses; a DCMD with neither timestamp is refused. The DCMD is
subscribed retain-as-published (MQTT 5) and a retained DCMD is refused, never carried out:
it would come back at every connection (docs/mqtt.md "Commands"). A write that is refused
is logged and answered with a DDATA of the unchanged value, so that the host's tag returns
to it. Other DCMD metrics are refused and logged.

DDATA goes out at QoS 1 (the specification asks for 0): a row leaves the outbox only when
the broker's PUBACK arrives, which is what lets nothing be lost across an outage or a
kill -9. Births and deaths are QoS 0 and 1 as specified.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.base import CommandHandler, CommandWorker
from harken.agent.sinks.mqtt.publisher import Encoder, Lane, Publisher
from harken.agent.sinks.mqtt.settings import default_client_id
from harken.common.atomic import write_atomic
from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric, decode, \
    metric_value, parse_topic, topic

_log = logging.getLogger(__name__)
REBIRTH = "Node Control/Rebirth"
MAINTENANCE = "Maintenance"      # the writable device metric (module docstring)
RETAINED = ("a retained DCMD is not carried out (it would come back at every connection): "
            "publish DCMD with retain off, and clear this one with an empty retained message")
NO_STAMP = ("a DCMD without a timestamp is not carried out: its redelivery could not be told "
            "from a new write (Sparkplug B asks for the payload's timestamp)")

# the device metrics of every DDATA: (name, Sparkplug type, score payload key, unit)
DEVICE_METRICS = [("score", DataType.Float, "score", None),
                  ("threshold", DataType.Float, "threshold", None),
                  ("anomaly", DataType.Boolean, "anomaly", None),
                  ("status", DataType.String, "status", None),
                  ("rms_dbfs", DataType.Float, "rms_dbfs", "dBFS"),
                  ("inference_ms", DataType.Float, "inference_ms", "ms"),
                  ("interval_seq", DataType.Int64, "seq", None),
                  # true when the interval's timestamp came from a clock not yet set (NTP
                  # had not synchronised it: docs/agent.md "Time you can trust"); the JSON
                  # payloads' "clock": "unsynced"
                  ("clock_unsynced", DataType.Boolean, "clock", None)]


def _value(body: dict, key: str):
    """A device metric's value from a score payload (None before the first interval)."""
    if key == "clock":
        return (body.get("clock") == "unsynced") if body else None
    return body.get(key)


def _takes_refusals(handler: CommandHandler) -> bool:
    """Whether ``handler`` (the runner's dispatcher) takes a refusal made here
    (``refuse=``), to log it in the audit log (as agent/sinks/mqtt/sink.py does)."""
    try:
        return "refuse" in inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class Device:
    """One monitored machine: its publisher lane (a durable outbox of DDATA rows) and what
    its DBIRTH says."""
    name: str
    lane: Lane
    properties: dict                       # model, backend, interval_s, section
    last: dict = field(default_factory=dict)      # the latest score payload (DBIRTH values)
    born: bool = False                     # DBIRTH sent on this connection
    unborn: str | None = None              # why the broker would not take its DBIRTH
    described: bool = False                # its model and backend are known
    commands: CommandHandler | None = None  # the runner's handler: DCMD taken
    maintenance: bool = False              # the machine is in maintenance
    said: bool | None = None               # the Maintenance value this connection last sent

    @property
    def outbox(self) -> Outbox:
        return self.lane.outbox


class EdgeNode(Encoder):
    def __init__(self, settings, group: str, edge_node: str, state_dir: Path, version: str,
                 log: Callable[[str], None] | None = None) -> None:
        self.log = log or (lambda msg: _log.info(f"sparkplug: {msg}"))
        self.s, self.group, self.edge_node, self.version = settings, group, edge_node, version
        self._bdseq_file = state_dir / f"sparkplug-bdseq-{edge_node}"
        self.bdseq = self._next_bdseq()
        self.devices: dict[str, Device] = {}
        self._seq = 0
        self._need_birth = False
        self._nbirth_refused: str | None = None    # why the broker would not take the NBIRTH
        # the edge node's id, host and state folder (docs/mqtt.md "Client ids")
        client_id = f"{settings.client_id}-spb" if settings.client_id else \
            default_client_id("spb", (group, edge_node), state_dir)
        self.publisher = Publisher(settings, client_id, self, self.log, thread_name="sparkplug")
        # seq, births and the device table are kept under the publisher's lock, which its
        # sender holds while it publishes: a DDATA's seq is taken in order with the births'
        self._lock = self.publisher.lock
        self._up = False                   # a connection is made (its DCMD subscriptions)
        # DCMD writes for the command worker, carried out one at a time in arrival order
        self._worker = CommandWorker(
            "sparkplug-commands", 64, lambda job: self._carry_out(*job),
            lambda exc: self.log(f"a DCMD write was not carried out: {exc}"))
        self._set_will()

    def start(self) -> None:
        """Connect: once every device has said its model (the births carry it), or at the
        first data, whichever comes first."""
        self.publisher.start()

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
        self.publisher.will(topic(self.group, "NDEATH", self.edge_node), self._death(),
                            qos=1, retain=False)

    # -- the connection (the publisher's hooks, paho's thread) ------------------------------
    def connection_made(self) -> None:
        # not at every try against a broker that closes; always on moving to another server
        if self.publisher.steady or self.publisher.moved:
            self.log(f"edge node {self.group}/{self.edge_node} connected to "
                     f"{self.publisher.where} (bdSeq {self.bdseq})")
        self.publisher.subscribe(topic(self.group, "NCMD", self.edge_node), qos=0)
        with self._lock:
            self._need_birth = True
            self._up = True
            for d in self.devices.values():
                if d.commands is not None:
                    self.publisher.subscribe(self._dcmd(d), qos=0, retain_as_published=True)

    def connection_lost(self) -> None:
        # the broker sends this connection's NDEATH; the next one is a new session
        with self._lock:
            self._up = False
        self.bdseq = self._next_bdseq()
        self._set_will()

    def message_received(self, message) -> None:
        try:
            payload = decode(message.payload)
        except ValueError:
            self.log(f"a message on {message.topic} is not a Sparkplug B payload; ignored")
            return
        parsed = parse_topic(message.topic)
        if parsed is not None and parsed[1] == "DCMD":
            device = self.devices.get(parsed[3] or "")
            if device is not None and device.commands is not None:
                self._device_command(device, payload, bool(getattr(message, "retain", False)))
            return
        if any(m.name == REBIRTH and metric_value(m) is True for m in payload.metrics):
            with self._lock:
                self._need_birth = True
            self.publisher.wake()

    # -- commands (paho's thread) -----------------------------------------------------------
    def _dcmd(self, d: Device) -> str:
        return topic(self.group, "DCMD", self.edge_node, d.name)

    def _device_command(self, d: Device, payload, retained: bool = False) -> None:
        """A DCMD to device ``d``: a write of Maintenance becomes a maintenance command
        through the device's handler, its id made of the DCMD (module docstring);
        ``retained`` (stored by the broker): handed over as a refusal. Anything else is
        refused, said in the log. Never raises (paho's thread)."""
        for m in payload.metrics:
            value = metric_value(m)
            if m.name != MAINTENANCE or not isinstance(value, bool):
                self.log(f"device {d.name}: DCMD write of {m.name[:64]!r} refused: only "
                         f"{MAINTENANCE!r} (Boolean) is writable")
                continue
            state = "on" if value else "off"
            command = {"id": f"sparkplug-{payload.timestamp}-{m.timestamp}-{state}",
                       "command": "maintenance", "operator": "sparkplug", "state": state}
            refuse = RETAINED if retained else None
            if not payload.timestamp and not m.timestamp:
                refuse = NO_STAMP
            if not self._worker.put((d, command, refuse)):
                self.log(f"device {d.name}: DCMD write of {MAINTENANCE} refused: "
                         f"{self._worker.size} commands are waiting")

    def _carry_out(self, d: Device, command: dict, refuse: str | None = None) -> None:
        """The handler, on the command worker (neither paho's network thread nor the
        sender waits on it); a refusal is logged and the unchanged value said again.
        ``refuse``: a refusal made here (a retained DCMD), handed to a handler that takes
        one so that the audit log holds it too."""
        handler = d.commands
        raw = json.dumps(command).encode()
        try:
            if handler is None:
                reply = {"ok": False, "reason": "commands are off"}
            elif refuse is None:
                reply = handler(raw, "sparkplug")
            elif _takes_refusals(handler):
                reply = handler(raw, "sparkplug", refuse=refuse)
            else:
                reply = {"ok": False, "reason": refuse}
        except Exception as exc:        # noqa: BLE001 - a failure is a refusal, said
            reply = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        if isinstance(reply, dict) and reply.get("ok") is True:
            return                      # the MaintenanceChanged event publishes the change
        reason = reply.get("reason") if isinstance(reply, dict) else repr(reply)
        self.log(f"device {d.name}: DCMD write of {MAINTENANCE} = {command['state']} "
                 f"refused ({command['id']}): {reason}")
        with self._lock:
            d.said = None               # the host thinks it wrote: say the value again
            self._say_maintenance(d)

    # -- the devices' commands and maintenance (the runner's side) --------------------------
    def take_commands(self, d: Device, handler: CommandHandler | None) -> None:
        """Set device ``d``'s command handler (None: commands off): its DCMD subscribed or
        not, and its DBIRTH again (the metric's ``readOnly`` changes)."""
        with self._lock:
            before, d.commands = d.commands, handler
            if handler is not None:
                self._worker.start()
            if (before is None) == (handler is None):
                return
            if self._up:
                if handler is not None:
                    self.publisher.subscribe(self._dcmd(d), qos=0, retain_as_published=True)
                else:
                    self.publisher.unsubscribe(self._dcmd(d))
            d.born = False
        self.publisher.wake()

    def maintenance(self, d: Device, on: bool) -> None:
        """Device ``d`` went into maintenance or out of it: a DDATA of Maintenance now if
        its birth said otherwise; else the next DBIRTH says it."""
        with self._lock:
            d.maintenance = on
            self._say_maintenance(d)

    def _say_maintenance(self, d: Device) -> None:
        """A live DDATA of Maintenance alone, where the device is born on this connection
        and its host was last told another value (the caller holds the lock)."""
        if not d.born or d.said == d.maintenance or not self.publisher.connected:
            return
        p = Payload(timestamp=now_ms())
        add_metric(p, MAINTENANCE, DataType.Boolean, d.maintenance, p.timestamp)
        if self._publish("DDATA", p, d.name) is None:
            d.said = d.maintenance

    # -- publishing (the sender thread, holding the lock) -----------------------------------
    def _stamp(self, payload) -> bytes:
        """The session's next ``seq`` on ``payload`` (caller holds the lock)."""
        payload.seq = self._seq
        self._seq = (self._seq + 1) % 256
        return payload.SerializeToString()

    def _publish(self, kind: str, payload, device: str | None = None) -> str | None:
        """A birth or death: stamped and published directly (QoS 0, as specified). None
        when it went; else why not: the broker would not take it (too large, a topic it
        closes the connection on), or "" when the connection is gone. A message not sent
        gives its ``seq`` back (no gap for a host to see)."""
        where = topic(self.group, kind, self.edge_node, device)
        info = self.publisher.publish(where, self._stamp(payload), qos=0, retain=False)
        if info is not None and info.rc == 0:
            return None
        self._seq = (self._seq - 1) % 256
        if info is None:
            return self.publisher.refused_reason(where) or "not sent"
        return ""

    def before_send(self) -> None:
        """Births before any DDATA of the connection: all of them when the connection is
        new or a rebirth was asked for, a DBIRTH for a device registered since (and again
        one the broker did not take)."""
        if self._need_birth:
            for d in self.devices.values():
                d.born, d.unborn = False, None
            self._births()
        if self._need_birth:
            return                        # no device message before the NBIRTH
        for d in self.devices.values():
            if not d.born:
                self._dbirth(d)

    def held(self, lane: Lane) -> str | None:
        """A device's DDATA go only after its DBIRTH, and every device message after the
        NBIRTH (a host drops data of a device it has no birth of, or worse, reads it with
        the metrics of another birth): held while the births are to come, refused with
        the reason when the broker would not take them (docs/mqtt.md "Sparkplug B")."""
        d = next((x for x in self.devices.values() if x.lane is lane), None)
        if d is None or d.born:
            return None
        if self._nbirth_refused:
            return f"the NBIRTH was not delivered ({self._nbirth_refused}): no device " \
                   f"message goes without it"
        if d.unborn:
            return f"the DBIRTH of device {d.name} was not delivered ({d.unborn}): its data " \
                   f"would mean nothing to a host"
        return ""

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
        why = self._publish("NBIRTH", p)
        self._nbirth_refused = why or None
        if why is not None:
            return                        # tried again at the next round
        self._need_birth = False
        for d in self.devices.values():
            self._dbirth(d)

    def _dbirth(self, d: Device) -> None:
        p = Payload(timestamp=now_ms())
        t = p.timestamp
        for name, dtype, key, unit in DEVICE_METRICS:
            add_metric(p, name, dtype, _value(d.last, key), t,
                       properties={"engUnit": (DataType.String, unit)} if unit else None)
        add_metric(p, "Properties/Model", DataType.String, d.properties["model"], t)
        add_metric(p, "Properties/Backend", DataType.String, d.properties["backend"], t)
        add_metric(p, "Properties/Section", DataType.Int32, d.properties["section"], t)
        add_metric(p, "Properties/Interval", DataType.Float, d.properties["interval_s"], t,
                   properties={"engUnit": (DataType.String, "s")})
        add_metric(p, MAINTENANCE, DataType.Boolean, d.maintenance, t,
                   properties={"readOnly": (DataType.Boolean, d.commands is None)})
        why = self._publish("DBIRTH", p, d.name)
        d.born, d.unborn = why is None, why or None
        if d.born:
            d.said = d.maintenance

    def _ddata(self, m: Message, live: bool) -> bytes:
        """A stored score payload as the DDATA sent: live, or ``is_historical`` after the
        births of a later connection, with the interval's own timestamps."""
        body = json.loads(m.payload)
        p = Payload(timestamp=now_ms())
        t = int(round(body["ts"] * 1000))
        for name, dtype, key, _ in DEVICE_METRICS:
            add_metric(p, name, dtype, _value(body, key), t, historical=not live)
        return self._stamp(p)

    # -- the devices' side (their sinks) ----------------------------------------------------
    def add_device(self, name: str, outbox: Outbox, properties: dict) -> Device:
        with self._lock:
            d = self.devices[name] = Device(name, self.publisher.add_lane(outbox, self._ddata),
                                            properties)
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
        self.publisher.wake()

    def data(self, d: Device, body: dict) -> None:
        """One report interval of device ``d`` into its outbox (then published)."""
        with self._lock:
            self.publisher.put(d.lane, topic(self.group, "DDATA", self.edge_node, d.name),
                               json.dumps(body, allow_nan=False).encode(), qos=1,
                               kind="score", seq=body["seq"])
            d.last = body
        self.start()

    def remove_device(self, d: Device, flush_s: float) -> None:
        """Deliver what the broker takes within ``flush_s``, then DDEATH."""
        self.publisher.flush(d.lane, flush_s)
        with self._lock:
            if self.publisher.connected and d.born:
                self._publish("DDEATH", Payload(timestamp=now_ms()), d.name)
            del self.devices[d.name]
            self.publisher.close_lane(d.lane)

    @property
    def connected(self) -> bool:
        return self.publisher.connected

    def close(self) -> None:
        """NDEATH before an intentional disconnect, as the specification asks."""
        self._worker.stop()
        self.publisher.close(last=(topic(self.group, "NDEATH", self.edge_node), self._death(),
                                   1, False))
