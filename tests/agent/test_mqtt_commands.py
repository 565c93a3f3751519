"""Operator commands over MQTT (docs/mqtt.md "Commands"), against a real Mosquitto whose
ACL file is the one docs/mqtt.md gives: the sink subscribes to its command topic only with
a command handler, answers every command on its result topic (a malformed one through the
handler, an oversized or retained one refused by the sink itself, a handler that raises
as a refusal), an outsider's command never reaches it, the maintenance state is retained;
Home Assistant's switch only with commands; Sparkplug's Maintenance metric and DCMD; and
``harken watch`` showing a machine in maintenance.

The handler here is the test's own (the seam the runner fills with the operator's command
dispatcher, agent/operator/commands.py): it records what it got and answers ok, or refused
where the payload is no JSON object."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import jinja2
import jsonschema
import paho.mqtt.client as mqtt
import pytest

from harken.agent.config import ConfigError, MqttSection, load_config
from harken.agent.decision.records import IntervalResult, MaintenanceChanged
from harken.agent.sinks.mqtt.homeassistant import SWITCH_COMMAND, discovery_payload
from harken.agent.sinks.mqtt.outbox import Outbox
from harken.agent.sinks.mqtt.sink import MAX_COMMAND, MqttSink
from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric, topic
from harken.testkit.files import write_agent_config
from harken.testkit.mosquitto import PASSWORD, USER, Broker
from tests.agent.sparkplug_host import Host
from tests.helpers import wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMAS = DOCS / "schemas"
OPERATOR, OUTSIDER = ("alice", "op-pass"), ("dashboard", "viewer-pass")
HOME_ASSISTANT = ("homeassistant", "ha-pass")


def documented_acl() -> str:
    """The Mosquitto ACL lines of docs/mqtt.md "Commands" (the block after 'acl_file'),
    so that the test enforces what the page tells a plant to write."""
    text = (DOCS / "mqtt.md").read_text()
    block = re.search(r"```\n(# harken-acl\n.*?)```", text, re.S)
    assert block, "docs/mqtt.md has no '# harken-acl' block"
    return block.group(1)


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory):
    """Mosquitto with the documented ACL and its users: the agents (harken), an operator
    (alice), Home Assistant and a reader who is no operator (dashboard)."""
    root = tmp_path_factory.mktemp("acl")
    b = Broker(root, acl=documented_acl())
    for user, password in (OPERATOR, OUTSIDER, HOME_ASSISTANT):
        subprocess.run(["mosquitto_passwd", "-b", str(root / "passwd"), user, password],
                       check=True, capture_output=True)
    b.start()
    yield b
    b.stop()


class Recorder:
    """The test's command handler: what it got, in order; ok for a JSON object with an id,
    refused otherwise; ``boom`` as the command raises."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str]] = []
        self.lock = threading.Lock()

    def __call__(self, raw: bytes, via: str) -> dict:
        with self.lock:
            self.got.append((raw, via))
        try:
            body = json.loads(raw)
        except ValueError:
            return {"id": None, "command": None, "ok": False, "reason": "not JSON",
                    "result": None}
        if body.get("command") == "boom":
            raise RuntimeError("the bank file is gone")
        return {"id": body.get("id"), "command": body.get("command"), "ok": True,
                "reason": None, "result": {"seen": len(self.got)}}

    def ids(self) -> list:
        """The id of each command the handler got (None for one that is no JSON)."""
        def said(raw):
            try:
                return json.loads(raw).get("id")
            except ValueError:
                return None
        with self.lock:
            return [said(raw) for raw, _ in self.got]


class Client:
    """A plant-side client (operator or not) that publishes commands at QoS 1 (MQTT 5: the
    PUBACK says whether the broker took it) and collects replies and retained state."""

    def __init__(self, port: int, user: str, password: str, name: str,
                 subscribe: str = "harken/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.acks: dict[int, str] = {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, str(rc))
        subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(subscribe, qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(30), f"{name} not subscribed"

    def send(self, topic_: str, payload, retain: bool = False) -> str:
        """Publish and wait for the broker's PUBACK; its reason code."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload)
        info = self.c.publish(topic_, data, qos=1, retain=retain)
        wait_for("the PUBACK", lambda: info.mid in self.acks, 30, 0.02)
        return self.acks[info.mid]

    def replies(self, machine: str) -> list[dict]:
        return [json.loads(p) for t, p, _ in list(self.messages)
                if t == f"harken/n1/{machine}/result"]

    def reply(self, machine: str, command_id) -> dict:
        wait_for(f"the reply to {command_id}", lambda: any(
            r["id"] == command_id for r in self.replies(machine)), 30, 0.02)
        return next(r for r in self.replies(machine) if r["id"] == command_id)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def make_sink(broker, tmp_path, machine: str, **settings) -> MqttSink:
    s = MqttSection(enabled=True, host="127.0.0.1", port=broker.port, username=USER,
                    password=PASSWORD, **settings)
    sink = MqttSink(s, "n1", machine, tmp_path / f"outbox-{machine}.db", interval_s=2)
    wait_for("the sink's connection", lambda: sink.publisher.connected, 30, 0.02)
    return sink


def command(i: str, **extra) -> dict:
    return {"id": i, "command": "maintenance", "operator": "alice", "state": "on", **extra}


def valid(name: str, payload: dict) -> None:
    jsonschema.validate(payload, json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def test_without_a_handler_nothing_is_subscribed_and_with_one_every_command_is_answered(
        acl_broker, tmp_path):
    """Commands off: a command reaches nothing (the sink has not subscribed: Home
    Assistant's status, sent after it by the same client, comes back first and alone);
    the handler set while connected: subscribed, discovery again with the switch, and a
    command answered with the handler's reply."""
    sink = make_sink(acl_broker, tmp_path, "off-on", homeassistant=True)
    heard: list[str] = []
    original = sink.message_received
    sink.message_received = lambda m: (heard.append(m.topic), original(m))
    alice = Client(acl_broker.port, *HOME_ASSISTANT, "ha-1", subscribe="#")
    handler = Recorder()
    try:
        assert alice.send("harken/n1/off-on/command", command("c0")) == "Success"
        assert alice.send("homeassistant/status", b"online") == "Success"
        discovery = "homeassistant/device/harken_n1_off-on/config"
        wait_for("discovery again", lambda: [t for t, _, _ in alice.messages
                                             if t == discovery][1:], 30, 0.02)
        assert "harken/n1/off-on/command" not in heard and handler.got == []
        assert alice.replies("off-on") == []
        first = json.loads(next(p for t, p, _ in alice.messages if t == discovery))
        assert first["components"]["harken_n1_off-on_maintenance"]["platform"] == \
            "binary_sensor"
        sink.commands = handler
        wait_for("discovery with the switch", lambda: json.loads(
            [p for t, p, _ in alice.messages if t == discovery][-1])["components"][
            "harken_n1_off-on_maintenance"]["platform"] == "switch", 30, 0.02)
        alice.send("harken/n1/off-on/command", command("c1"))
        reply = alice.reply("off-on", "c1")
        assert reply == {"id": "c1", "command": "maintenance", "ok": True, "reason": None,
                         "result": {"seen": 1}, "node": "n1", "machine": "off-on"}
        assert [(json.loads(raw)["id"], via) for raw, via in handler.got] == [("c1", "mqtt")]
        valid("result", reply)
        valid("command", command("c1"))
        # the reply is not retained: a later subscriber gets no old answer
        assert all(not r for t, _, r in alice.messages if t.endswith("/result"))
    finally:
        alice.close()
        sink.close(1)


def test_malformed_oversized_retained_and_failing_commands_each_get_a_refusal(
        acl_broker, tmp_path):
    sink = make_sink(acl_broker, tmp_path, "hostile")
    handler = Recorder()
    sink.commands = handler
    alice = Client(acl_broker.port, *OPERATOR, "alice-2")
    where = "harken/n1/hostile/command"
    try:
        alice.send(where, command("warm-up"))        # subscribed once this is answered
        alice.reply("hostile", "warm-up")
        # not JSON: the handler gets it as it came, and refuses it
        alice.send(where, b"maintenance on, please")
        wait_for("the refusal", lambda: any(r["reason"] == "not JSON"
                                            for r in alice.replies("hostile")), 30, 0.02)
        assert handler.got[-1] == (b"maintenance on, please", "mqtt")
        # over 64 KiB: refused by the sink, never parsed, never handed on
        big = json.dumps(command("big", pad="x" * MAX_COMMAND)).encode()
        alice.send(where, big)
        wait_for("the size refusal", lambda: any("over the limit" in (r["reason"] or "")
                                                 for r in alice.replies("hostile")), 30, 0.02)
        refusal = next(r for r in alice.replies("hostile") if "over the limit" in (r["reason"] or ""))
        assert refusal["ok"] is False and refusal["id"] is None
        assert f"{len(big)} bytes" in refusal["reason"]
        valid("result", refusal)
        # a handler that raises: a refusal naming the error, and the next command answered
        alice.send(where, command("b1", command="boom"))
        failed = alice.reply("hostile", "b1")
        assert failed["ok"] is False and "RuntimeError: the bank file is gone" in failed["reason"]
        assert failed["command"] == "boom"
        alice.send(where, command("after"))
        assert alice.reply("hostile", "after")["ok"] is True
        # retained: stored by the broker, it would come back at every connection: refused
        alice.send("harken/n1/retained/command", command("kept"), retain=True)
        other = make_sink(acl_broker, tmp_path, "retained")
        other.commands = second = Recorder()
        try:
            stale = alice.reply("retained", "kept")
            assert stale["ok"] is False and "retained" in stale["reason"] and second.got == []
        finally:
            alice.send("harken/n1/retained/command", b"", retain=True)
            other.close(1)
        assert handler.ids() == ["warm-up", None, "b1", "after"]
    finally:
        alice.close()
        sink.close(1)


def test_a_client_outside_the_acl_cannot_reach_the_agent(acl_broker, tmp_path):
    """The documented ACL: the operator's command reaches the handler and its reply comes
    back; the outsider's (a reader of the plant's topics, no operator) is refused by the
    broker (MQTT 5: "Not authorized" in the PUBACK) and never reaches the sink: the
    operator's next command is answered and the handler saw only the operator's two."""
    sink = make_sink(acl_broker, tmp_path, "guarded")
    handler = Recorder()
    sink.commands = handler
    alice = Client(acl_broker.port, *OPERATOR, "alice-3")
    mallory = Client(acl_broker.port, *OUTSIDER, "dashboard-3")
    where = "harken/n1/guarded/command"
    try:
        assert alice.send(where, command("a1")) == "Success"
        assert alice.reply("guarded", "a1")["ok"] is True
        assert mallory.send(where, command("m1", operator="dashboard")) == "Not authorized"
        # nor may the outsider answer for the agent or fake its state
        assert mallory.send("harken/n1/guarded/result", {"id": "a2", "ok": True}) == \
            "Not authorized"
        assert alice.send(where, command("a2")) == "Success"
        assert alice.reply("guarded", "a2")["ok"] is True
        assert handler.ids() == ["a1", "a2"]
        # the outsider reads the replies like any plant subscriber
        wait_for("mallory reads", lambda: len(mallory.replies("guarded")) == 2, 30, 0.02)
    finally:
        alice.close()
        mallory.close()
        sink.close(1)


def test_the_maintenance_state_is_retained_and_said_again_at_every_connection(
        acl_broker, tmp_path):
    sink = make_sink(acl_broker, tmp_path, "kept")
    try:
        live = Client(acl_broker.port, *OUTSIDER, "dashboard-4",
                      subscribe="harken/n1/kept/maintenance")
        sink.status(MaintenanceChanged(on=True, until=1_900_000_000.5, by="alice", via="mqtt"))
        wait_for("the state, live", lambda: live.messages, 30, 0.02)
        live.close()
        late = Client(acl_broker.port, *OUTSIDER, "dashboard-4b",
                      subscribe="harken/n1/kept/maintenance")
        wait_for("the retained state", lambda: late.messages, 30, 0.02)
        t, payload, retained = late.messages[0]
        body = json.loads(payload)
        assert retained and body["state"] == "ON" and body["until"] == 1_900_000_000.5
        assert (body["by"], body["via"], body["node"], body["machine"]) == \
            ("alice", "mqtt", "n1", "kept")
        valid("maintenance", body)
        sink.status(MaintenanceChanged(on=False, via="expiry"))
        wait_for("OFF", lambda: json.loads(late.messages[-1][1])["state"] == "OFF", 30, 0.02)
        valid("maintenance", json.loads(late.messages[-1][1]))
        late.close()
    finally:
        sink.close(1)
    # a state changed while the broker was away goes out at the next connection
    acl_broker.stop()
    away = MqttSection(enabled=True, host="127.0.0.1", port=acl_broker.port, username=USER,
                       password=PASSWORD)
    sink = MqttSink(away, "n1", "kept", tmp_path / "outbox-kept.db", interval_s=2)
    try:
        sink.status(MaintenanceChanged(on=True, by="bob", via="cli"))
        acl_broker.start()
        wait_for("connected", lambda: sink.publisher.connected, 60, 0.05)
        late = Client(acl_broker.port, *OUTSIDER, "dashboard-5",
                      subscribe="harken/n1/kept/maintenance")
        wait_for("the state made while away", lambda: any(
            json.loads(p).get("by") == "bob" for _, p, _ in late.messages), 30, 0.02)
        late.close()
    finally:
        sink.close(1)


def test_home_assistant_gets_the_maintenance_switch_only_with_commands():
    off = discovery_payload("harken", "n1", "fan")["components"]["harken_n1_fan_maintenance"]
    assert off["platform"] == "binary_sensor" and "command_topic" not in off
    assert off["state_topic"] == "harken/n1/fan/maintenance"
    on = discovery_payload("harken", "n1", "fan", commands=True)["components"][
        "harken_n1_fan_maintenance"]
    assert on["platform"] == "switch" and on["command_topic"] == "harken/n1/fan/command"
    assert (on["state_topic"], on["value_template"], on["state_on"], on["state_off"]) == \
        ("harken/n1/fan/maintenance", "{{ value_json.state }}", "ON", "OFF")
    assert on["qos"] == 1 and on["retain"] is False and on["optimistic"] is False
    # the command template, rendered as Home Assistant renders it (now() at each click):
    # a command the agent takes, with a fresh id each time
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    clock = iter([1_800_000_000.25, 1_800_000_007.5])

    class Now:
        def timestamp(self):
            return next(clock)
    rendered = [json.loads(env.from_string(on["command_template"]).render(
        value=v, now=Now)) for v in (on["payload_on"], on["payload_off"])]
    assert [r["state"] for r in rendered] == ["on", "off"]
    assert rendered[0]["id"] != rendered[1]["id"] and SWITCH_COMMAND == on["command_template"]
    for r in rendered:
        assert (r["command"], r["operator"]) == ("maintenance", "home-assistant")
        valid("command", r)


def test_mqtt_commands_is_a_true_or_false_and_nothing_else(tmp_path):
    cfg = write_agent_config(tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan"},
                             model={"bundle": "b"}, audio={"source": "file", "file": "x.wav"},
                             mqtt={"enabled": True, "commands": "yes"})
    with pytest.raises(ConfigError, match=r"key 'mqtt.commands' = 'yes': Input should be a "
                                          r"valid boolean") as err:
        load_config(cfg)
    assert "\n" not in str(err.value) and str(cfg) in str(err.value)
    on = write_agent_config(tmp_path / "on.toml", agent={"node": "n1", "machine": "fan"},
                            model={"bundle": "b"}, audio={"source": "file", "file": "x.wav"},
                            mqtt={"enabled": True, "commands": True})
    assert load_config(on).mqtt.commands is True


def test_sparkplug_maintenance_metric_and_dcmd(acl_broker, tmp_path):
    """DBIRTH carries Maintenance (read-only without commands); with a handler the DBIRTH
    is sent again with it writable and the device's DCMD subscribed: a write becomes a
    maintenance command (operator sparkplug, a sparkplug- id), a change a DDATA of
    Maintenance alone; a refused write is answered with the unchanged value, and other
    metrics are refused in the log."""
    from harken.agent.sinks.sparkplug.node import EdgeNode
    host = Host(acl_broker.port)
    logs: list[str] = []
    s = MqttSection(enabled=True, host="127.0.0.1", port=acl_broker.port, username=USER,
                    password=PASSWORD)
    node = EdgeNode(s, "harken", "n1", tmp_path, "test", log=logs.append)
    d = node.add_device("press", Outbox(tmp_path / "sparkplug-press.db"),
                        {"model": "m", "backend": "b", "section": 0, "interval_s": 2.0})
    node.describe(d, model="m", backend="b")

    def maintenance(message):
        metric = next(m for m in message.payload.metrics if m.name == "Maintenance")
        ro = dict(zip(metric.properties.keys, metric.properties.values))["readOnly"]
        return metric.value, ro.boolean_value
    try:
        host.wait(lambda h: h.of("DBIRTH", "press"))
        assert maintenance(host.of("DBIRTH", "press")[0]) == (False, True)
        got: list[dict] = []

        def handler(raw: bytes, via: str) -> dict:
            body = json.loads(raw)
            got.append({**body, "via": via})
            if len(got) == 2:
                return {"id": body["id"], "ok": False, "reason": "already off"}
            node.maintenance(d, body["state"] == "on")     # as the runner's event does
            return {"id": body["id"], "ok": True}
        node.take_commands(d, handler)
        host.wait(lambda h: len(h.of("DBIRTH", "press")) == 2)
        assert maintenance(host.of("DBIRTH", "press")[1]) == (False, False)

        def write(name, dtype, value, stamp):
            p = Payload(timestamp=stamp)
            add_metric(p, name, dtype, value, stamp)
            host.c.publish(topic("harken", "DCMD", "n1", "press"), p.SerializeToString(),
                           qos=0)
        write("Maintenance", DataType.Boolean, True, 1_800_000_000_000)
        host.wait(lambda h: any(m.payload.values().get("Maintenance") is True
                                for m in h.of("DDATA", "press")))
        change = host.of("DDATA", "press")[-1]
        assert [m.name for m in change.payload.metrics] == ["Maintenance"]
        assert got[0]["id"].startswith("sparkplug-1800000000000-")
        assert (got[0]["command"], got[0]["operator"], got[0]["state"], got[0]["via"]) == \
            ("maintenance", "sparkplug", "on", "sparkplug")
        write("score", DataType.Float, 1.0, 1_800_000_001_000)
        write("Maintenance", DataType.Boolean, False, 1_800_000_002_000)   # refused
        host.wait(lambda h: len(h.of("DDATA", "press")) == 2)
        assert host.of("DDATA", "press")[-1].payload.values() == {"Maintenance": True}
        assert len(got) == 2 and any("'score' refused" in m for m in logs)
        assert any("refused" in m and "already off" in m for m in logs)
    finally:
        node.remove_device(d, 1)
        node.close()
        host.close()


def test_sparkplug_retained_dcmd_is_refused_and_a_redelivery_has_the_same_id(acl_broker,
                                                                              tmp_path):
    """F40b #3: a DCMD left retained on the broker is refused (handed to the dispatcher as
    a refusal for its audit line) at every subscription, never carried out; a DCMD's id is
    made of its own timestamps, so the same DCMD delivered twice carries the same id (the
    dispatcher refuses the second as a replay), and one without timestamps is refused."""
    from harken.agent.sinks.sparkplug.node import NO_STAMP, RETAINED, EdgeNode
    host = Host(acl_broker.port)
    logs: list[str] = []
    s = MqttSection(enabled=True, host="127.0.0.1", port=acl_broker.port, username=USER,
                    password=PASSWORD)
    node = EdgeNode(s, "harken", "n3", tmp_path, "test", log=logs.append)
    d = node.add_device("saw", Outbox(tmp_path / "sparkplug-saw.db"),
                        {"model": "m", "backend": "b", "section": 0, "interval_s": 2.0})
    node.describe(d, model="m", backend="b")
    where = topic("harken", "DCMD", "n3", "saw")

    def write(value, stamp, retain=False, metric_stamp=None):
        p = Payload(timestamp=stamp)
        add_metric(p, "Maintenance", DataType.Boolean, value,
                   stamp if metric_stamp is None else metric_stamp)
        host.c.publish(where, p.SerializeToString(), qos=1, retain=retain).wait_for_publish(5)
    got: list[tuple] = []

    def handler(raw: bytes, via: str, refuse: str | None = None) -> dict:
        body = json.loads(raw)
        got.append((body["id"], body["state"], refuse))
        return {"id": body["id"], "ok": refuse is None, "reason": refuse}
    try:
        host.wait(lambda h: h.of("DBIRTH", "saw"))
        write(True, 1_800_000_000_000, retain=True)
        node.take_commands(d, handler)
        wait_for("the retained DCMD", lambda: got)
        assert got[0] == ("sparkplug-1800000000000-1800000000000-on", "on", RETAINED)
        write(False, 1_800_000_005_000)
        write(False, 1_800_000_005_000)        # the same DCMD again (a redelivery)
        write(True, 0, metric_stamp=0)
        wait_for("three DCMD", lambda: len(got) == 4)
        assert got[1][0] == got[2][0] == "sparkplug-1800000005000-1800000005000-off"
        assert got[1][2] is None and got[3][2] == NO_STAMP
        # subscribed again (as at every connection): the retained DCMD comes again, refused
        node.take_commands(d, None)
        node.take_commands(d, handler)
        wait_for("the retained DCMD again", lambda: len(got) == 5)
        assert got[4][2] == RETAINED
        assert any("retained DCMD" in m for m in logs)
    finally:
        host.c.publish(where, b"", qos=1, retain=True).wait_for_publish(5)
        node.remove_device(d, 1)
        node.close()
        host.close()


def test_sparkplug_without_commands_takes_no_dcmd(acl_broker, tmp_path):
    from harken.agent.sinks.sparkplug.node import EdgeNode
    host = Host(acl_broker.port)
    s = MqttSection(enabled=True, host="127.0.0.1", port=acl_broker.port, username=USER,
                    password=PASSWORD)
    logs: list[str] = []
    node = EdgeNode(s, "harken", "n2", tmp_path, "test", log=logs.append)
    d = node.add_device("lathe", Outbox(tmp_path / "sparkplug-lathe.db"),
                        {"model": "m", "backend": "b", "section": 0, "interval_s": 2.0})
    heard: list[str] = []
    original = node.message_received
    node.message_received = lambda m: (heard.append(m.topic), original(m))
    node.describe(d, model="m", backend="b")
    try:
        host.wait(lambda h: h.of("DBIRTH", "lathe"))
        p = Payload(timestamp=1)
        add_metric(p, "Maintenance", DataType.Boolean, True, 1)
        host.c.publish(topic("harken", "DCMD", "n2", "lathe"), p.SerializeToString(), qos=1)
        host.rebirth("n2")                 # after the DCMD, on the one subscribed topic
        host.wait(lambda h: len(h.of("DBIRTH", "lathe")) == 2)
        assert heard == ["spBv1.0/harken/NCMD/n2"] and d.maintenance is False
    finally:
        node.remove_device(d, 1)
        node.close()
        host.close()


def test_watch_shows_a_machine_in_maintenance():
    from harken.agent.plant.fleet import Fleet
    fleet = Fleet("harken")
    score = {"ts": 1.0, "seq": 1, "score": 0.5, "threshold": 1.0, "anomaly": False,
             "status": "ok", "maintenance": True}
    fleet.handle("harken/n1/fan/score", json.dumps(score).encode(), now=2.0)
    fleet.handle("harken/n1/fan/maintenance", json.dumps(
        {"state": "ON", "until": None, "by": "alice", "ts": 1.5}).encode(), now=2.0)
    fleet.handle("harken/n1/pump/maintenance", b'{"state": "OFF"}', now=2.0)
    # an operator's command or the agent's reply says nothing about a machine's state
    fleet.handle("harken/n1/ghost/command", json.dumps(command("x")).encode(), now=2.0)
    fleet.handle("harken/n1/ghost/result", b'{"id": "x", "ok": true}', now=2.0)
    fleet.handle("harken/n1/fan/maintenance", b'{"state": "maybe"}', now=2.0)
    assert fleet.agents[("n1", "fan")].maintenance is True
    assert fleet.agents[("n1", "pump")].maintenance is False
    assert ("n1", "ghost") not in fleet.agents and fleet.malformed == 0
    # Sparkplug: the DBIRTH's metric, then a DDATA of it alone (no score touched)
    birth = Payload(timestamp=1)
    add_metric(birth, "Maintenance", DataType.Boolean, True, 1)
    fleet.handle("spBv1.0/harken/DBIRTH/n2/press", birth.SerializeToString(), now=2.0)
    assert fleet.agents[("n2", "press")].maintenance is True
    change = Payload(timestamp=2)
    add_metric(change, "Maintenance", DataType.Boolean, False, 2)
    fleet.handle("spBv1.0/harken/DDATA/n2/press", change.SerializeToString(), now=3.0)
    row = fleet.agents[("n2", "press")]
    assert row.maintenance is False and row.score is None and row.status == "online"
    from rich.console import Console
    console = Console(width=200, record=True, force_terminal=False)
    console.print(fleet.table(now=3.0))
    lines = {line.split("│")[2].strip(): line for line in console.export_text().splitlines()
             if line.count("│") > 3}
    assert "maintenance" in lines["fan"] and "maintenance" not in lines["pump"]
    assert "maintenance" not in lines["press"]


def _interval(seq: int) -> IntervalResult:
    return IntervalResult(ts=1000.0 + seq, seq=seq, score=1.0, threshold=2.0, anomaly=False,
                          interval_s=2.0, model="m", backend="onnx", status="ok",
                          rms_dbfs=-20.0, windows=3, inference_ms=0.1)


def _marked(sink: MqttSink, listener: Client, mark: str) -> None:
    """Everything the sink published before this is at the listener (one client, QoS 1:
    in order) once the mark is."""
    sink.publisher.publish(f"harken/n1/{sink.machine}/mark", mark, qos=1)
    wait_for(mark, lambda: any(p == mark.encode() for _, p, _ in listener.messages), 30, 0.02)


def test_a_machine_restarted_in_maintenance_never_says_off(acl_broker, tmp_path):
    """The runner says ON at start (its state file): the retained maintenance topic goes
    from ON (the earlier run) to ON (this one), never OFF between them; a machine the runner
    says nothing about (no state file) gets OFF at its first interval, not before."""
    listener = Client(acl_broker.port, *OUTSIDER, "dashboard-6", subscribe="harken/n1/#")
    try:
        def states(machine):
            return [json.loads(p)["state"] for t, p, _ in list(listener.messages)
                    if t == f"harken/n1/{machine}/maintenance" and p]
        first = make_sink(acl_broker, tmp_path, "restart")
        first.status(MaintenanceChanged(on=True, by="alice", via="cli"))
        wait_for("ON", lambda: "ON" in states("restart"), 30, 0.02)
        first.close(1)
        again = make_sink(acl_broker, tmp_path, "restart")
        try:
            _marked(again, listener, "connected")
            again.status(MaintenanceChanged(on=True, by="alice", via="start"))
            again.interval(_interval(1))
            _marked(again, listener, "scored")
            assert states("restart") == ["ON", "ON"]
        finally:
            again.close(1)
        fresh = make_sink(acl_broker, tmp_path, "fresh")
        try:
            _marked(fresh, listener, "fresh connected")
            assert states("fresh") == []
            fresh.interval(_interval(1))
            wait_for("OFF", lambda: states("fresh") == ["OFF"], 30, 0.02)
        finally:
            fresh.close(1)
    finally:
        listener.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_command_published_retained_while_the_agent_listens(acl_broker, tmp_path, protocol):
    """MQTT 5: the sink subscribes with retain-as-published, so a command published
    retained while it is connected arrives flagged retained and is refused like one stored
    before. MQTT 3.1.1 cannot say so (the broker clears the flag for a live subscriber): it
    is carried out once, and its id stops a replay (docs/mqtt.md "Commands")."""
    machine = f"live-retained-{protocol}"
    sink = make_sink(acl_broker, tmp_path, machine, protocol=protocol)
    sink.commands = handler = Recorder()
    alice = Client(acl_broker.port, *OPERATOR, f"alice-7-{protocol}")
    where = f"harken/n1/{machine}/command"
    try:
        alice.send(where, command("warm-up"))
        alice.reply(machine, "warm-up")
        alice.send(where, command("ret1"), retain=True)
        reply = alice.reply(machine, "ret1")
        if protocol == "5":
            assert reply["ok"] is False and "retained" in reply["reason"]
            assert handler.ids() == ["warm-up"]
        else:
            assert reply["ok"] is True and handler.ids() == ["warm-up", "ret1"]
    finally:
        alice.send(where, b"", retain=True)
        alice.close()
        sink.close(1)


def test_the_sinks_own_refusals_reach_the_audit_log(acl_broker, tmp_path):
    """With the real dispatcher (agent/operator/commands.py) as the handler, a command the
    sink refuses itself (retained, over 64 KiB) is in the audit log like every other
    outcome, with its id where it could be read; nothing is carried out."""
    from harken.agent.operator import audit
    from harken.agent.operator.commands import Commands
    state = tmp_path / "audit-state"
    state.mkdir()
    machine = "audited"
    sink = make_sink(acl_broker, tmp_path, machine)
    sink.commands = Commands(state, {}).for_machine(machine)
    alice = Client(acl_broker.port, *OPERATOR, "alice-8")
    where = f"harken/n1/{machine}/command"
    try:
        alice.send(where, command("kept-1"), retain=True)
        assert "retained" in alice.reply(machine, "kept-1")["reason"]
        alice.send(where, b"", retain=True)
        alice.send(where, json.dumps(command("big-1", pad="x" * MAX_COMMAND)).encode())
        wait_for("the size refusal", lambda: any("over the limit" in (r["reason"] or "")
                                                 for r in alice.replies(machine)), 30, 0.02)
        lines = audit.read(state, machine)
        assert [(a["outcome"], a["via"], a["command_id"], a["action"]) for a in lines] == [
            ("refused", "mqtt", "kept-1", "maintenance"), ("refused", "mqtt", None, "command")]
        assert "retained" in lines[0]["reason"] and "over the limit" in lines[1]["reason"]
        assert lines[0]["operator"] == "alice"
    finally:
        alice.close()
        sink.close(1)
