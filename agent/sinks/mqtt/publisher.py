"""The one durable MQTT publisher that every network sink delivers through (docs/mqtt.md).

It owns delivery, once:

- the paho client (``broker.make_client``: MQTT 3.1.1, clean session, the settings'
  credentials and TLS, reconnects backing off from 1 to 60 s), its Last Will, connecting,
  and the connection reports (``broker.ConnectionReports``: once per distinct problem, not
  at every retry);
- the sender thread, which publishes the rows of durable outboxes (agent/sinks/mqtt/
  outbox.py) oldest first with at most ``WINDOW`` of them unacknowledged;
- acking: a row leaves its outbox only when the broker's PUBACK for it arrives;
- replay: on every (re)connect whatever was not acknowledged is published again from the
  oldest, so a broker that was away, or an agent that was killed, loses nothing (a
  subscriber may see a message twice, always the same one);
- live or history: a row is *live* only when it goes out on the connection that was up when
  it was made; one made while the broker was away, by an earlier run, or sent again after a
  reconnect is history. Decided by connection, not by age, so no clock is involved;
- the publish latency, from the arrival of the audio a row reports to its PUBACK.

What the messages say it does not know. A network sink is an *encoder* on it: it decides
the topics and payloads, what must survive an outage (``put`` into a :class:`Lane`: one
outbox, and the function that turns a stored row into the bytes sent, told whether the row
is live) and what is live information published directly (``publish``: status, stats,
births); it hears about the connection through the :class:`Encoder` hooks.

How a new network sink plugs in (agent/sinks/mqtt/sink.py and agent/sinks/sparkplug/ are
the two that do): a :class:`NetworkSink` (a ``Sink`` of agent/sinks/base.py, registered as
any sink is, naming the ``mqtt.profile`` values that enable it) that

1. makes ``Publisher(settings, client_id, encoder, log)`` with itself (or a helper) as the
   ``Encoder``, sets its Last Will with ``will(...)``;
2. opens an ``Outbox`` per stream and ``add_lane(outbox, encode)``, then ``start()``;
3. in ``interval`` ``put``s each durable message into its lane (``arrived``: the audio's
   arrival, for the latency); publishes live ones with ``publish``;
4. in ``health`` reports ``lane.outbox.depth``, ``connected``, ``take_latency_ms(lane)``;
5. at ``close`` calls ``flush(lane, flush_s)``, then ``close(last=...)`` (the last message
   of a clean stop: ``stopped``, NDEATH; it closes the lanes left), or ``close_lane(lane)``
   where one connection serves several sinks (Sparkplug's devices).

Nothing of the paho lifecycle, the window, replay or acking is copied.

Threads and locks. paho calls ``on_publish`` holding its own message mutex, which
``client.publish()`` needs: so ``on_publish`` never takes ``lock`` (held by the sender
across its publishes, and by encoders around what must be ordered with them: Sparkplug's
``seq``), only the flight lock, which is never held across a publish.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from harken.agent.sinks.mqtt.broker import ConnectionReports, make_client, refusal
from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.mqtt.settings import MqttTableSink

WINDOW = 32            # outbox rows in flight (published, not yet acknowledged) at a time


def _forget_unacknowledged(client) -> None:
    """Drop paho's own copies of the messages the last connection left unacknowledged.

    paho keeps every QoS 1 message until its PUBACK and, right after the next CONNACK
    (after ``on_connect`` returns), sends them all again as they were encoded: a durable
    row would arrive once more marked live, and a Sparkplug DDATA of the old session
    before the new NBIRTH. The outbox is the one sender of record: it replays those rows
    itself, as history. Live messages of the old connection (status, births, stats) are
    stale on the new one and are made again by the encoders. paho < 3 (pyproject.toml)
    keeps them in ``_out_messages`` under ``_out_message_mutex``; a paho without them is
    left as it is (duplicates, never losses)."""
    lock, pending = getattr(client, "_out_message_mutex", None), getattr(client, "_out_messages", None)
    if lock is None or pending is None:
        return
    with lock:
        pending.clear()
        client._inflight_messages = 0


class NetworkSink(MqttTableSink):
    """A sink that delivers through a :class:`Publisher` and reads ``[mqtt]``: enabled when
    ``mqtt.enabled`` and ``mqtt.profile`` is one of its ``profiles``."""
    profiles: ClassVar[tuple[str, ...]]

    @classmethod
    def enabled(cls, config) -> bool:
        return config.mqtt.enabled and config.mqtt.profile in cls.profiles


class Encoder:
    """What a network sink hears from its publisher. Every hook is optional; ``connection_made``,
    ``message_received`` and ``connection_lost`` run on paho's thread, ``before_send`` on the
    sender's."""

    def connection_made(self) -> None:
        """Connected (clean session): publish what every connection starts with (a retained
        ``online``, discovery), subscribe, ask for births. Outbox rows follow it."""

    def message_received(self, message) -> None:
        """A message on a topic this sink subscribed to."""

    def connection_lost(self) -> None:
        """A connection that was up ended (not at a clean stop): the broker has sent its
        Last Will; set the next one if it differs."""

    def before_send(self) -> None:
        """The sender thread, holding ``lock``, before each round of outbox rows on a live
        connection: births go out here, so that data never precedes them."""


@dataclass(eq=False)
class Lane:
    """One outbox the publisher sends from, and how its rows are sent: ``encode(row, live)``
    gives the bytes for a stored row (the topic, QoS and retain flag are the row's)."""
    outbox: Outbox
    encode: Callable[[Message, bool], bytes]
    last_sent: int = 0                 # the highest row id handed to paho on this connection
    made_in: OrderedDict[int, int] = field(default_factory=OrderedDict)   # row -> connection
    arrived: OrderedDict[int, float] = field(default_factory=OrderedDict)  # row -> monotonic
    latency_ms: list[float] = field(default_factory=list)    # PUBACKed since last taken


class Publisher(ConnectionReports):
    """One broker connection delivering the outboxes of its lanes (module docstring)."""

    def __init__(self, settings, client_id: str, encoder: Encoder,
                 log: Callable[[str], None], thread_name: str = "mqtt-outbox") -> None:
        self.s, self.encoder, self.log = settings, encoder, log
        self.lock = threading.RLock()           # lanes, sessions, the encoder's ordering
        self._flight_lock = threading.Lock()    # in-flight rows, early PUBACKs, latency
        self._lanes: list[Lane] = []
        self._inflight: dict[int, tuple[Lane, int]] = {}    # mid -> (lane, row)
        # PUBACKs that beat the sender's bookkeeping: mid -> the publish count when it came.
        # An entry from before a publish began is some other message's (a direct publish, a
        # resend of an earlier connection) and must not ack a row that reuses its mid.
        self._acked_early: dict[int, int] = {}
        self._published = 0
        self._session: int | None = None        # the current connection's number
        self._started = False
        self._refused = False                   # the broker's CONNACK said no
        self._wake, self._stop = threading.Event(), threading.Event()
        self._connected = threading.Event()
        # set once a connection attempt has an outcome (connected, refused or failed): a
        # clean stop waits for it, so a short run does not exit mid-handshake
        self._settled = threading.Event()
        self._progress = threading.Event()      # a row was acknowledged
        self.client, self.tls = make_client(settings, client_id, log)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._sender = threading.Thread(target=self._send_loop, name=thread_name, daemon=True)
        self._sender.start()

    # -- the encoder's side ----------------------------------------------------------------
    def will(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """The Last Will of the next connection."""
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    def start(self) -> None:
        """Connect (in the background, retrying); once only."""
        with self.lock:
            if self._started:
                return
            self._started = True
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self.client.loop_start()

    def add_lane(self, outbox: Outbox, encode: Callable[[Message, bool], bytes]) -> Lane:
        lane = Lane(outbox, encode)
        with self.lock:
            self._lanes.append(lane)
        self._wake.set()
        return lane

    def put(self, lane: Lane, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
            kind: str = "score", seq: int | None = None, arrived: float | None = None) -> int:
        """Store one message durably in ``lane`` (then published from it); returns its row
        id, or -1 when a full disk dropped it (counted by the outbox). ``arrived``: the
        ``time.monotonic()`` of the audio it reports, for the publish latency."""
        # under the lock, so the sender cannot judge a row before its connection is noted
        with self.lock:
            session = self._session if self._connected.is_set() else None
            row = lane.outbox.put(topic, payload, qos=qos, retain=retain, kind=kind, seq=seq)
            if row >= 0 and session is not None:
                lane.made_in[row] = session
            if row >= 0 and arrived is not None:
                with self._flight_lock:
                    lane.arrived[row] = arrived
                    _bound(lane.arrived, self.s.outbox_max)
            _bound(lane.made_in, self.s.outbox_max)    # evicted rows are never sent
        self._wake.set()
        return row

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False):
        """Publish directly, not through an outbox: live information that a later
        connection has no use for. Returns paho's message info."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def wake(self) -> None:
        """A sender round now (the encoder has births to send)."""
        self._wake.set()

    def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe on this connection (clean session: again at every ``connection_made``)."""
        self.client.subscribe(topic, qos=qos)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def take_latency_ms(self, lane: Lane) -> list[float]:
        """The publish latencies of ``lane``'s rows acknowledged since the last call."""
        with self._flight_lock:
            latency, lane.latency_ms = lane.latency_ms, []
        return latency

    def flush(self, lane: Lane, flush_s: float) -> None:
        """Deliver what the broker takes of ``lane`` within ``flush_s``. A first connection
        still in progress (a TLS handshake takes a while) is waited for within the same
        time; a broker that has already refused or failed is not."""
        deadline = time.monotonic() + flush_s
        if self._started and not self._connected.is_set():
            self._settled.wait(flush_s)
        while lane.outbox.depth and self._connected.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._progress.clear()
            self._wake.set()
            self._progress.wait(min(left, 0.05))

    def close_lane(self, lane: Lane) -> None:
        """Stop sending from ``lane`` and close its outbox; what is left stays on disk."""
        with self.lock:
            if lane in self._lanes:
                self._lanes.remove(lane)
            with self._flight_lock:
                for mid in [mid for mid, (lt, _) in self._inflight.items() if lt is lane]:
                    del self._inflight[mid]
                lane.outbox.close()

    def close(self, last: tuple[str, bytes | str, int, bool] | None = None) -> None:
        """Clean stop: publish ``last`` (topic, payload, QoS, retain: the sink's goodbye)
        if connected, then disconnect without the Last Will; the lanes left are closed."""
        if last is not None and self._connected.is_set():
            with self.lock:
                info = self.client.publish(last[0], last[1], qos=last[2], retain=last[3])
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                # the link dropped between the check and the publish (paho raises on a
                # message it could not queue): the goodbye is lost, the stop must go on
                self.log("the connection dropped during the stop; the last message was "
                         "not sent")
        self._stop.set()
        self._wake.set()
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
        self._sender.join(timeout=2)
        for lane in list(self._lanes):
            self.close_lane(lane)

    # -- paho callbacks (paho's thread) ------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True         # the disconnect that follows says nothing new
            self._report(refusal(self.s.host, self.s.port, reason_code,
                                 "check mqtt.username and the password"))
            self._settled.set()
            return
        self._refused = False
        self._last_error = ""
        _forget_unacknowledged(client)
        with self._flight_lock:
            self._inflight.clear()
            self._acked_early.clear()
        with self.lock:
            for lane in self._lanes:
                lane.last_sent = 0                # resend everything not acknowledged
            self._session = (self._session or 0) + 1
        self.encoder.connection_made()
        self._connected.set()
        self._settled.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._settled.set()
        if self._stop.is_set():
            return
        if was:
            self.encoder.connection_lost()
        if not self._refused:
            self._report(f"disconnected from {self.s.host}:{self.s.port} ({reason_code}); "
                         "retrying")

    def _on_message(self, client, userdata, message) -> None:
        self.encoder.message_received(message)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._flight_lock:
            sent = self._inflight.pop(mid, None)
            if sent is None:
                self._acked_early[mid] = self._published
                if len(self._acked_early) > 2 * WINDOW:     # forget what no publish can use
                    self._acked_early = {m: n for m, n in self._acked_early.items()
                                         if n >= self._published}
                return
            self._acked(*sent)
        self._wake.set()

    def _acked(self, lane: Lane, row: int) -> None:
        """The broker has ``row``: out of the outbox (caller holds the flight lock)."""
        arrived = lane.arrived.pop(row, None)
        if arrived is not None:
            lane.latency_ms.append(1e3 * (time.monotonic() - arrived))
        lane.outbox.ack(row)
        self._progress.set()

    # -- sending (the sender thread) ---------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._connected.is_set():
                continue
            with self.lock:
                self.encoder.before_send()
                for lane in list(self._lanes):
                    if not self._send_pending(lane):
                        break

    def _send_pending(self, lane: Lane) -> bool:
        """Publish ``lane``'s rows not yet sent on this connection, as many as the window
        has room for; False when the connection is gone (the next one resends)."""
        with self._flight_lock:
            room = WINDOW - len(self._inflight)
        if room <= 0:
            return True
        for m in lane.outbox.pending(lane.last_sent, room):
            live = self._session is not None and lane.made_in.pop(m.id, None) == self._session
            payload = lane.encode(m, live)
            with self._flight_lock:
                self._published += 1
                began = self._published
            info = self.client.publish(m.topic, payload, qos=m.qos, retain=m.retain)
            if info.rc != 0:
                return False
            lane.last_sent = m.id
            with self._flight_lock:
                if self._acked_early.pop(info.mid, -1) >= began:
                    self._acked(lane, m.id)
                else:
                    self._inflight[info.mid] = (lane, m.id)
        return True


def _bound(rows: OrderedDict, most: int) -> None:
    """Keep the newest ``most`` entries (the outbox holds no more rows than that)."""
    while len(rows) > most:
        rows.popitem(last=False)
