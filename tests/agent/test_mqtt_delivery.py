"""Delivery you can believe (docs/mqtt.md "Protocol", "Refused messages", "Client ids";
docs/reliability.md "Delivery over MQTT"): the durable publisher against a real Mosquitto
with an ACL file and size limits, a relay that drops PUBACKs, freezes lines or closes them
after the CONNACK, and a broker that speaks only MQTT 3.1.1 (nats-server). The brokers are
shared by the module; each test has its own client ids and topics."""

import json
import time
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest

from harken.agent.config import ConfigError, MqttSection, load_config
from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.mqtt.publisher import Encoder, Publisher, packet_size
from harken.agent.sinks.mqtt.settings import default_client_id
from harken.agent.sinks.mqtt.sink import MqttSink
from harken.testkit.files import write_agent_config
from harken.testkit.mosquitto import PASSWORD, USER, Broker, Listener
from harken.testkit.nats import NatsBroker
from harken.testkit.relay import Relay
from tests.helpers import wait_for

SIZE_LIMIT = 2000          # message_size_limit: a bigger payload is dropped by the broker
PACKET_MAX = 4000          # max_packet_size: a bigger packet closes the connection
ACL = ("user harken\ntopic readwrite ok/#\ntopic read denied/#\n"
       "topic readwrite harken/n1/fan/#\ntopic read harken/n1/denied/#\n"
       "topic read spBv1.0/denied/#\n")


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """Mosquitto with an ACL (``denied/#`` and machine ``denied`` read-only) and both size
    limits, shared by the tests of this module."""
    b = Broker(tmp_path_factory.mktemp("strict"), acl=ACL,
               extra=f"message_size_limit {SIZE_LIMIT}\nmax_packet_size {PACKET_MAX}\n")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    b = NatsBroker(tmp_path_factory.mktemp("nats")).start()
    yield b
    b.stop()


class Recorder(Encoder):
    def __init__(self) -> None:
        self.connections: list[float] = []       # time.monotonic() of each connection
        self.lost = 0

    def connection_made(self) -> None:
        self.connections.append(time.monotonic())

    def connection_lost(self) -> None:
        self.lost += 1


def _settings(port: int, **kw) -> SimpleNamespace:
    return SimpleNamespace(**{"host": "127.0.0.1", "port": port, "keepalive": 60,
                              "username": USER, "resolved_password": lambda: PASSWORD,
                              "tls": False, "outbox_max": 1000, "protocol": "auto",
                              "ack_timeout_s": 30.0, **kw})


class _Run:
    """A publisher with one lane on ``tmp_path``'s outbox, its encoder and its log."""

    def __init__(self, port, tmp_path, client_id, encode=None, **kw) -> None:
        self.enc, self.logs = Recorder(), []
        self.pub = Publisher(_settings(port, **kw), client_id, self.enc, self.logs.append)
        self.box = Outbox(tmp_path / f"{client_id}.db")      # its folder made if needed
        self.lane = self.pub.add_lane(self.box, encode or (lambda m, live: m.payload))
        self.pub.start()

    def put(self, topic, payload, **kw):
        return self.pub.put(self.lane, topic, payload, **kw)

    def said(self, text) -> list[str]:
        return [m for m in self.logs if text in m]

    def close(self):
        self.pub.close()


def _got(listener, prefix):
    return [(t, p) for t, p, _ in listener.messages if t.startswith(prefix)]


def test_a_refused_publish_is_kept_apart_logged_once_and_blocks_nothing(strict, tmp_path):
    """MQTT 5: the ACL's refusal comes back in the PUBACK ("Not authorized"); under 3.1.1
    Mosquitto acknowledged it like a delivered one and the row was deleted."""
    listen = Listener(strict.port, topic="ok/acl/#", client_id="acl-listener")
    run = _Run(strict.port, tmp_path, "acl-publisher")
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        for i in range(6):
            run.put("ok/acl/x" if i % 2 == 0 else "denied/acl", f"row{i}".encode(), seq=i + 1)
        wait_for("every row settled", lambda: run.box.depth == 0, 30)
        listen.wait(lambda lt: len(_got(lt, "ok/acl")) == 3)
        assert [p for _, p in _got(listen, "ok/acl")] == ["row0", "row2", "row4"]   # in order
        refused = run.box.refused()
        assert [r.payload for r in refused] == [b"row1", b"row3", b"row5"]
        assert {r.reason for r in refused} == {"Not authorized (0x87)"}
        assert len(run.said("Not authorized")) == 1 and run.pub.protocol == "5"
        # sent again on request: refused again, nothing lost, nothing looping
        assert run.box.resend() == 3 and run.box.refused_count == 0
        wait_for("the resent rows refused again",
                 lambda: run.box.refused_count == 3 and run.box.depth == 0, 30)
        assert len(run.said("Not authorized")) == 1
    finally:
        run.close()
        listen.close()


def test_a_message_over_the_brokers_maximum_packet_size_is_refused_unsent(strict, tmp_path):
    """The CONNACK's Maximum Packet Size is honoured: no send, no disconnect, the next row
    goes; before, Mosquitto closed the connection at every try of the same first row."""
    listen = Listener(strict.port, topic="ok/big/#", client_id="big-listener")
    run = _Run(strict.port, tmp_path, "big-publisher")
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        run.put("ok/big/a", b"x" * (PACKET_MAX + 10), seq=1)
        run.put("ok/big/b", b"after", seq=2)
        listen.wait(lambda lt: ("ok/big/b", "after") in _got(lt, "ok/big"))
        wait_for("settled", lambda: run.box.depth == 0, 30)
        [r] = run.box.refused()
        size = packet_size("ok/big/a", b"x" * (PACKET_MAX + 10), 1, True)
        assert r.reason == f"too large for the broker ({size} > {PACKET_MAX} bytes)"
        assert len(run.enc.connections) == 1 and run.enc.lost == 0
        assert len(run.said("too large for the broker")) == 1
    finally:
        run.close()
        listen.close()


@pytest.mark.parametrize("protocol,size", [("3.1.1", PACKET_MAX + 10), ("5", SIZE_LIMIT + 10)])
def test_a_message_the_broker_closes_the_connection_on_is_refused_after_three_tries(
        strict, tmp_path, protocol, size):
    """3.1.1 over max_packet_size, and MQTT 5 over Mosquitto's message_size_limit (it
    answers with a PUBACK reason, 0x95, that MQTT 5 does not allow there, and paho drops
    the connection): the same row was retried forever, 39 log lines in 20 s. Now the row
    in flight at three closes in a row is refused, naming size, and the next one goes."""
    listen = Listener(strict.port, topic="ok/close/#", client_id=f"close-listener-{protocol}")
    run = _Run(strict.port, tmp_path, f"close-publisher-{protocol}", protocol=protocol)
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        run.put("ok/close/a", b"x" * size, seq=1)
        run.put("ok/close/b", b"after", seq=2)
        listen.wait(lambda lt: ("ok/close/b", "after") in _got(lt, "ok/close"), 40)
        wait_for("settled", lambda: run.box.depth == 0, 30)
        [r] = run.box.refused()
        assert "closed the connection each time it was sent (3 times)" in r.reason
        sent = packet_size("ok/close/a", b"x" * size, 1, protocol == "5")
        assert f"most likely too large for the broker ({sent} bytes" in r.reason
        assert len(run.enc.connections) == 4          # three tries, then the next row goes
        assert len(run.said("closed the connection each time")) == 1
        assert len(run.said("disconnected from")) == 1                 # said once
    finally:
        run.close()
        listen.close()


def test_a_network_that_drops_pubacks_is_a_dead_connection(strict, tmp_path):
    """No PUBACK for mqtt.ack_timeout_s with rows in flight: disconnect, one log line,
    reconnect, replay; before, the stats said connected while nothing more arrived."""
    relay = Relay(strict.port)
    listen = Listener(strict.port, topic="ok/acks/#", client_id="acks-listener")
    run = _Run(relay.port, tmp_path, "acks-publisher", ack_timeout_s=1)
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        relay.drop_pubacks = True
        for i in range(3):
            run.put("ok/acks/x", f"row{i}".encode(), seq=i + 1)
        wait_for("two dead connections found", lambda: run.pub.ack_timeouts >= 2, 30)
        assert run.enc.lost >= 2 and run.box.depth == 3
        assert len(run.said("no acknowledgement from")) == 1            # once, not each time
        relay.drop_pubacks = False
        wait_for("the rows acknowledged", lambda: run.box.depth == 0, 30)
        assert run.pub.connected and len(run.said("arrive again")) == 1
        listen.wait(lambda lt: {p for _, p in _got(lt, "ok/acks")} == {"row0", "row1", "row2"})
    finally:
        run.close()
        relay.close()
        listen.close()


def test_a_half_open_line_is_found_by_the_ack_timeout_and_the_rows_replayed(strict, tmp_path):
    """The relay stops forwarding both ways without closing (no FIN): keepalive would find
    it after 1.5 x 60 s; the ack timeout finds it after 1 s, and the rows go out on a new
    line as history."""
    relay = Relay(strict.port)
    listen = Listener(strict.port, topic="ok/frozen/#", client_id="frozen-listener")
    run = _Run(relay.port, tmp_path, "frozen-publisher", ack_timeout_s=1,
               encode=lambda m, live: (b"live:" if live else b"history:") + m.payload)
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        relay.freeze()
        for i in range(3):
            run.put("ok/frozen/x", f"row{i}".encode(), seq=i + 1)
        wait_for("the rows acknowledged on a new line", lambda: run.box.depth == 0, 30)
        assert len(run.enc.connections) == 2 and run.pub.ack_timeouts == 1
        listen.wait(lambda lt: len(_got(lt, "ok/frozen")) == 3)
        assert [p for _, p in _got(listen, "ok/frozen")] == [f"history:row{i}" for i in range(3)]
    finally:
        run.close()
        relay.close()
        listen.close()


def test_an_mqtt_311_broker_is_used_after_one_line_saying_refusals_cannot_be_seen(nats,
                                                                                   tmp_path):
    """nats-server refuses a version-5 CONNECT: the agent goes on in 3.1.1 by itself,
    says so once, and delivers; with mqtt.protocol = "5" it says what to set instead."""
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nats-sub",
                      protocol=mqtt.MQTTv311)
    subscribed = []
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("fb/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, codes, p: subscribed.append(codes)
    sub.on_message = lambda c, u, m: got.append(m.payload.decode())
    sub.connect("127.0.0.1", nats.port)
    sub.loop_start()
    run = _Run(nats.port, tmp_path, "nats-publisher", username=None)
    strict5 = _Run(nats.port, tmp_path, "nats-strict", username=None, protocol="5")
    try:
        wait_for("subscribed", lambda: subscribed, 30)
        for i in range(3):
            run.put("fb/x", f"row{i}".encode(), seq=i + 1)
        wait_for("delivered", lambda: run.box.depth == 0, 30)
        wait_for("received", lambda: got == ["row0", "row1", "row2"], 30)
        assert run.pub.protocol == "3.1.1"
        assert len(run.said("does not speak MQTT 5")) == 1
        assert "refused message cannot be seen" in run.said("does not speak MQTT 5")[0]
        wait_for("the refusal said", lambda: strict5.said("set mqtt.protocol"), 30)
        assert not strict5.pub.connected and strict5.pub.protocol == "5"
    finally:
        run.close()
        strict5.close()
        sub.loop_stop()
        sub.disconnect()


def test_two_clients_with_one_id_back_off_and_are_told_why(strict, tmp_path):
    """A copied SD-card image: one client id twice. Before, 40 takeovers in 40 s, each side
    logging "Unspecified error"; now each side waits longer every time, and a row of
    connections that do not last is named as a likely takeover (Mosquitto 2.0 closes a
    taken-over connection without saying why; a broker that says "Session taken over" is
    the test below)."""
    a, b = _Run(strict.port, tmp_path / "a", "same-id"), None
    try:
        wait_for("the first connected", lambda: a.pub.connected, 30)
        b = _Run(strict.port, tmp_path / "b", "same-id")
        said = lambda: a.said("another client may use client id same-id") + \
            b.said("another client may use client id same-id")   # noqa: E731
        wait_for("a takeover named", said, 30)
        assert "a copied SD card image or a second agent?" in said()[0]
        for run in (a, b):
            assert len(run.said("another client")) <= 1 and len(run.said("disconnected")) <= 1
        # the side that said it has waited longer each time (before: every second)
        run = a if a.said("another client") else b
        gaps = [y - x for x, y in zip(run.enc.connections, run.enc.connections[1:])]
        assert gaps[-1] >= 1.5, gaps          # 2 s or more, each wait +-25 % at random
    finally:
        a.close()
        if b is not None:
            b.close()


@pytest.mark.parametrize("reason", [None, 0x8E])
def test_a_broker_that_closes_right_after_the_connack_is_retried_with_back_off(strict,
                                                                                 tmp_path, reason):
    """Closed at once, silently or with MQTT 5's "Session taken over": the wait doubles
    (before: a new try every second); the takeover is named."""
    relay = Relay(strict.port)
    relay.close_after_connack, relay.disconnect_reason = True, reason
    run = _Run(relay.port, tmp_path, f"slam-publisher-{reason}")
    try:
        wait_for("three tries", lambda: len(run.enc.connections) >= 3, 30)
        gaps = [b - a for a, b in zip(run.enc.connections, run.enc.connections[1:])]
        # 1 s, then 2 s, each +-25 % at random (docs/mqtt.md; before: 1 s each time)
        assert gaps[1] >= 1.5, gaps
        if reason is None:
            assert len(run.said("disconnected from")) == 1
        else:
            [said] = run.said("another client uses client id slam-publisher-142: a copied "
                              "SD card image or a second agent?")
            assert "Session taken over" in said and not run.said("disconnected from")
            return
        relay.close_after_connack = False
        run.put("ok/slam", b"x", seq=1)
        wait_for("delivered once the broker behaves", lambda: run.box.depth == 0, 30)
    finally:
        run.close()
        relay.close()


def test_duplicate_pubacks_settle_each_row_once(strict, tmp_path):
    relay = Relay(strict.port)
    relay.duplicate_pubacks = True
    listen = Listener(strict.port, topic="ok/dup/#", client_id="dup-listener")
    run = _Run(relay.port, tmp_path, "dup-publisher")
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        for i in range(80):
            run.put("ok/dup/x", f"{i}".encode(), seq=i + 1)
        wait_for("delivered", lambda: run.box.depth == 0, 30)
        listen.wait(lambda lt: len(_got(lt, "ok/dup")) == 80)
        assert [p for _, p in _got(listen, "ok/dup")] == [str(i) for i in range(80)]
        assert run.box.refused_count == 0 and len(run.enc.connections) == 1
    finally:
        run.close()
        relay.close()
        listen.close()


def test_a_plain_client_on_a_tls_port_gets_a_hint(tls_broker, tmp_path):
    run = _Run(tls_broker.tls_port, tmp_path, "plain-on-tls")
    try:
        wait_for("the hint", lambda: run.said("is this a TLS port? set mqtt.tls = true"), 30)
        assert not run.said("disconnected from")
    finally:
        run.close()


def test_the_sink_counts_refusals_in_its_stats_and_a_refused_status_is_said_once(strict,
                                                                                  tmp_path):
    """A machine whose topics the ACL makes read-only: its retained state and scores go to
    the refused store (counted in the stats with the reason), its retained status (not
    kept: live information) is logged once."""
    logs = []
    settings = MqttSection(enabled=True, host="127.0.0.1", port=strict.port, username=USER,
                           password=PASSWORD)
    sink = MqttSink(settings, "n1", "denied", tmp_path / "state" / "outbox.db", log=logs.append)
    try:
        wait_for("connected", lambda: sink.publisher.connected, 30)
        sink.publisher.put(sink.lane, sink.topics["anomaly"], b'{"state": "ON"}', retain=True,
                           kind="state")
        sink.publisher.put(sink.lane, sink.topics["score"], b'{"seq": 1}', seq=1)
        wait_for("refused", lambda: sink.outbox.refused_count == 2, 30)
        health = sink.health()
        assert health["refused"] == 2 and health["refused_reason"] == "Not authorized (0x87)"
        assert health["outbox_depth"] == 0 and health["mqtt_protocol"] == "5"
        assert [m for m in logs if "harken/n1/denied/status" in m and "not kept" in m]
        assert len([m for m in logs if "Not authorized" in m]) == 2   # status, the rows
    finally:
        sink.close(flush_s=0)


def test_default_client_ids_are_stable_and_differ_between_machines_and_state_folders(tmp_path):
    """Two agents of one node on one host with their own state folders, or two machines:
    never the same id (before: harken-<node>-<machine> for both); the same agent started
    again: the same id."""
    one = default_client_id("", ("n1", "fan"), tmp_path / "a")
    assert one == default_client_id("", ("n1", "fan"), tmp_path / "a")
    assert one != default_client_id("", ("n1", "fan"), tmp_path / "b")
    assert one != default_client_id("", ("n1", "pump"), tmp_path / "a")
    assert one.startswith("harken-n1-fan-") and len(one) == len("harken-n1-fan-") + 8
    long = default_client_id("spb", ("g" * 128, "e" * 128), tmp_path)
    assert len(long) <= 128


@pytest.mark.parametrize("key,value,says", [
    ("client_id", "x" * 70_000, "at most 128 allowed"),
    ("client_id", "agent\x00one", "control or invisible character"),
    ("group_id", "plant\nline", "control or invisible character"),
    ("edge_node_id", "node\x1b[2J", "control or invisible character"),
    ("protocol", "4", "'auto', '5' or '3.1.1'"),
])
def test_ids_are_bounded_and_free_of_control_characters(tmp_path, key, value, says):
    cfg = write_agent_config(tmp_path / "a.toml", agent={"node": "n1"},
                             model={"bundle": "b"}, mqtt={key: value})
    with pytest.raises(ConfigError, match=f"key 'mqtt.{key}'") as err:
        load_config(cfg)
    assert says in str(err.value)
    ok = write_agent_config(tmp_path / "b.toml", agent={"node": "n1"}, model={"bundle": "b"},
                            mqtt={"protocol": 5, "client_id": "plant-1"})
    assert load_config(ok).mqtt.protocol == "5"


def test_the_outbox_command_lists_and_resends_refused_messages(tmp_path, capsys):
    from harken.agent.cli import main
    cfg = write_agent_config(tmp_path / "a.toml", agent={"node": "n1", "state_dir": "state"},
                             model={"bundle": "b"}, mqtt={"enabled": True})
    assert main(["outbox", "--config", str(cfg), "--list"]) == 2       # no outbox yet
    assert "no outbox yet" in capsys.readouterr().err
    box = Outbox(tmp_path / "state" / "outbox.db")
    rows = [box.put("harken/n1/machine/score", f"{i}".encode(), seq=i + 1) for i in range(3)]
    box.refuse(rows[1], "Not authorized (0x87)")
    box.close()
    assert main(["outbox", "--config", str(cfg), "--list"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["reason"] == "Not authorized (0x87)"
    assert main(["outbox", "--config", str(cfg), "--resend"]) == 0
    assert "1 refused message(s) back in the outbox" in capsys.readouterr().out
    box = Outbox(tmp_path / "state" / "outbox.db")
    assert [m.payload for m in box.pending()] == [b"0", b"2", b"1"] and not box.refused()
    box.close()


def test_sparkplug_data_the_broker_refuses_is_kept_apart_and_counted(strict, tmp_path):
    """A Sparkplug group the ACL makes read-only: each DDATA (QoS 1) is refused and kept
    in the device's refused store, counted in its stats; the births (QoS 0, as the
    specification asks) get no answer, so their refusal cannot be seen."""
    from harken.agent.sinks.sparkplug.node import EdgeNode
    logs = []
    settings = MqttSection(enabled=True, host="127.0.0.1", port=strict.port, username=USER,
                           password=PASSWORD)
    node = EdgeNode(settings, "denied", "edge", tmp_path, "0.0", log=logs.append)
    box = Outbox(tmp_path / "sparkplug-fan.db")
    device = node.add_device("fan", box, {"model": "m", "backend": "b", "section": 0,
                                          "interval_s": 2.0})
    try:
        for seq in (1, 2):
            node.data(device, {"ts": time.time(), "seq": seq, "score": 1.0, "threshold": 2.0,
                               "anomaly": False, "status": "ok", "rms_dbfs": -20.0,
                               "inference_ms": 1.0})
        wait_for("both refused", lambda: box.refused_count == 2 and box.depth == 0, 30)
        assert {r.reason for r in box.refused()} == {"Not authorized (0x87)"}
        assert len([m for m in logs if "spBv1.0/denied/DDATA/edge/fan" in m]) == 1
    finally:
        node.remove_device(device, 0)
        node.close()


# -- issue 37, second round (docs/reliability.md "Delivery over MQTT") ----------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Mosquitto whose max_packet_size (300 bytes) takes a Sparkplug NBIRTH and DDATA but
    not a DBIRTH (about 450 bytes)."""
    b = Broker(tmp_path_factory.mktemp("tiny"), extra="max_packet_size 300\n")
    b.start()
    yield b
    b.stop()


class _Raw:
    """A subscriber that keeps (topic, payload bytes, retain) of every message."""

    def __init__(self, port, topic, client_id, protocol=mqtt.MQTTv5, user=True):
        self.messages, subscribed = [], []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol)
        if user:
            self.c.username_pw_set(USER, PASSWORD)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda c, u, mid, codes, p: subscribed.append(codes)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for("subscribed", lambda: subscribed, 30)

    def of(self, part):
        return [(t, p, r) for t, p, r in self.messages if part in t]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _result(seq, anomaly, clock=None, event=None):
    from harken.agent.decision.records import IntervalResult
    return IntervalResult(ts=1000.0 + seq, seq=seq, score=3.0 if anomaly else 1.0,
                          threshold=2.0, anomaly=anomaly, interval_s=2.0, model="m",
                          backend="onnx", status="ok", rms_dbfs=-20.0, windows=3,
                          inference_ms=0.1, clock=clock, event=event)


def _sink_settings(port):
    return MqttSection(enabled=True, host="127.0.0.1", port=port, username=USER,
                       password=PASSWORD)


def test_outbox_resend_never_puts_an_old_retained_state_over_a_newer_one(strict, tmp_path,
                                                                         capsys):
    """Finding 3: the ACL refused the ON state (seq 2); later the topic was allowed and a
    normal run left a retained OFF (seq 5); ``harken outbox --resend`` put the ON back at
    the broker for good. Now the older refused state is dropped (said), a refused state
    that is still the newest goes out flagged ``"replayed": true``, and so do scores."""
    from harken.agent.cli import main
    cfg = write_agent_config(tmp_path / "a.toml", model={"bundle": "b"},
                             agent={"node": "n1", "machine": "fan", "state_dir": "state"},
                             mqtt={"enabled": True})
    path = tmp_path / "state" / "outbox.db"
    topic = "harken/n1/fan/anomaly"
    box = Outbox(path)                     # what the run whose ON was refused left
    on = box.put(topic, json.dumps({"state": "ON", "seq": 2, "ts": 2.0, "node": "n1",
                                    "machine": "fan", "replayed": False}).encode(),
                 retain=True, kind="state", seq=2)
    score = box.put("harken/n1/fan/score", json.dumps({"seq": 3, "replayed": False}).encode(),
                    seq=3)
    box.refuse(on, "Not authorized (0x87)")
    box.refuse(score, "Not authorized (0x87)")
    box.close()
    sink = MqttSink(_sink_settings(strict.port), "n1", "fan", path, log=lambda m: None)
    try:
        sink.interval(_result(5, anomaly=False))          # the newer state: OFF, retained
        wait_for("the OFF delivered", lambda: sink.outbox.depth == 0, 30)
        assert main(["outbox", "--config", str(cfg), "--resend"]) == 0
        out = capsys.readouterr().out
        assert "1 refused message(s) back in the outbox" in out
        assert "1 refused retained message(s) dropped: a newer one of their topic" in out
        sink.publisher.wake()
        wait_for("the resent score delivered", lambda: sink.outbox.depth == 0, 30)
    finally:
        sink.close(flush_s=2)
    late = _Raw(strict.port, "harken/n1/fan/#", "resend-late")     # retained values only
    try:
        wait_for("the retained state", lambda: late.of("/anomaly"), 30)
        [(_, payload, retained)] = late.of("/anomaly")
        assert retained and json.loads(payload)["state"] == "OFF"
    finally:
        late.close()
    # the newest state refused and resent: it goes, marked as a replay
    box = Outbox(path)
    row = box.put(topic, json.dumps({"state": "ON", "seq": 7, "ts": 7.0, "node": "n1",
                                     "machine": "fan", "replayed": False}).encode(),
                  retain=True, kind="state", seq=7)
    box.refuse(row, "Not authorized (0x87)")
    assert box.resend() == 1 and box.stale_dropped == 0
    box.close()
    listen = _Raw(strict.port, topic, "resend-listener")
    sink = MqttSink(_sink_settings(strict.port), "n1", "fan", path, log=lambda m: None)
    try:
        wait_for("the resent state", lambda: any(json.loads(p)["seq"] == 7
                                                 for _, p, _ in listen.messages), 30)
        body = [json.loads(p) for _, p, _ in listen.messages if json.loads(p)["seq"] == 7][0]
        assert body["state"] == "ON" and body["replayed"] is True
    finally:
        sink.close(flush_s=2)
        listen.close()


def test_an_unsynced_clock_is_flagged_on_the_state_the_event_and_sparkplug_ddata(strict,
                                                                                tmp_path):
    """Finding 10: with HARKEN_CLOCK=unsynced only the JSON score said "clock": "unsynced";
    the retained anomaly state, the event and Sparkplug's DDATA said nothing."""
    from harken.agent.decision.hysteresis import Event
    from harken.agent.sinks.sparkplug.node import EdgeNode
    from harken.agent.sinks.sparkplug.payload import decode, metric_value
    listen = _Raw(strict.port, "harken/n1/fan/#", "clock-listener")
    sink = MqttSink(_sink_settings(strict.port), "n1", "fan", tmp_path / "outbox.db",
                    log=lambda m: None)
    try:
        sink.interval(_result(1, anomaly=True, clock="unsynced",
                              event=Event("start", 1001.0, 3.0, 0.0)))
        live = lambda part: [json.loads(p) for _, p, r in listen.of(part) if not r]  # noqa: E731
        wait_for("delivered", lambda: all(live(p) for p in ("/score", "/event", "/anomaly")), 30)
        for part in ("/score", "/event", "/anomaly"):
            assert live(part)[-1]["clock"] == "unsynced", part
    finally:
        sink.close(flush_s=2)
        listen.close()
    node = EdgeNode(_sink_settings(strict.port), "clockgrp", "edge", tmp_path, "0.0",
                    log=lambda m: None)
    box = Outbox(tmp_path / "sparkplug-fan.db")
    device = node.add_device("fan", box, {"model": "m", "backend": "b", "section": 0,
                                          "interval_s": 2.0})
    try:
        sent = []
        enc = node._ddata
        node.publisher._lanes[0].encode = lambda m, live: sent.append(enc(m, live)) or sent[-1]
        node.data(device, {**_result(1, anomaly=False, clock="unsynced").payload()})
        wait_for("a DDATA encoded", lambda: sent, 30)
        values = {m.name: metric_value(m) for m in decode(sent[0]).metrics}
        assert values["clock_unsynced"] is True
    finally:
        node.remove_device(device, 0)
        node.close()


def test_sparkplug_data_of_a_device_whose_dbirth_the_broker_refuses_is_never_sent(tiny,
                                                                                  tmp_path):
    """Finding 15: Mosquitto's max_packet_size refused the DBIRTH (logged), and the DDATA
    of that device went out all the same, with no birth for a host to read them by. Now
    they are refused unsent, with the reason; the NBIRTH went."""
    from harken.agent.sinks.sparkplug.node import EdgeNode
    from harken.agent.sinks.sparkplug.payload import decode
    logs = []
    spb = _Raw(tiny.port, "spBv1.0/#", "dbirth-host")
    node = EdgeNode(_sink_settings(tiny.port), "tiny", "edge", tmp_path, "0.0",
                    log=logs.append)
    box = Outbox(tmp_path / "sparkplug-fan.db")
    device = node.add_device("fan", box, {"model": "m", "backend": "b", "section": 0,
                                          "interval_s": 2.0})
    sizes = []
    enc = node._ddata
    node.publisher._lanes[0].encode = lambda m, live: sizes.append(len(enc(m, live))) or \
        enc(m, live)
    try:
        node.describe(device, model="m", backend="b")
        for seq in (1, 2):
            node.data(device, _result(seq, anomaly=False).payload())
        wait_for("both refused", lambda: box.refused_count == 2 and box.depth == 0, 30)
        assert not sizes                        # never encoded to be sent
        assert spb.of("/NBIRTH/") and not spb.of("/DBIRTH/") and not spb.of("/DDATA/")
        assert decode(spb.of("/NBIRTH/")[0][1]).seq == 0
        [reason] = {r.reason for r in box.refused()}
        assert reason.startswith("the DBIRTH of device fan was not delivered (too large for "
                                 "the broker (")
        assert len([m for m in logs if "DDATA/edge/fan" in m]) == 1      # said once
        # a DDATA would have fitted: without the hold the broker took them
        assert len(enc(Message(0, "t", json.dumps(_result(1, False).payload()).encode(), 1,
                               False, "score", 0.0), True)) < 250
    finally:
        node.remove_device(device, 0)
        node.close()
        spb.close()


def test_a_broker_that_closes_on_a_topic_is_named_once_and_its_rows_refused(nats, tmp_path):
    """Finding 7: after the fall-back to 3.1.1, nats-server closes the connection on a
    topic with a '.' (a node named line2.pi, Sparkplug's spBv1.0): the same first row was
    sent, the line closed, forever, and nothing said but the fall-back. Now the row is
    refused after three closes, the topic's next row at once and the rest unsent, each
    naming the topic, said once; the rows on other topics are delivered."""
    got = _Raw(nats.port, "fb2/#", "nats-dots-sub", protocol=mqtt.MQTTv311, user=False)
    run = _Run(nats.port, tmp_path, "nats-dots", username=None)
    try:
        wait_for("connected", lambda: run.pub.connected, 30)
        for i in range(4):
            run.put("fb2/line2.pi/score", f"row{i}".encode(), seq=i + 1)
        run.put("fb2/ok", b"fine", seq=9)
        wait_for("every row settled", lambda: run.box.depth == 0, 60)
        assert [p for _, p, _ in got.messages] == [b"fine"]
        refused = run.box.refused()
        assert len(refused) == 4 and {r.topic for r in refused} == {"fb2/line2.pi/score"}
        assert "or its topic fb2/line2.pi/score not allowed there" in refused[0].reason
        assert {r.reason for r in refused[1:]} == {
            "the broker closed the connection on this topic (fb2/line2.pi/score) each time: "
            "it may not accept its characters (nats-server takes no '.' or ' ' in topics) or "
            "not allow it"}
        assert len(run.said("fb2/line2.pi/score")) == 2       # the row, then the topic
        assert not run.said("another client may use client id")
    finally:
        run.close()
        got.close()


def test_a_will_topic_the_broker_will_not_take_is_named_not_retried_in_silence(nats,
                                                                               tmp_path):
    """Finding 7, the JSON sink: nats-server drops the CONNECT itself when the Last Will's
    topic has a '.' (node line2.pi); before, the agent said only the fall-back line, at
    every level, forever. Now the Will's topic is named, once."""
    logs = []
    sink = MqttSink(MqttSection(enabled=True, host="127.0.0.1", port=nats.port), "line2.pi",
                    "fan", tmp_path / "outbox.db", log=logs.append)
    try:
        sink.interval(_result(1, anomaly=False))
        said = lambda: [m for m in logs if "Last Will's topic harken/line2.pi/fan/status" in m]  # noqa: E731
        wait_for("the Will's topic named", said, 60)
        assert "nats-server takes no '.' or ' ' in topics" in said()[0]
        assert not sink.publisher.connected and sink.outbox.depth >= 1
        assert len(said()) == 1
    finally:
        sink.close(flush_s=0)


@pytest.mark.parametrize("outbox,says", [
    ("/tmp/shared.db", "a plain file name inside agent.state_dir"),
    ("../other/outbox.db", "a plain file name inside agent.state_dir"),
    ("sub/outbox.db", "a plain file name inside agent.state_dir"),
    ("sparkplug-fan.db", "named like another file of agent.state_dir"),
    ("sparkplug.db", "named like another file of agent.state_dir"),
])
def test_the_outbox_file_is_a_name_in_the_agents_own_state_folder(tmp_path, outbox, says):
    """Finding 8: an absolute mqtt.outbox shared by two agents delivered 5 of 24 seqs
    twice; ``sparkplug-fan.db`` with profile "both" put JSON on the DDATA topic and
    protobuf on the score topic (one file for both sinks). Refused at load, one line."""
    cfg = write_agent_config(tmp_path / "a.toml", agent={"node": "n1", "machine": "fan"},
                             model={"bundle": "b"},
                             mqtt={"enabled": True, "profile": "both", "outbox": outbox})
    with pytest.raises(ConfigError, match="key 'mqtt.outbox'") as err:
        load_config(cfg)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_two_agents_publishing_as_one_node_and_machine_are_found_out_once(strict, tmp_path):
    """Finding 17: a cloned card renamed (or a second agent with its own state folder)
    publishes as the same node and machine: other client ids, so the broker sees nothing,
    and their seqs mix on one set of topics unnoticed. Now each finds the other's instance
    message on its own instance topic: said once, loudly, and in the stats; a restart of
    one agent (its past run's retained message) is not a duplicate."""
    first, second = [], []
    a = MqttSink(_sink_settings(strict.port), "n1", "fan", tmp_path / "a" / "outbox.db",
                 log=first.append)
    b = None
    try:
        wait_for("the first heard", lambda: a._echoed, 30)
        a.close(flush_s=1)                     # a restart of the same agent: no duplicate
        a = MqttSink(_sink_settings(strict.port), "n1", "fan", tmp_path / "a" / "outbox.db",
                     log=first.append)
        wait_for("the restarted one heard", lambda: a._echoed, 30)
        assert a.health()["duplicate_agent"] is None
        b = MqttSink(_sink_settings(strict.port), "n1", "fan", tmp_path / "b" / "outbox.db",
                     log=second.append)
        wait_for("both found out", lambda: a.duplicate and b.duplicate, 30)
        assert a.health()["duplicate_agent"]["state_dir"] == str(tmp_path / "b")
        assert b.health()["duplicate_agent"]["state_dir"] == str(tmp_path / "a")
        for logs in (first, second):
            [line] = [m for m in logs if "another agent publishes as node n1 machine fan" in m]
            assert "a cloned SD card?" in line
    finally:
        a.close(flush_s=0)
        if b is not None:
            b.close(flush_s=0)


def test_a_broker_closing_before_its_connack_blames_no_will_topic_without_dots(tmp_path):
    """The fleet bench's overloaded cluster closed connections before their CONNACK and the
    agent said its Last Will's topic (harken/n001/fan/status, nothing nats refuses) might
    be the cause. A plain topic is not suspected; the words name the broker instead."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def close_each() -> None:             # takes TCP, reads the CONNECT, closes: no CONNACK
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(4096)
                except OSError:
                    pass
    threading.Thread(target=close_each, daemon=True).start()
    logs = []
    sink = MqttSink(MqttSection(enabled=True, host="127.0.0.1", port=server.getsockname()[1]),
                    "n001", "fan", tmp_path / "outbox.db", log=logs.append)
    try:
        said = lambda: [m for m in logs if "times in a row before accepting it" in m]  # noqa: E731
        wait_for("the early closes said", said, 60)
        assert "refuses this client or is overloaded" in said()[0]
        assert "Last Will" not in said()[0]
    finally:
        sink.close(flush_s=0)
        stop.set()
        server.close()
