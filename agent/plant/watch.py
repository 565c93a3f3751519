"""`harken watch`: the plant-side view of every node publishing under a prefix.

It subscribes with a persistent QoS 1 session (a stable client id, clean_session off), so
scores published while the watcher was away are delivered when it comes back; the broker
keeps them. A live table (rich) on a terminal, or one JSON line per message for piping.
Agents publishing Sparkplug B (``mqtt.profile``) are read too, from
``spBv1.0/<sparkplug group>/#``: each device's DDATA is a score, its births and deaths its
status.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from harken.agent.sinks.mqtt.broker import BrokerError, BrokerUrl, diagnose, refusal, use_tls
from harken.agent.sinks.mqtt.topics import parse_topic, subscription


@dataclass
class Row:
    node: str
    machine: str
    score: float | None = None
    threshold: float | None = None
    anomaly: str = "-"
    seq: int | None = None
    last_seen: float = float("nan")   # time of the latest score (retained state has none)
    audio: str = "-"                  # the latest interval's status: ok, silent, clipped, ...


@dataclass
class Fleet:
    """Latest state, status and stats per agent: (node, machine)."""
    prefix: str
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)
    status: dict[tuple[str, str], str] = field(default_factory=dict)
    stats: dict[tuple[str, str], dict] = field(default_factory=dict)
    malformed: int = 0                # messages skipped: not what docs/mqtt.md specifies

    def parse(self, topic: str, payload: bytes) -> dict | None:
        """The message as a record, or None when the topic is not a Harken one."""
        if topic.startswith("spBv1.0/"):
            return self._parse_sparkplug(topic, payload)
        parsed = parse_topic(self.prefix, topic)
        if parsed is None:
            return None
        text = payload.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return {"node": parsed.node, "machine": parsed.machine, "kind": parsed.kind,
                "payload": body}

    def _parse_sparkplug(self, name: str, payload: bytes) -> dict | None:
        """A Sparkplug message in the record form of the JSON topics: DDATA a score (with
        its anomaly state), DBIRTH/DDEATH the device's status, NDEATH every device's."""
        from harken.agent.sinks.sparkplug.payload import decode, metric_value, parse_topic as spb
        parsed = spb(name)
        if parsed is None:
            return None
        _, kind, node, device = parsed
        status = {"DBIRTH": "online", "DDEATH": "offline", "NDEATH": "offline"}.get(kind)
        if status is not None and (device or kind == "NDEATH"):
            return {"node": node, "machine": device or "*", "kind": "status",
                    "payload": status, "profile": "sparkplug-b"}
        if kind != "DDATA" or device is None:
            return None
        try:
            metrics = decode(payload).metrics
        except ValueError:
            self.malformed += 1
            return None
        values = {m.name: metric_value(m) for m in metrics}
        stamp = next((m.timestamp for m in metrics if m.name == "score"), 0)
        body = {"ts": stamp / 1000, "seq": values.get("interval_seq"),
                "score": values.get("score"), "threshold": values.get("threshold"),
                "anomaly": values.get("anomaly"), "status": values.get("status"),
                "historical": any(m.is_historical for m in metrics)}
        return {"node": node, "machine": device, "kind": "score", "payload": body,
                "profile": "sparkplug-b"}

    def update(self, record: dict, now: float | None = None) -> None:
        now = time.time() if now is None else now
        node, kind, body = record["node"], record["kind"], record["payload"]
        agent = (node, record["machine"])
        if kind == "status":
            if record["machine"] == "*":          # a Sparkplug NDEATH: the node's devices
                for key in [k for k in set(self.rows) | set(self.status) if k[0] == node]:
                    self.status[key] = str(body)
                return
            self.status[agent] = str(body)
            return
        if kind == "stats":
            self.stats[agent] = body if isinstance(body, dict) else {}
            return
        if kind == "score" and not _valid_score(body):
            # anyone allowed to publish under the prefix could send this: skip and count it,
            # never let it stop the view (a retained one would stop it at every start)
            self.malformed += 1
            return
        row = self.rows.setdefault((node, record["machine"]), Row(node, record["machine"]))
        if kind == "score" and isinstance(body, dict):
            # a queued score is as old as its timestamp, not its arrival
            row.last_seen = float(body["ts"]) if isinstance(body.get("ts"), (int, float)) \
                else now
            row.score, row.threshold, row.seq = body.get("score"), body.get("threshold"), \
                body.get("seq")
            row.audio = str(body.get("status", "-"))
            # JSON: the anomaly topic carries the state; Sparkplug: every DDATA does
            if (row.anomaly == "-" or record.get("profile") == "sparkplug-b") \
                    and isinstance(body.get("anomaly"), bool):
                row.anomaly = "ON" if body["anomaly"] else "OFF"
        elif kind == "anomaly":       # {"state": "ON", ...}; earlier agents sent a bare ON/OFF
            row.anomaly = str(body.get("state", "?")) if isinstance(body, dict) else str(body)

    def table(self, now: float | None = None):
        from rich.table import Table
        now = time.time() if now is None else now
        t = Table(title=f"harken fleet under '{self.prefix}/'", expand=False,
                  caption=f"{self.malformed} malformed message(s) skipped"
                  if self.malformed else None)
        for col in ("node", "machine", "score", "threshold", "anomaly", "audio", "status",
                    "seq", "last seen"):
            t.add_column(col, justify="right" if col in ("score", "threshold", "seq") else "left")
        agents = sorted(set(self.rows) | set(self.status) | set(self.stats))
        for node, machine in agents:
            for r in [self.rows.get((node, machine)) or Row(node, machine)]:
                status = self.status.get((node, machine), "?")
                age = now - r.last_seen
                # a lost input stops the scores; the stats record says so
                audio = "lost" if self.stats.get((node, machine), {}).get("audio") == "lost" \
                    else r.audio
                t.add_row(node, r.machine, _num(r.score), _num(r.threshold),
                          f"[bold red]{r.anomaly}[/]" if r.anomaly == "ON" else r.anomaly,
                          audio if audio in ("ok", "-") else f"[yellow]{audio}[/]",
                          status if status == "online" else f"[yellow]{status}[/]",
                          "" if r.seq is None else str(r.seq),
                          "-" if math.isnan(age) else f"{age:.0f} s ago")
        return t


def _number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _valid_score(body) -> bool:
    """A score payload as docs/mqtt.md specifies it (the fields the view reads)."""
    return (isinstance(body, dict) and _number(body.get("score"))
            and _number(body.get("threshold")) and _number(body.get("ts"))
            and (body.get("seq") is None or (isinstance(body.get("seq"), int)
                                             and not isinstance(body.get("seq"), bool))))


def _num(x) -> str:
    return "" if x is None else f"{x:.4g}"


def connect(url: BrokerUrl, prefix: str, client_id: str, ca_file: str | None,
            cert_file: str | None, key_file: str | None, insecure: bool,
            on_message, timeout: float = 10.0, sparkplug_group: str | None = "harken"):
    """A connected, subscribed paho client (its network loop running), or BrokerError."""
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=False)
    if url.username:
        client.username_pw_set(url.username, url.password)
    ctx = use_tls(client, ca_file, cert_file, key_file, insecure,
                  lambda msg: print(f"harken watch: {msg}", file=sys.stderr), "--tls-insecure") \
        if url.tls else None
    answer: dict = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        answer["rc"] = reason_code
        if not reason_code.is_failure:
            c.subscribe(subscription(prefix), qos=1)
            if sparkplug_group:
                c.subscribe(f"spBv1.0/{sparkplug_group}/#", qos=1)
        done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(url.host, url.port, keepalive=30)
    except OSError:
        raise BrokerError(diagnose(url.host, url.port, ctx)) from None
    client.loop_start()
    if not done.wait(timeout):
        client.loop_stop()
        raise BrokerError(f"broker {url.host}:{url.port} did not answer the MQTT connection "
                          f"within {timeout:g} s")
    if answer["rc"].is_failure:
        client.loop_stop()
        raise BrokerError(refusal(url.host, url.port, answer["rc"],
                                  "check the user name and password"))
    return client


def watch(url: BrokerUrl, prefix: str = "harken", client_id: str | None = None,
          as_json: bool = False, duration: float | None = None, ca_file: str | None = None,
          cert_file: str | None = None, key_file: str | None = None, insecure: bool = False,
          out: TextIO = sys.stdout, sparkplug_group: str | None = "harken") -> int:
    fleet = Fleet(prefix)
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        record = fleet.parse(msg.topic, msg.payload)
        if record is None:
            return
        with lock:
            fleet.update(record)
            if as_json:
                line = {"received": dt.datetime.now(dt.timezone.utc).isoformat(
                    timespec="milliseconds"), "topic": msg.topic, "retained": bool(msg.retain),
                    **record}
                out.write(json.dumps(line) + "\n")
                out.flush()

    client = connect(url, prefix, client_id or f"harken-watch-{socket.gethostname()}",
                     ca_file, cert_file, key_file, insecure, on_message,
                     sparkplug_group=sparkplug_group)
    end = None if duration is None else time.monotonic() + duration
    live_view = not as_json and out.isatty()
    try:
        if live_view:
            from rich.console import Console
            from rich.live import Live
            with Live(fleet.table(), console=Console(file=out), refresh_per_second=2) as live:
                while end is None or time.monotonic() < end:
                    time.sleep(0.5)
                    with lock:
                        live.update(fleet.table())
        else:
            while end is None or time.monotonic() < end:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if not as_json and not live_view:       # piped table view: one snapshot at the end
        from rich.console import Console
        with lock:
            Console(file=out, width=120).print(fleet.table())
    return 0
