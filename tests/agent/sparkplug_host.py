"""A Sparkplug B host application for the tests: it subscribes to ``spBv1.0/#`` on the test
broker and decodes every payload with pure-protobuf, an implementation independent of the
agent's encoder (Google's protobuf runtime, agent/sinks/sparkplug/payload.py). The messages are
declared here from the specification's field numbers, not imported from the agent.

A second decoder is the specification's reference: Eclipse Tahu's codec (npm
``sparkplug-payload``, pinned; ``scripts/setup --tests`` installs it into ``.node/``), run by
tests/agent/tahu_decode.js. ``tahu_decode`` decodes the raw bytes each message keeps with it and
``disagreements`` lists where the two decoders read a payload differently."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Annotated, Optional

import paho.mqtt.client as mqtt
from pure_protobuf.annotations import Field, double, uint
from pure_protobuf.message import BaseMessage

from harken.testkit.mosquitto import PASSWORD, USER


@dataclass
class PropertyValue(BaseMessage):
    type: Annotated[Optional[uint], Field(1)] = None
    is_null: Annotated[Optional[bool], Field(2)] = None
    int_value: Annotated[Optional[uint], Field(3)] = None
    long_value: Annotated[Optional[uint], Field(4)] = None
    float_value: Annotated[Optional[float], Field(5)] = None
    double_value: Annotated[Optional[double], Field(6)] = None
    boolean_value: Annotated[Optional[bool], Field(7)] = None
    string_value: Annotated[Optional[str], Field(8)] = None


@dataclass
class PropertySet(BaseMessage):
    keys: Annotated[list[str], Field(1)] = field(default_factory=list)
    values: Annotated[list[PropertyValue], Field(2)] = field(default_factory=list)


@dataclass
class Metric(BaseMessage):
    name: Annotated[Optional[str], Field(1)] = None
    alias: Annotated[Optional[uint], Field(2)] = None
    timestamp: Annotated[Optional[uint], Field(3)] = None
    datatype: Annotated[Optional[uint], Field(4)] = None
    is_historical: Annotated[Optional[bool], Field(5)] = None
    is_transient: Annotated[Optional[bool], Field(6)] = None
    is_null: Annotated[Optional[bool], Field(7)] = None
    properties: Annotated[Optional[PropertySet], Field(9)] = None
    int_value: Annotated[Optional[uint], Field(10)] = None
    long_value: Annotated[Optional[uint], Field(11)] = None
    float_value: Annotated[Optional[float], Field(12)] = None
    double_value: Annotated[Optional[double], Field(13)] = None
    boolean_value: Annotated[Optional[bool], Field(14)] = None
    string_value: Annotated[Optional[str], Field(15)] = None

    @property
    def value(self):
        if self.is_null:
            return None
        for name in ("int_value", "long_value", "float_value", "double_value",
                     "boolean_value", "string_value"):
            if getattr(self, name) is not None:
                return getattr(self, name)
        return None

    def unit(self) -> str | None:
        if self.properties is None or "engUnit" not in self.properties.keys:
            return None
        return self.properties.values[self.properties.keys.index("engUnit")].string_value


@dataclass
class Payload(BaseMessage):
    timestamp: Annotated[Optional[uint], Field(1)] = None
    metrics: Annotated[list[Metric], Field(2)] = field(default_factory=list)
    seq: Annotated[Optional[uint], Field(3)] = None

    def values(self) -> dict:
        return {m.name: m.value for m in self.metrics}


def encode_rebirth() -> bytes:
    """An NCMD ``Node Control/Rebirth`` = true, as a host sends it (Boolean is type 11)."""
    return bytes(Payload(timestamp=int(time.time() * 1000), metrics=[
        Metric(name="Node Control/Rebirth", datatype=11, boolean_value=True)]))


@dataclass
class Message:
    kind: str                    # NBIRTH, DBIRTH, DDATA, DDEATH, NDEATH
    edge_node: str
    device: str | None
    payload: Payload
    raw: bytes = b""             # the bytes as they arrived, for the second decoder


ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = Path(os.environ.get("HARKEN_NODE_MODULES", ROOT / ".node" / "node_modules"))
TAHU_SCRIPT = Path(__file__).with_name("tahu_decode.js")
# Sparkplug B data types by number, as Tahu names them (specification 3.0, 6.4.16)
TYPE_NAMES = {1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16",
              7: "UInt32", 8: "UInt64", 9: "Float", 10: "Double", 11: "Boolean", 12: "String",
              13: "DateTime", 14: "Text"}


def tahu_missing() -> str | None:
    """Why the reference decoder cannot run here (None when it can): no Node.js is a reason
    to skip; Node.js without the package is a set-up step not done."""
    if shutil.which("node") is None:
        return "skip: Node.js is not installed, so Eclipse Tahu's reference decoder cannot run"
    if not (NODE_MODULES / "sparkplug-payload").is_dir():
        return (f"fail: Eclipse Tahu's sparkplug-payload is not in {NODE_MODULES} "
                "(scripts/setup --tests installs it with npm)")
    return None


def tahu_decode(payloads: list[bytes]) -> list[dict]:
    """Each payload as Eclipse Tahu's codec reads it (one Node.js process for all)."""
    out = subprocess.run(["node", str(TAHU_SCRIPT)], input="".join(p.hex() + "\n"
                                                                   for p in payloads),
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    decoded = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(decoded) == len(payloads), out.stderr
    return decoded


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def disagreements(p: Payload, tahu: dict) -> list[str]:
    """Where Tahu's reading of a payload differs from pure-protobuf's (empty: they agree)."""
    diffs = []
    if "error" in tahu:
        return [f"Tahu refused the payload: {tahu['error']}"]

    def check(what: str, mine, theirs) -> None:
        if not _same(mine, theirs):
            diffs.append(f"{what}: pure-protobuf {mine!r}, Tahu {theirs!r}")

    check("timestamp", p.timestamp, None if "timestamp" not in tahu else int(tahu["timestamp"]))
    check("seq", p.seq, None if "seq" not in tahu else int(tahu["seq"]))
    theirs_all = tahu.get("metrics", [])
    check("metric count", len(p.metrics), len(theirs_all))
    for m, t in zip(p.metrics, theirs_all):
        name = m.name
        check(f"{name}: name", m.name, t.get("name"))
        check(f"{name}: type", TYPE_NAMES.get(m.datatype), t.get("type"))
        check(f"{name}: timestamp", m.timestamp, int(t["timestamp"]) if "timestamp" in t
              else None)
        check(f"{name}: historical", bool(m.is_historical), bool(t.get("isHistorical")))
        value = t.get("value")
        if value is not None and t.get("type") in ("Int64", "UInt64", "DateTime"):
            value = int(value)
        elif isinstance(value, str) and t.get("type") in ("Float", "Double"):
            value = float(value)                 # "NaN", "Infinity", "-Infinity"
        check(f"{name}: value", m.value, value)
        mine_props = {} if m.properties is None else {
            k: v.string_value if v.boolean_value is None else v.boolean_value
            for k, v in zip(m.properties.keys, m.properties.values)}
        theirs_props = {k: v.get("value") for k, v in (t.get("properties") or {}).items()}
        check(f"{name}: properties", mine_props, theirs_props)
    return diffs


class Host:
    """Every Sparkplug message under ``spBv1.0/<group>/``, decoded, in arrival order."""

    def __init__(self, port: int, group: str = "harken") -> None:
        self.group, self.messages, self.port = group, [], port
        self._lock = threading.Lock()
        # a persistent session: what the agent publishes while this host reconnects after a
        # broker restart is queued for it (the broker queues QoS 0 too: Broker extra)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-scada-host",
                             clean_session=False)
        self.c.username_pw_set(USER, PASSWORD)
        self.c.reconnect_delay_set(0.2, 1)
        subscribed = threading.Event()
        self.c.on_connect = lambda c, *a: c.subscribe(f"spBv1.0/{group}/#", qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(10), "the test host could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        m = Message(parts[2], parts[3], parts[4] if len(parts) > 4 else None,
                    Payload.loads(msg.payload), bytes(msg.payload))
        with self._lock:
            self.messages.append(m)

    def of(self, kind: str, device: str | None = None) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.kind == kind
                    and (device is None or m.device == device)]

    def wait(self, predicate, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return
            time.sleep(0.05)
        seen = [(m.kind, m.device, m.payload.seq) for m in self.messages][-40:]
        raise AssertionError(f"not seen in {timeout} s; got {seen}")

    def rebirth(self, edge_node: str) -> None:
        self.c.publish(f"spBv1.0/{self.group}/NCMD/{edge_node}", encode_rebirth(), qos=0)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
