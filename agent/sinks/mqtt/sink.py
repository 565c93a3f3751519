"""The JSON-topic MQTT sink (docs/mqtt.md): an encoder on the durable publisher
(agent/sinks/mqtt/publisher.py), which delivers.

What it decides: the topics (agent/sinks/mqtt/topics.py), the payloads, and what goes
where. Scores, events and anomaly-state changes go to the outbox (delivered in order, a row
kept until its PUBACK, replayed after a reconnect: a subscriber may see a message twice,
always with the same ``seq``); a score or event that goes out as history carries
``"replayed": true``. Status (retained, Last Will ``offline``), Home Assistant discovery and
the stats record are live information and skip the outbox. A broker that is down never
blocks scoring: ``interval`` only writes to SQLite. The stats record carries the publish
latency, from the arrival of the audio that completed an interval to the PUBACK of its
score.

Two agents publishing as one node and machine (a cloned SD card renamed, a second agent
with its own state folder: different client ids, so the broker sees nothing wrong) mix
their seqs on one set of topics. Each run of the sink has a random instance id, which it
publishes retained on ``<prefix>/<node>/<machine>/instance`` at every connection, after
subscribing to that topic itself: once its own message has come back, a message there with
another id is another agent publishing as this one. Said once, loudly (a warning naming
the other's host and state folder, ``duplicate_agent`` in the stats), and its own id
published once more so that the other agent finds out too (docs/mqtt.md "Client ids").

Commands (docs/mqtt.md "Commands"): when the runner hands the sink a command handler
(``commands``, set only with ``mqtt.commands = true``), the sink subscribes to the
machine's command topic at QoS 1 (MQTT 5: retain as published, so that a command
published retained is seen as one even while connected) and answers each message on its
result topic; what it refuses itself (retained, oversized) goes to the handler too, which
logs it in the audit log. The
handler runs on a worker thread of its own, one command at a time in arrival order: a
feedback command refits a threshold, which must hold up neither paho's network thread
(keepalive, PUBACKs) nor the scores. A payload over 64 KiB is refused unread; a handler
that raises gets a refused reply naming the error, and the worker goes on. Without a
handler the sink never subscribes: a command sent then reaches nothing. The machine's
maintenance state is published retained on its maintenance topic at every change and at
every connection, commands on or off, from the moment it is known: the runner's
MaintenanceChanged at start, or OFF at the first interval where it sent none.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harken.agent.decision.records import IntervalResult, MaintenanceChanged, Stats, StatusEvent
from harken.agent.sinks.base import CommandHandler, CommandWorker, register
from harken.agent.sinks.mqtt.homeassistant import discovery_payload, discovery_topic
from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.mqtt.publisher import Encoder, NetworkSink, Publisher
from harken.agent.sinks.mqtt.settings import default_client_id
from harken.agent.sinks.mqtt.topics import MACHINE_KINDS, Topics, ha_status_topic

_log = logging.getLogger(__name__)
MAX_COMMAND = 64 * 1024        # bytes of a command payload; a larger one is refused unread
QUEUED_COMMANDS = 64           # commands waiting for the worker; more are refused as busy


def refused(reason: str, command_id=None, command=None, **who) -> dict:
    """A reply refusing a command (docs/schemas/result.schema.json), for what the sink
    refuses itself; the handler's own replies have the same form."""
    return {"id": command_id, "command": command, **who, "ok": False, "reason": reason,
            "result": None}


RETAINED = ("a retained command is not carried out (it would come back at every "
            "connection): publish commands with retain off, and clear this one with an empty "
            "retained message")


def _takes_refusals(handler: CommandHandler) -> bool:
    """Whether ``handler`` (the runner's dispatcher, agent/operator/commands.py) takes a
    refusal the sink made (``refuse=``), to log it in the audit log."""
    try:
        return "refuse" in inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False


def _said(raw: bytes) -> tuple:
    """The id and command a payload names, where it is a JSON object that names them
    (for a reply to a command the handler could not answer); (None, None) otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    said = body.get("id"), body.get("command")
    return tuple(x if isinstance(x, str) and len(x) <= 128 else None for x in said)


def maintenance_payload(event: MaintenanceChanged, node: str, machine: str) -> dict:
    """The retained maintenance state (docs/schemas/maintenance.schema.json): ``ts`` is when
    the agent published the change, ``until`` when it ends by itself (null: when turned off)."""
    return {"state": "ON" if event.on else "OFF",
            "until": None if event.until is None else round(event.until, 3),
            "by": event.by, "via": event.via, "ts": round(time.time(), 3),
            "node": node, "machine": machine}


def plaintext_password_warning(settings) -> str | None:
    """One warning when a password would cross the network unencrypted (plain MQTT to a
    broker that is not this machine; the first such of ``mqtt.brokers``); None otherwise."""
    import ipaddress
    if settings.tls or not settings.username or settings.resolved_password() is None:
        return None
    ends = getattr(settings, "endpoints", None)
    for host, port in (ends() if ends is not None else [(settings.host, settings.port)]):
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            return (f"WARNING: the MQTT password goes to {host}:{port} unencrypted "
                    "(mqtt.tls = false); anyone on the network path can read it")
    return None


@register
class MqttSink(Encoder, NetworkSink):
    """Each machine's scores, events, state, status and stats on its JSON topics."""
    name = "mqtt"
    profiles = ("json", "both")

    @classmethod
    def from_config(cls, config) -> MqttSink:
        state = config.writable_folder("agent.state_dir", config.agent.state_dir)
        return cls(config.mqtt_settings(), config.agent.node, config.agent.machine,
                   state / config.mqtt.outbox, interval_s=config.decision.interval_s)

    def __init__(self, settings, node: str, machine: str, outbox_path: Path,
                 log: Callable[[str], None] | None = None, interval_s: float = 10.0) -> None:
        # the "harken" logger (configured by the command line: "harken: mqtt: ...")
        self.log = log or (lambda msg: _log.info(f"mqtt: {msg}"))
        self._warn = log or (lambda msg: _log.warning(f"mqtt: WARNING: {msg}"))
        self.s, self.node, self.machine = settings, node, machine
        self.outbox = Outbox(outbox_path, settings.outbox_max)
        scheme = Topics(settings.prefix, node)
        self.topics = {k: scheme.machine(machine, k) for k in MACHINE_KINDS}
        self.status_topic, self.stats_topic = self.topics["status"], self.topics["stats"]
        self.command_topic, self.result_topic = self.topics["command"], self.topics["result"]
        self.maintenance_topic = self.topics["maintenance"]
        # commands and maintenance (module docstring): the handler, whether a connection is
        # up (so that a handler set between a connection and its first publish is not
        # missed), the latest maintenance state, the worker and its queue
        self._cmd_lock = threading.Lock()
        self._commands: CommandHandler | None = None
        self._up = False
        # None until the runner says the state (MaintenanceChanged at start, sent only where
        # a state file exists) or the first interval comes without it (then OFF): a machine
        # restarted in maintenance never flips OFF then ON, and a retained ON left by an
        # earlier run does not outlive a restart (docs/mqtt.md "Commands")
        self._maintenance: bytes | None = None
        self._worker = CommandWorker(
            "mqtt-commands", QUEUED_COMMANDS, self._carry_out, lambda exc: _log.warning(
                f"mqtt: no reply to a command on {self.command_topic}: {exc}"))
        self.ha_status_topic = ha_status_topic(settings.discovery_prefix)
        self.interval_s = interval_s           # the report interval (score expiry)
        self._anomaly: bool | None = None
        self.instance_topic = f"{scheme.machine(machine, 'status').rsplit('/', 1)[0]}/instance"
        self.instance = {"instance": uuid.uuid4().hex[:16], "host": socket.gethostname(),
                         "state_dir": os.path.abspath(outbox_path.parent), "pid": os.getpid(),
                         "started": round(time.time(), 3), "node": node, "machine": machine}
        self._echoed = False                   # our instance message came back (this connection)
        self.duplicate: dict | None = None     # the other agent's instance message, once seen
        # node, machine, host and state folder: two agents never share a client id by
        # default, and one keeps its id across restarts (docs/mqtt.md "Client ids")
        client_id = settings.client_id or default_client_id("", (node, machine),
                                                            outbox_path.parent)
        try:
            self.publisher = Publisher(settings, client_id, self, self.log)
        except BaseException:
            self.outbox.close()
            raise
        warning = plaintext_password_warning(settings)
        if warning:
            _log.warning(warning)
        self.publisher.will(self.status_topic, "offline", qos=1, retain=True)
        self.lane = self.publisher.add_lane(self.outbox, self._as_sent)
        self.publisher.start()

    # -- what each connection says (the publisher's hooks) ----------------------------------
    def connection_made(self) -> None:
        # not at every try against a broker that closes; always on moving to another broker
        if self.publisher.steady or self.publisher.moved:
            self.log(f"connected to {self.publisher.where}")
        self.publisher.publish(self.status_topic, "online", qos=1, retain=True)
        # subscribed before publishing: what was retained there comes back first (a past
        # run's, or another agent's), then our own
        self._echoed = False
        self.publisher.subscribe(self.instance_topic, qos=1)
        self._say_instance()
        with self._cmd_lock:
            self._up = True
            if self._commands is not None:
                self.publisher.subscribe(self.command_topic, qos=1, retain_as_published=True)
            if self._maintenance is not None:
                self.publisher.publish(self.maintenance_topic, self._maintenance, qos=1,
                                       retain=True)
            if self.s.homeassistant:
                self._announce()
        if self.s.homeassistant:
            self.publisher.subscribe(self.ha_status_topic, qos=1)

    def connection_lost(self) -> None:
        with self._cmd_lock:
            self._up = False

    def message_received(self, message) -> None:
        # Home Assistant restarted: it forgets non-retained state, so announce again
        if message.topic == self.ha_status_topic and message.payload == b"online":
            with self._cmd_lock:
                self._announce()
        elif message.topic == self.instance_topic:
            self._instance_seen(message.payload)
        elif message.topic == self.command_topic:
            if not message.payload:    # how a retained command is cleared: no command at all
                return
            if message.retain:         # stored by the broker, not sent now: never carried out
                self._command_arrived(message.payload[:MAX_COMMAND], RETAINED)
                return
            self._command_arrived(message.payload)

    # -- commands (docs/mqtt.md "Commands") ---------------------------------------------------
    @property
    def commands(self) -> CommandHandler | None:
        """The runner's command handler; None: commands off, the command topic is not even
        subscribed to."""
        return self._commands

    @commands.setter
    def commands(self, handler: CommandHandler | None) -> None:
        with self._cmd_lock:
            before, self._commands = self._commands, handler
            if handler is not None:
                self._worker.start()
            if (before is None) == (handler is None) or not self._up:
                return                 # the next connection subscribes (or does not)
            if handler is not None:
                self.publisher.subscribe(self.command_topic, qos=1, retain_as_published=True)
            else:
                self.publisher.unsubscribe(self.command_topic)
            if self.s.homeassistant:
                self._announce()       # the switch comes or goes with the commands

    def _command_arrived(self, raw: bytes, refuse: str | None = None) -> None:
        """paho's thread: queue the command for the worker (with ``refuse``: a refusal the
        sink made, which the worker hands the dispatcher for its audit line); never raises
        (an exception here would end paho's network thread). A busy refusal is only
        replied: a flood must not write an audit line per message (docs/mqtt.md)."""
        try:
            if len(raw) > MAX_COMMAND:   # not parsed, not kept: refused by size alone
                raw, refuse = b"", (f"a command of {len(raw)} bytes is over the limit of "
                                    f"{MAX_COMMAND} bytes (64 KiB); not read")
            if not self._worker.put(raw if refuse is None else (refuse, raw)):
                self._reply(refused(f"the agent is busy: {QUEUED_COMMANDS} commands are "
                                    f"waiting; send it again later", *_said(raw)))
        except Exception as exc:       # noqa: BLE001 - the network thread must live on
            _log.warning(f"mqtt: a command on {self.command_topic} was dropped: {exc}")

    def _carry_out(self, job: bytes | tuple[str, bytes]) -> None:
        """The worker's job: one command, answered whatever the handler does."""
        self._reply(self._answer(job[1], job[0]) if isinstance(job, tuple)
                    else self._answer(job))

    def _answer(self, raw: bytes, refuse: str | None = None) -> dict:
        handler = self._commands
        if handler is None:
            return refused("commands are off on this agent (mqtt.commands)", *_said(raw))
        if refuse is not None and not _takes_refusals(handler):
            return refused(refuse, *_said(raw))
        try:
            reply = handler(raw, "mqtt") if refuse is None else \
                handler(raw, "mqtt", refuse=refuse)
        except Exception as exc:       # noqa: BLE001 - any failure is a refusal, said
            self.log(f"a command on {self.command_topic} failed: {type(exc).__name__}: {exc}")
            return refused(f"the agent could not carry out this command: "
                           f"{type(exc).__name__}: {exc}", *_said(raw))
        if not isinstance(reply, dict):
            return refused(f"the agent's command handler gave no reply "
                           f"({type(reply).__name__})", *_said(raw))
        return reply

    def _reply(self, reply: dict) -> None:
        """On the result topic, QoS 1, not retained; the node and machine added."""
        reply = {**reply, "node": self.node, "machine": reply.get("machine") or self.machine}
        try:
            data = json.dumps(reply, allow_nan=False, default=str)
        except ValueError as exc:      # a NaN somewhere in the result
            data = json.dumps(refused(f"the reply could not be written as JSON ({exc})",
                                      reply.get("id") if isinstance(reply.get("id"), str)
                                      else None, node=self.node, machine=self.machine))
        self.publisher.publish(self.result_topic, data, qos=1, retain=False)

    def _say_instance(self) -> None:
        self.publisher.publish(self.instance_topic, json.dumps(self.instance), qos=1,
                               retain=True)

    def _instance_seen(self, payload: bytes) -> None:
        """An instance message on our own topic: ours (we are heard), one from before ours
        came back (a past run: ignored), or another agent's after it: a duplicate."""
        try:
            other = json.loads(payload)
            theirs = other.get("instance")
        except (ValueError, AttributeError):
            return
        if theirs == self.instance["instance"]:
            self._echoed = True
            return
        if not self._echoed or self.duplicate is not None:
            return
        self.duplicate = {k: other.get(k) for k in ("instance", "host", "state_dir", "pid")}
        self._warn(f"another agent publishes as node {self.node} machine "
                     f"{self.machine} on {self.publisher.where} (host "
                     f"{other.get('host')}, state folder {other.get('state_dir')}, pid "
                     f"{other.get('pid')}; this one: host {self.instance['host']}, state "
                     f"folder {self.instance['state_dir']}): their scores, seqs and states "
                     f"mix on one set of topics; a cloned SD card? give each agent its own "
                     f"agent.node or agent.machine (docs/mqtt.md \"Client ids\")")
        self._say_instance()                   # so that the other one finds out too

    def _announce(self) -> None:
        """Home Assistant device discovery (retained, so a later Home Assistant sees it);
        the maintenance switch only while a command handler is set. The caller holds
        ``_cmd_lock``, so that two announcements cannot cross with the switch's state."""
        self.publisher.publish(
            discovery_topic(self.s.discovery_prefix, self.node, self.machine),
            json.dumps(discovery_payload(self.s.prefix, self.node, self.machine,
                                         self.interval_s, commands=self._commands is not None)),
            qos=1, retain=True)

    def _as_sent(self, m: Message, live: bool) -> bytes:
        """A score, event or anomaly state that goes out as history (made while the broker
        was away, by an earlier run of the agent, sent again after a reconnect or by
        ``harken outbox --resend``) carries ``"replayed": true``, so a dashboard keeps it out
        of its live value (docs/mqtt.md)."""
        if live or m.kind not in ("score", "event", "state"):
            return m.payload
        body = json.loads(m.payload)
        body["replayed"] = True
        return json.dumps(body, allow_nan=False).encode()

    # -- the sink interface -------------------------------------------------------------------
    def interval(self, result: IntervalResult) -> None:
        who = {"node": self.node, "machine": self.machine}
        # an unsynchronised clock is said on every message stamped by it (docs/agent.md
        # "Time you can trust"), the event and the retained state as the score
        clock = {} if result.clock is None else {"clock": result.clock}
        p = {**result.payload(), **who, "replayed": False}
        put = self.publisher.put
        put(self.lane, self.topics["score"], json.dumps(p, allow_nan=False).encode(),
            kind="score", seq=result.seq, arrived=result.arrived)
        if result.event is not None:
            put(self.lane, self.topics["event"], json.dumps(
                {"seq": result.seq, **result.event.to_dict(), **who, "replayed": False,
                 **clock}).encode(), kind="event")
        # the first interval of a run always says the state: a retained ON left by an
        # earlier run must not outlive a restart on normal sound
        if result.anomaly != self._anomaly:
            put(self.lane, self.topics["anomaly"], json.dumps(
                {"state": "ON" if result.anomaly else "OFF", "seq": result.seq,
                 "ts": round(result.ts, 3), **who, "replayed": False, **clock}).encode(),
                retain=True, kind="state")
        self._anomaly = result.anomaly
        if self._maintenance is None:          # the runner said no state at start: OFF
            self._say_maintenance(MaintenanceChanged(on=False, via="start"))

    def status(self, event: StatusEvent) -> None:
        """The stats record (live, QoS 0, not through the outbox) and the maintenance state
        (retained, QoS 1; published again at every connection, so one made while the
        broker was away is not lost)."""
        if isinstance(event, Stats):
            stats = {"node": self.node, "machine": self.machine,
                     **{k: v for k, v in event.to_dict().items() if k not in ("status", "kind")}}
            self.publisher.publish(self.stats_topic, json.dumps(stats), qos=0)
        elif isinstance(event, MaintenanceChanged):
            self._say_maintenance(event)

    def _say_maintenance(self, event: MaintenanceChanged) -> None:
        """Kept (said again at every connection) and published now if connected."""
        body = json.dumps(maintenance_payload(event, self.node, self.machine)).encode()
        with self._cmd_lock:
            self._maintenance = body
            if self._up:
                self.publisher.publish(self.maintenance_topic, body, qos=1, retain=True)

    def health(self) -> dict:
        """Outbox, connection and publish-latency figures for the stats record (latency
        percentiles over the scores acknowledged since the last record; None if none),
        and what the broker refused (the refused store and its newest reason)."""
        latency = self.publisher.take_latency_ms(self.lane)
        q = (np.percentile(latency, [50, 99]).round(1).tolist() if latency
             else [None, None])
        return {"outbox_depth": self.outbox.depth, "outbox_evicted": self.outbox.evicted,
                "outbox_disk_full": self.outbox.disk_full,
                "refused": self.outbox.refused_count, "refused_reason": self.outbox.last_refusal,
                "duplicate_agent": self.duplicate,
                "mqtt_connected": self.publisher.connected,
                # the broker connected now (null: none) and how often it changed (failover,
                # docs/mqtt.md "Several brokers: failover")
                "broker": self.publisher.broker, "broker_changes": self.publisher.broker_changes,
                "mqtt_protocol":
                    self.publisher.protocol, "ack_timeouts": self.publisher.ack_timeouts,
                "published": len(latency),
                "publish_ms_median": q[0], "publish_ms_p99": q[1]}

    @property
    def seq_start(self) -> int:
        return self.outbox.last_seq + 1

    def close(self, flush_s: float = 5.0) -> None:
        """Clean shutdown: deliver what the broker will take within ``flush_s``, publish
        ``stopped`` (retained), disconnect without the Last Will."""
        self.publisher.flush(self.lane, flush_s)
        self._worker.stop(timeout=flush_s)    # a command being carried out may still reply
        self.publisher.close(last=(self.status_topic, "stopped", 1, True))
