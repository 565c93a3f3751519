"""The durable publisher's own contract (agent/sinks/mqtt/publisher.py), against a real
Mosquitto reached through a relay that can hold back what the broker says and cut the
line: a row leaves its outbox only at its PUBACK, at most WINDOW rows wait for one, a row
not acknowledged is replayed (as history) on the next connection, the Last Will goes out
when the line is cut and the clean stop's last message when it is not."""

from types import SimpleNamespace

from harken.agent.sinks.mqtt.outbox import Outbox
from harken.agent.sinks.mqtt.publisher import WINDOW, Encoder, Publisher
from harken.testkit.mosquitto import PASSWORD, USER, Listener
from harken.testkit.relay import Relay
from tests.helpers import wait_for


class Recorder(Encoder):
    """An encoder that sends each row's payload as stored and notes what happened."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []        # (row, live) as encoded
        self.connections = 0
        self.lost = 0

    def connection_made(self) -> None:
        self.connections += 1

    def connection_lost(self) -> None:
        self.lost += 1

    def encode(self, message, live: bool) -> bytes:
        self.sent.append((message.id, live))
        return message.payload


def _settings(port: int, **kw) -> SimpleNamespace:
    """What the publisher reads of the [mqtt] settings."""
    return SimpleNamespace(**{"host": "127.0.0.1", "port": port, "keepalive": 60,
                              "username": USER, "resolved_password": lambda: PASSWORD,
                              "tls": False, "outbox_max": 1000, "protocol": "auto",
                              "ack_timeout_s": 30.0, **kw})


def _payloads(listener: Listener, topic: str) -> list[str]:
    return [p for t, p, _ in listener.messages if t == topic]


def test_a_row_is_deleted_only_at_its_puback_and_replayed_after_a_reconnect(broker, tmp_path):
    relay = Relay(broker.port)
    listen = Listener(broker.port, topic="contract/#", client_id="contract-listener")
    enc, logs = Recorder(), []
    pub = Publisher(_settings(relay.port), "contract-publisher", enc, logs.append)
    pub.will("contract/status", "offline", qos=1)
    box = Outbox(tmp_path / "outbox.db")
    lane = pub.add_lane(box, enc.encode)
    pub.start()
    try:
        wait_for("the first connection", lambda: pub.connected, 30)

        # the broker has the row and has answered, but its PUBACK is held: the row stays
        relay.hold()
        pub.put(lane, "contract/data", b"one", seq=1)
        listen.wait(lambda lt: _payloads(lt, "contract/data") == ["one"])
        assert box.depth == 1
        relay.release()
        wait_for("the row acknowledged", lambda: box.depth == 0, 30)

        # the window: with PUBACKs held, WINDOW rows are handed to paho (it may pace them
        # further) and the rest wait; released, all arrive in order
        relay.hold()
        before = len(enc.sent)
        for i in range(WINDOW + 8):
            pub.put(lane, "contract/many", str(i).encode(), seq=2 + i)
        wait_for("a full window", lambda: len(enc.sent) - before >= WINDOW, 30)
        assert len(enc.sent) - before == WINDOW and box.depth == WINDOW + 8
        relay.release()
        wait_for("the window drained", lambda: box.depth == 0, 30)
        listen.wait(lambda lt: _payloads(lt, "contract/many") ==
                    [str(i) for i in range(WINDOW + 8)])

        # the line is cut before the PUBACK: the broker sends the Will, and the next
        # connection sends the row again, as history, until it is acknowledged
        relay.hold()
        row = pub.put(lane, "contract/data", b"two", seq=100)
        listen.wait(lambda lt: "two" in _payloads(lt, "contract/data"))
        assert box.depth == 1
        relay.cut()
        relay.release()
        listen.wait(lambda lt: "offline" in _payloads(lt, "contract/status"))
        wait_for("the reconnect", lambda: enc.connections == 2 and pub.connected, 60)
        wait_for("the replayed row acknowledged", lambda: box.depth == 0, 30)
        listen.wait(lambda lt: _payloads(lt, "contract/data").count("two") >= 2)
        assert enc.lost == 1
        assert [live for r, live in enc.sent if r == row] == [True, False]
        assert all(live for r, live in enc.sent if r != row)     # each sent once, live
        assert any("disconnected from" in m for m in logs)
    finally:
        pub.close(last=("contract/status", "stopped", 1, False))
        relay.close()
    listen.wait(lambda lt: _payloads(lt, "contract/status")[-1:] == ["stopped"])
    listen.close()


def test_after_a_reconnect_each_unacknowledged_row_goes_out_once_as_history(broker, tmp_path):
    """paho keeps its own copy of every QoS 1 message not yet acknowledged and sends them
    all again right after the next CONNACK, as they were encoded (live); the outbox replays
    the same rows as history. One sender of record: the subscriber sees each row once live
    (the first connection) and once as history (the replay), never a second live copy
    (docs/mqtt.md "Delivery guarantees")."""
    relay = Relay(broker.port)
    listen = Listener(broker.port, topic="once/#", client_id="once-listener")
    enc = Recorder()
    pub = Publisher(_settings(relay.port), "once-publisher", enc, lambda _: None)
    box = Outbox(tmp_path / "outbox.db")
    lane = pub.add_lane(box, lambda m, live: (b"live:" if live else b"history:") + m.payload)
    pub.start()
    try:
        wait_for("the first connection", lambda: pub.connected, 30)
        relay.hold()                                   # the PUBACKs never come back
        for i in range(3):
            pub.put(lane, "once/data", f"row{i}".encode(), seq=1 + i)
        listen.wait(lambda lt: len(_payloads(lt, "once/data")) == 3)
        relay.cut()
        relay.release()
        wait_for("the reconnect", lambda: enc.connections == 2 and pub.connected, 60)
        wait_for("the replayed rows acknowledged", lambda: box.depth == 0, 30)
        listen.wait(lambda lt: sum(p.startswith("history:")
                                   for p in _payloads(lt, "once/data")) == 3)
        # paho's copies, if any, arrive right after the CONNACK: before the replay ends
        got = _payloads(listen, "once/data")
        assert sorted(got) == sorted([f"live:row{i}" for i in range(3)] +
                                     [f"history:row{i}" for i in range(3)])
    finally:
        pub.close()
        relay.close()
        listen.close()
