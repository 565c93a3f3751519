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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harken.agent.decision.records import IntervalResult, Stats, StatusEvent
from harken.agent.sinks.base import register
from harken.agent.sinks.mqtt.homeassistant import discovery_payload, discovery_topic
from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.mqtt.publisher import Encoder, NetworkSink, Publisher
from harken.agent.sinks.mqtt.settings import default_client_id
from harken.agent.sinks.mqtt.topics import MACHINE_KINDS, Topics, ha_status_topic

_log = logging.getLogger(__name__)


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
        if self.publisher.steady:          # not at every try against a broker that closes
            self.log(f"connected to {self.s.host}:{self.s.port}")
        self.publisher.publish(self.status_topic, "online", qos=1, retain=True)
        # subscribed before publishing: what was retained there comes back first (a past
        # run's, or another agent's), then our own
        self._echoed = False
        self.publisher.subscribe(self.instance_topic, qos=1)
        self._say_instance()
        if self.s.homeassistant:
            self._announce()
            self.publisher.subscribe(self.ha_status_topic, qos=1)

    def message_received(self, message) -> None:
        # Home Assistant restarted: it forgets non-retained state, so announce again
        if message.topic == self.ha_status_topic and message.payload == b"online":
            self._announce()
        elif message.topic == self.instance_topic:
            self._instance_seen(message.payload)

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
                     f"{self.machine} on {self.s.host}:{self.s.port} (host "
                     f"{other.get('host')}, state folder {other.get('state_dir')}, pid "
                     f"{other.get('pid')}; this one: host {self.instance['host']}, state "
                     f"folder {self.instance['state_dir']}): their scores, seqs and states "
                     f"mix on one set of topics; a cloned SD card? give each agent its own "
                     f"agent.node or agent.machine (docs/mqtt.md \"Client ids\")")
        self._say_instance()                   # so that the other one finds out too

    def _announce(self) -> None:
        """Home Assistant device discovery (retained, so a later Home Assistant sees it)."""
        self.publisher.publish(
            discovery_topic(self.s.discovery_prefix, self.node, self.machine),
            json.dumps(discovery_payload(self.s.prefix, self.node, self.machine,
                                         self.interval_s)), qos=1, retain=True)

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

    def status(self, event: StatusEvent) -> None:
        """Only the stats record is published (live, QoS 0, not through the outbox)."""
        if isinstance(event, Stats):
            stats = {"node": self.node, "machine": self.machine,
                     **{k: v for k, v in event.to_dict().items() if k not in ("status", "kind")}}
            self.publisher.publish(self.stats_topic, json.dumps(stats), qos=0)

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
                "mqtt_connected": self.publisher.connected, "mqtt_protocol":
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
        self.publisher.close(last=(self.status_topic, "stopped", 1, True))
