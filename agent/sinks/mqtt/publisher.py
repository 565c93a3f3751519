"""The one durable MQTT publisher that every network sink delivers through (docs/mqtt.md).

It owns delivery, once:

- the paho client (``broker.make_client``: MQTT 5, or 3.1.1 by setting or by itself when
  the broker refuses 5; clean session; the settings' credentials and TLS), its Last Will,
  connecting, and the connection reports (``broker.ConnectionReports``: once per distinct
  problem, not at every retry);
- the brokers (``mqtt.brokers``, or the one ``host``/``port``; docs/mqtt.md "Several
  brokers: failover"): the first that answers, in list order; a failed attempt or a lost
  connection sends the next attempt to the next broker of the list (round robin). The wait
  before it (``reconnect_delay``): 0 to 1 s after losing a connection that was up or moving
  on within a round; after a whole round of failed attempts 1, 2, 4 ... up to 60 s, each
  +-25 % at random so that a fleet whose broker died does not come back in lockstep; and
  doubling after connections that one broker ends at once, several in a row, or that are
  taken over by another client with the same id (short connections to different brokers, a
  rolling restart, never grow it). A broker that takes TCP but does not answer the CONNECT
  within ``broker.CONNECT_TIMEOUT_S`` is left for the next. paho reconnects to the host
  and port that ``connect_async`` last gave it, so the callbacks that see a failure give
  it the next broker there;
- the sender thread, which publishes the rows of durable outboxes (agent/sinks/mqtt/
  outbox.py) oldest first with at most ``WINDOW`` of them unacknowledged;
- acking: a row leaves its outbox only when the broker's PUBACK for it arrives;
- holding (docs/mqtt.md "Wear"): a score put while a connection is up is held in the
  outbox's memory, written only if no PUBACK comes within ``mqtt.outbox_hold_s``; each
  sender round writes the held scores that are due, and all of them while no connection
  is up;
- refusals (docs/mqtt.md "Refused messages"): a PUBACK with a failure reason code (MQTT 5),
  a row larger than the broker's Maximum Packet Size (never sent), or a row in flight each
  time the broker closed the connection (``STRIKES`` times in a row: what a broker does to
  a message over its size limit under 3.1.1) moves to the outbox's refused store, logged
  once per reason; the rows behind it go on, in order;
- the ack timeout: rows in flight and no PUBACK for ``mqtt.ack_timeout_s`` is a dead
  connection (a network that drops PUBACKs, a half-open line): it is closed, reported and
  made again, and the rows replayed;
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

import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from paho.mqtt.subscribeoptions import SubscribeOptions

from harken.agent.sinks.mqtt.broker import BACKOFF_MAX_S, ConnectionReports, ConnectTimer, \
    endpoint_name, fall_back_to_311, is_mqtt5, make_client, reconnect_delay, refusal, speaks_tls, \
    unanswered
from harken.agent.sinks.mqtt.outbox import Message, Outbox
from harken.agent.sinks.mqtt.settings import MqttTableSink

WINDOW = 32            # outbox rows in flight (published, not yet acknowledged) at a time
STRIKES = 3            # a row in flight at this many broker closes in a row is refused
STABLE_S = 10.0        # a connection shorter than this counts toward the reconnect back-off
CLOSE_AFTER_S = 2.0    # a close this soon after a QoS 0 message may be the broker's answer to it
UNSUPPORTED_PROTOCOL = 0x84     # CONNACK: the broker does not speak this MQTT version
TAKEN_OVER = 0x8E               # DISCONNECT: another client connected with this client id


def packet_size(topic: str, payload: bytes, qos: int, v5: bool) -> int:
    """The bytes of the PUBLISH packet paho writes for this message (no properties): what
    a broker's Maximum Packet Size limits."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + len(payload)
    n = 1
    while body >= 128 ** n:                # the remaining length is a varint
        n += 1
    return 1 + n + body


def _refusal(reason_code) -> str | None:
    """The reason a PUBACK refuses its message ("Not authorized (0x87)"); None when it
    acknowledges it (3.1.1 PUBACKs always do)."""
    if not getattr(reason_code, "is_failure", False):
        return None
    return f"{reason_code} (0x{reason_code.value:02X})"


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

    def held(self, lane: Lane) -> str | None:
        """The sender thread, holding ``lock``: may ``lane``'s rows go now? None: yes; "":
        not yet (kept); a reason: never on this connection (refused with it, unsent:
        Sparkplug data whose birth the broker would not take)."""
        return None


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


@dataclass(frozen=True)
class _Sent:
    """A row handed to paho and not yet acknowledged."""
    lane: Lane
    row: int
    order: int            # the publish count when it went (oldest first)
    at: float             # time.monotonic() when it went
    topic: str
    size: int             # its packet's bytes


class Publisher(ConnectionReports):
    """One broker connection delivering the outboxes of its lanes (module docstring)."""

    def __init__(self, settings, client_id: str, encoder: Encoder,
                 log: Callable[[str], None], thread_name: str = "mqtt-outbox") -> None:
        self.s, self.encoder, self.log, self.client_id = settings, encoder, log, client_id
        # the brokers, in order, and the one tried or connected now (docs/mqtt.md "Several
        # brokers: failover"); every message naming a broker names this one
        ends = getattr(settings, "endpoints", None)
        self.endpoints: list[tuple[str, int]] = list(ends()) if ends is not None else \
            [(settings.host, settings.port)]
        self._at = 0
        self.host, self.port = self.endpoints[0]
        self._misses = 0                        # failed connection attempts in a row
        self._retry_here = False                # the next attempt goes to the same broker
        self._last_broker: int | None = None    # the index of the last broker connected to
        self.broker_changes = 0                 # connections to another broker than the last
        self.moved = False                      # this connection is to another broker
        self.lock = threading.RLock()           # lanes, sessions, the encoder's ordering
        self._flight_lock = threading.Lock()    # in-flight rows, early PUBACKs, latency
        self._lanes: list[Lane] = []
        self._inflight: dict[int, _Sent] = {}   # mid -> the row it carries
        # PUBACKs that beat the sender's bookkeeping: mid -> (the publish count when it
        # came, its refusal or None). An entry from before a publish began is some other
        # message's (a resend of an earlier connection) and must not ack a row that reuses
        # its mid.
        self._acked_early: dict[int, tuple[int, str | None]] = {}
        self._direct: dict[int, tuple[str, int]] = {}   # mid -> (topic, publish count) of
        #                                         a direct QoS 1 publish not yet acknowledged
        # direct QoS 0 publishes of this connection that no later PUBACK has vouched for:
        # (publish count, topic, time.monotonic()); a close right after one names it
        self._direct0: list[tuple[int, str, float]] = []
        # topics the broker closes the connection on (docs/mqtt.md "Refused messages"):
        # topic -> the reason; their rows are refused unsent, their direct messages dropped
        self._blocked: dict[str, str] = {}
        self._suspect: set[str] = set()         # topics of rows refused for closes (until
        #                                         one of their rows is acknowledged)
        self._published = 0
        self._session: int | None = None        # the current connection's number
        self._started = False
        self._refused = False                   # the broker's CONNACK said no
        self._up = False                        # a connection is made (paho's view)
        self._connected_at = 0.0                # time.monotonic() of the last CONNACK
        # short connections in a row, all to one broker (a move to another resets it: a
        # rolling restart is no takeover); sessions taken over (MQTT 5 says so) in a row
        self._flaps = 0
        self._taken = 0
        # short connections in a row over the whole list (a move does not reset it): two
        # agents with one client id on a cluster take the session from each other on every
        # node in turn, which the per-broker count never sees (docs/mqtt.md "Client ids")
        self._short_all = 0
        self._twin_said = False
        self._ack_where: str | None = None      # the broker the ack timeout left
        # subscriptions the broker refused (SUBACK failure): topic -> (when to ask again,
        # times asked, qos, retain_as_published); mid -> topic of a SUBSCRIBE sent
        self._resub: dict[str, tuple[float, int, int, bool]] = {}
        self._sub_mids: dict[int, tuple[str, int, bool]] = {}
        # held across a SUBSCRIBE and the noting of its mid: a SUBACK that paho's thread
        # reads before the mid was noted was dropped (a refusal then never asked again)
        self._sub_lock = threading.Lock()
        self._sub_said: set[str] = set()
        self._early = 0                         # connections closed before the CONNACK, in a row
        self._will_topic: str | None = None
        self._killed = False                    # the ack timeout closed this connection
        self._speaks_tls: dict[tuple[str, int], bool] = {}   # a plain client's port: TLS? (once)
        self._last_ack = 0.0                    # time.monotonic() of the last PUBACK
        self._ack_timeout_s = float(getattr(settings, "ack_timeout_s", 30.0))
        self._hold_s = float(getattr(settings, "outbox_hold_s", 0.0))
        self._spill_said: str | None = None     # the last failed write of held scores, said
        self._ack_msg: str | None = None        # the ack timeout's report, once made
        self._sending: _Sent | None = None      # the row being handed to paho now
        self._strike: tuple[Lane, int] | None = None    # the row the last broker close hit
        self._strikes = 0
        self._max_packet: int | None = None     # the broker's Maximum Packet Size (MQTT 5)
        self.direct_refusals: dict[str, str] = {}   # topic -> why its direct message was
        #                                         not sent on this connection (too large)
        self._reasons_logged: set[str] = set()
        self.ack_timeouts = 0                   # dead connections found by the ack timeout
        self._wake, self._stop = threading.Event(), threading.Event()
        self._connected = threading.Event()
        # set once a connection attempt has an outcome (connected, refused or failed): a
        # clean stop waits for it, so a short run does not exit mid-handshake
        self._settled = threading.Event()
        self._progress = threading.Event()      # a row was acknowledged or refused
        self.client, self.tls = make_client(settings, client_id, log)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # the CONNACK wait, per broker, grows after each attempt it cut (broker.ConnectTimer)
        self._connect_timer = ConnectTimer(self.client, cap=max(float(settings.keepalive), 60.0),
                                           where=lambda: (self.host, self.port))
        self.client.on_pre_connect = self._connect_timer.started
        self._sender = threading.Thread(target=self._send_loop, name=thread_name, daemon=True)
        self._sender.start()

    # -- the encoder's side ----------------------------------------------------------------
    def will(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """The Last Will of the next connection."""
        self._will_topic = topic
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    def start(self) -> None:
        """Connect (in the background, retrying); once only."""
        with self.lock:
            if self._started:
                return
            self._started = True
        # a clean start every time under MQTT 5, as clean_session=True under 3.1.1
        self._aim(self.client)
        self.client.loop_start()

    def _aim(self, client) -> None:
        """Point paho at the current broker: its reconnects go to the host and port of the
        last ``connect_async`` (paho 2.2 ``reconnect``), which may be called from its own
        callbacks, before its next attempt. A clean start every time under MQTT 5, as
        clean_session=True under 3.1.1."""
        extra = {"clean_start": True} if is_mqtt5(client) else {}
        client.connect_async(self.host, self.port, keepalive=self.s.keepalive, **extra)

    def _next_broker(self, client, lost_up: bool) -> None:
        """After a failed attempt (``lost_up`` False) or a lost connection: the next attempt
        goes to the next broker of the list, after ``reconnect_delay``. paho's own doubling
        is overridden at every call (min = max = our delay)."""
        if self._stop.is_set():
            return
        if lost_up:
            self._misses = 0
        else:
            self._misses += 1
        if self._retry_here:                  # the same broker, in another protocol
            self._retry_here = False
            delay = random.uniform(0.5, 1.0)
        else:
            # moving on to another broker after one short connection is no reason to wait
            flaps = self._flaps - 1 if len(self.endpoints) > 1 else self._flaps
            delay = reconnect_delay(lost_up, max(self._misses, 1), len(self.endpoints),
                                    max(flaps, self._taken, self._storm()) if lost_up else 0)
            if len(self.endpoints) > 1:
                self._at = (self._at + 1) % len(self.endpoints)
                self.host, self.port = self.endpoints[self._at]
                self._aim(client)
        client.reconnect_delay_set(delay, delay)

    @property
    def _storm_at(self) -> int:
        """Short connections in a row, over the list, that are taken for a takeover: two
        rounds of the list, each broker closing on us about twice (and at least 2 x
        ``STRIKES``: a fast rolling restart of a small list loses each broker once or
        twice, and must not grow the wait)."""
        return max(2 * len(self.endpoints), 2 * STRIKES)

    def _storm(self) -> int:
        """The back-off step of a takeover across the list: 0 below ``_storm_at``, then 1,
        2, 3 ... (doubling the wait, reconnect_delay); 0 for a single broker (the
        per-broker count serves it)."""
        if len(self.endpoints) < 2 or self._short_all < self._storm_at:
            return 0
        return self._short_all - self._storm_at + 1

    @property
    def broker(self) -> str | None:
        """``host:port`` of the broker connected now; None while no connection is up."""
        return endpoint_name(self.host, self.port) if self._connected.is_set() else None

    @property
    def _name(self) -> str:
        return endpoint_name(self.host, self.port)

    @property
    def where(self) -> str:
        """The broker tried or connected now, as the logs name it: ``host:port``, and
        ``(broker 2 of 3)`` where there are several."""
        name = endpoint_name(self.host, self.port)
        n = len(self.endpoints)
        return f"{name} (broker {self._at + 1} of {n})" if n > 1 else name

    def _on_connect_fail(self, client, userdata) -> None:
        super()._on_connect_fail(client, userdata)
        self._next_broker(client, lost_up=False)

    def add_lane(self, outbox: Outbox, encode: Callable[[Message, bool], bytes]) -> Lane:
        lane = Lane(outbox, encode)
        outbox.hold_s = self._hold_s            # scores held while connected (mqtt settings)
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
            # a score on a live connection is held: its PUBACK may spare the write
            row = lane.outbox.put(topic, payload, qos=qos, retain=retain, kind=kind, seq=seq,
                                  hold=session is not None and kind == "score")
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
        connection has no use for. Returns paho's message info, or None when the message
        is larger than the broker takes (logged once; sending it would only get the
        connection closed)."""
        data = payload.encode() if isinstance(payload, str) else payload
        size = packet_size(topic, data, qos, is_mqtt5(self.client))
        if topic in self._blocked:
            return None                       # said once when the topic was found out
        if self._max_packet and size > self._max_packet:
            self.direct_refusals[topic] = f"too large for the broker ({size} > " \
                                          f"{self._max_packet} bytes)"
            self._log_refusal(topic, f"too large for the broker ({size} > {self._max_packet} "
                              f"bytes); not sent", "too large: direct")
            return None
        with self._flight_lock:
            self._published += 1
            began = self._published
            if not qos:
                self._direct0.append((began, topic, time.monotonic()))
                del self._direct0[:-WINDOW]
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos and info.rc == 0:
            with self._flight_lock:
                early = self._acked_early.pop(info.mid, None)
                if early is None or early[0] < began:
                    self._direct[info.mid] = (topic, began)
                    refused = None
                else:
                    refused = early[1]
            if refused:
                self._log_refusal(topic, refused + "; not kept (live information)",
                                  "direct: " + refused)
        return info

    def refused_reason(self, topic: str) -> str | None:
        """Why a direct message on ``topic`` was not sent on this connection (too large for
        the broker, or a topic it closes the connection on); None if nothing said so."""
        return self._blocked.get(topic) or self.direct_refusals.get(topic)

    def wake(self) -> None:
        """A sender round now (the encoder has births to send)."""
        self._wake.set()

    def subscribe(self, topic: str, qos: int = 0, retain_as_published: bool = False) -> None:
        """Subscribe on this connection (clean session: again at every ``connection_made``).
        ``retain_as_published`` (MQTT 5 only): a message published retained while subscribed
        arrives with its retain flag set, not cleared as MQTT otherwise does, so a retained
        command is seen as one wherever it comes from (docs/mqtt.md "Commands"); MQTT 3.1.1
        cannot ask for it."""
        with self._sub_lock:
            if retain_as_published and is_mqtt5(self.client):
                _, mid = self.client.subscribe(topic, options=SubscribeOptions(
                    qos=qos, retainAsPublished=True))
            else:
                _, mid = self.client.subscribe(topic, qos=qos)
            if mid is not None:
                self._sub_mids[mid] = (topic, qos, retain_as_published)

    def unsubscribe(self, topic: str) -> None:
        """No more messages on ``topic`` (nor a refused subscription to it asked again)."""
        self._resub.pop(topic, None)
        self.client.unsubscribe(topic)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """A SUBACK: a refused subscription (a failure reason code: an ACL, a cluster that
        cannot place it while a node is down) is said once per topic and asked again, 1, 2,
        4 ... up to BACKOFF_MAX_S later, until granted (docs/mqtt.md "Commands")."""
        with self._sub_lock:
            asked = self._sub_mids.pop(mid, None)
        if asked is None:
            return
        topic, qos, rap = asked
        code = reason_codes[0] if reason_codes else None
        if code is not None and getattr(code, "is_failure", False):
            tries = self._resub.get(topic, (0.0, 0, qos, rap))[1] + 1
            wait = min(BACKOFF_MAX_S, 2 ** min(tries - 1, 16)) * random.uniform(0.75, 1.25)
            self._resub[topic] = (time.monotonic() + wait, tries, qos, rap)
            if topic not in self._sub_said:
                self._sub_said.add(topic)
                self.log(f"the broker {self._name} refused the subscription to {topic} "
                         f"({code}): nothing sent there reaches this agent until it is "
                         f"granted (the broker's ACL, or a cluster with a node down); asking "
                         f"again with back-off up to {BACKOFF_MAX_S} s")
            self._wake.set()
        else:
            self._resub.pop(topic, None)
            if topic in self._sub_said:
                self._sub_said.discard(topic)
                self.log(f"the broker {self._name} granted the subscription to {topic}")

    def _ask_again(self) -> None:
        """The sender thread: subscribe again to the refused topics that are due."""
        now = time.monotonic()
        for topic, (due, tries, qos, rap) in list(self._resub.items()):
            if due <= now and self._connected.is_set():
                self._resub[topic] = (now + BACKOFF_MAX_S * 2, tries, qos, rap)   # asked
                self.subscribe(topic, qos=qos, retain_as_published=rap)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        """The MQTT version of this client: "5" or "3.1.1"."""
        return "5" if is_mqtt5(self.client) else "3.1.1"

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
        # a stop writes the held scores first: a sink left behind on a frozen connection
        # (docs/agent.md "Stopping") must not take them with it
        lane.outbox.spill()
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
                for mid in [mid for mid, sent in self._inflight.items() if sent.lane is lane]:
                    del self._inflight[mid]
                if self._strike is not None and self._strike[0] is lane:
                    self._strike, self._strikes = None, 0
                lane.outbox.close()

    def close(self, last: tuple[str, bytes | str, int, bool] | None = None) -> None:
        """Clean stop: publish ``last`` (topic, payload, QoS, retain: the sink's goodbye)
        if connected, then disconnect without the Last Will; the lanes left are closed."""
        if last is not None and self._connected.is_set():
            with self.lock:
                info = self.publish(*last[:2], qos=last[2], retain=last[3])
            try:
                if info is not None:
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
        self._connect_timer.answered(made=not reason_code.is_failure)
        if reason_code.is_failure:
            self._refused = True         # the disconnect that follows says nothing new
            if reason_code.value == UNSUPPORTED_PROTOCOL and is_mqtt5(client) and \
                    getattr(self.s, "protocol", "auto") == "auto":
                fall_back_to_311(client)   # paho tries again in a second
                self._retry_here = True    # at the same broker
                self.log(f"broker {self._name} does not speak MQTT 5: using "
                         f"MQTT 3.1.1, on which a refused message cannot be seen (the broker "
                         f"acknowledges it like a delivered one; docs/mqtt.md \"Protocol\")")
                return
            hint = "check mqtt.username and the password"
            msg = refusal(self.host, self.port, reason_code, hint)
            if reason_code.value == UNSUPPORTED_PROTOCOL:
                msg += " (the broker does not speak this MQTT version: set mqtt.protocol = " \
                       "\"auto\")"
            self._report(msg)
            self._settled.set()
            return
        self._refused = False
        _forget_unacknowledged(client)
        size = getattr(properties, "MaximumPacketSize", None) if is_mqtt5(client) else None
        with self._flight_lock:
            self._inflight.clear()
            self._acked_early.clear()
            self._direct.clear()
            self._direct0.clear()
            self.direct_refusals = {}
            self._max_packet = size
        with self.lock:
            for lane in self._lanes:
                lane.last_sent = 0                # resend everything not acknowledged
            self._session = (self._session or 0) + 1
        self._up, self._connected_at = True, time.monotonic()
        self._misses = 0
        # another broker than the last connection's: counted, and the encoder says it
        self.moved = self._last_broker is not None and self._last_broker != self._at
        self.broker_changes += self.moved
        self._last_broker = self._at
        self._resub.clear()              # the encoder subscribes afresh on a clean session
        self._sub_mids.clear()
        if self.moved:
            # a loss after a move is news again, even in the words of an earlier one
            self._said = frozenset(m for m in self._said if not m.startswith("disconnected from"))
            # short connections are counted per broker: closes by different brokers (a
            # rolling restart) are no takeover (docs/mqtt.md "Client ids")
            self._flaps = 0
            if self._ack_msg is not None:   # the broker that stopped acknowledging is left
                self._forget(self._ack_msg)
                self._ack_msg = None
        self.encoder.connection_made()
        self._connected.set()
        self._settled.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was, self._up = self._up, False
        killed, self._killed = self._killed, False
        self._connect_timer.answered()
        # (with mqtt.keepalive under the connect timeout paho gives up first, calling it a
        # "Keep alive timeout" of a connection that never existed)
        timed_out = (self._connect_timer.take_expired()
                     or str(reason_code) == "Keep alive timeout") and not was
        # the close that follows a CONNACK refusal was said with it; the next one is news
        # (before, a fall-back to 3.1.1 left this set, and every later close went unsaid)
        refused, self._refused = self._refused, False
        self._early = 0 if was or refused else self._early + 1
        self._connected.clear()
        self._settled.set()
        self._wake.set()                        # the sender writes the held scores now
        if self._stop.is_set():
            return
        if was:
            self.encoder.connection_lost()
        taken = getattr(reason_code, "value", None) == TAKEN_OVER
        struck = False
        if was:
            lived = time.monotonic() - self._connected_at
            if lived >= STABLE_S and self._last_error != self._ack_msg:
                self._forget()                 # a connection that held: the next problem is news
            if not killed and not taken and str(reason_code) != "Keep alive timeout":
                struck = self._strike_oldest()
            # a broker that closes every connection soon after accepting it (another
            # client with this id, a message it will not take) is not asked again every
            # second: the wait doubles up to BACKOFF_MAX_S (docs/mqtt.md "Client ids")
            short = (taken or lived < STABLE_S) and not struck
            self._flaps = self._flaps + 1 if short else 0
            self._short_all = self._short_all + 1 if short and not taken else 0
            if lived >= STABLE_S:
                self._twin_said = False
            self._taken = self._taken + 1 if taken else 0 if not short else self._taken
        if taken:
            self._report(f"another client uses client id {self.client_id}: a copied SD card "
                         f"image or a second agent? (the broker {self._name} "
                         f"said Session taken over; each agent needs its own mqtt.client_id); "
                         f"reconnecting with back-off up to {BACKOFF_MAX_S} s")
        elif killed or refused or struck:
            pass                               # said already (the ack timeout, the CONNACK)
        elif was and self._storm() and self._strike is None:
            # every broker of the list keeps closing on us within seconds, in turn: said once
            if not self._twin_said:
                self._twin_said = True
                self.log(f"the brokers closed {self._short_all} connections in a row within "
                         f"{STABLE_S:g} s of accepting them, on every broker of the list "
                         f"({reason_code}): another client may use client id "
                         f"{self.client_id} (a copied SD card image or a second agent?); "
                         f"reconnecting with back-off up to {BACKOFF_MAX_S} s")
        elif timed_out:
            waited = min(self._connect_timer.timeout, float(self.s.keepalive))
            self._report(unanswered(self._name, waited) + "; trying "
                         + ("the next broker" if len(self.endpoints) > 1 else "again"))
        elif not was and self._tls_port():
            self._report(f"broker {self._name} closed the connection before "
                         f"answering ({reason_code}): is this a TLS port? set mqtt.tls = "
                         f"true; retrying")
        elif self._early >= STRIKES and self._will_topic is not None:
            # nats-server drops a CONNECT whose Will topic has a '.' or ' ' (Sparkplug's
            # spBv1.0, a node named line2.pi) without a word (docs/mqtt.md "Protocol")
            # only a topic with those characters is suspect: an overloaded broker closes
            # early too, and a hint about a plain topic sent the reader the wrong way
            why = (f"it may not accept the Last Will's topic {self._will_topic} (its "
                   f"characters: nats-server takes no '.' or ' ' in topics), or refuses this "
                   f"client" if any(c in self._will_topic for c in ". ") else
                   "it refuses this client or is overloaded")
            self._report(f"the broker {self._name} closed the connection "
                         f"{STRIKES} times in a row before accepting it ({reason_code}): "
                         f"{why}; retrying")
        elif was and self._flaps == STRIKES and self._strike is None:
            # (a message in flight at each close is the likelier cause: said if given up)
            # a broker that says nothing (MQTT 3.1.1, Mosquitto 2.0) closes a taken-over
            # connection like any other: its sign is that none of them lasts
            self._report(f"the broker {self._name} closed the connection "
                         f"{STRIKES} times in a row within {STABLE_S:g} s of accepting it "
                         f"({reason_code}): another client may use client id "
                         f"{self.client_id} (a copied SD card image or a second agent?); "
                         f"reconnecting with back-off up to {BACKOFF_MAX_S} s")
        elif not (was and self._flaps > STRIKES):
            # once per broker and cause until a connection holds or the agent moves to
            # another broker (docs/mqtt.md "What it says"); the repeats of one broker's
            # streak of short connections were said at STRIKES
            self._report(f"disconnected from {self._name} ({reason_code}); retrying")
        self._next_broker(client, lost_up=was)    # said above: the broker just left

    @property
    def steady(self) -> bool:
        """The last connection held (or this is the first): an encoder says "connected"
        only then, not at every try against a broker that keeps closing."""
        return self._flaps == 0

    def _tls_port(self) -> bool:
        """A plain client dropped before its CONNACK: does the port speak TLS? Looked at
        once (a TLS listener drops a plain CONNECT with nothing to say why)."""
        where = (self.host, self.port)
        if self.tls is None and where not in self._speaks_tls:
            self._speaks_tls[where] = speaks_tls(*where)
        return bool(self._speaks_tls.get(where))

    def _strike_oldest(self) -> bool:
        """The broker closed a connection with messages unacknowledged: the oldest of them
        is the likely cause (a broker drops the connection over a message it will not take,
        after acknowledging what came before it: one over its size limit under 3.1.1, a
        topic whose characters it does not accept: nats-server's '.' and ' '). The same one
        hit ``STRIKES`` times in a row is given up: a row goes to the refused store, a
        direct message's topic is blocked (said once, naming it). A row refused so whose
        topic is hit again blocks its topic at once: each later row of it is refused unsent,
        not tried three times. True when something was given up."""
        with self._flight_lock:
            flying: list[tuple[int, object]] = [(sent.order, sent) for sent in
                                                list(self._inflight.values())
                                                + ([self._sending] if self._sending else [])]
            flying += [(order, topic) for topic, order in self._direct.values()]
            now = time.monotonic()     # a QoS 0 message has no answer: a close right after it
            flying += [(order, topic) for order, topic, at in self._direct0
                       if now - at < CLOSE_AFTER_S]
            if not flying:
                self._strike, self._strikes = None, 0
                return False
            _, oldest = min(flying, key=lambda pair: pair[0])
            if isinstance(oldest, _Sent) and oldest.topic in self._suspect:
                self._block(oldest.topic)
                self._give_up_row(oldest, self._blocked[oldest.topic], "closed: " + oldest.topic)
                return True
            hit = (oldest.lane, oldest.row) if isinstance(oldest, _Sent) else (None, oldest)
            if self._strike is not None and self._strike[0] is hit[0] and \
                    self._strike[1] == hit[1]:
                self._strikes += 1
            else:
                self._strike, self._strikes = hit, 1
            if self._strikes < STRIKES:
                return False
            self._strike, self._strikes = None, 0
            if not isinstance(oldest, _Sent):
                self._block(oldest)
                self._log_refusal(oldest, self._blocked[oldest] + "; its messages are not "
                                  "sent", "closed: " + oldest)
                self._direct = {m: v for m, v in self._direct.items() if v[0] != oldest}
                return True
            self._suspect.add(oldest.topic)
            self._give_up_row(oldest, f"the broker closed the connection each time it was "
                                      f"sent ({STRIKES} times): most likely too large for "
                                      f"the broker ({oldest.size} bytes; Mosquitto: "
                                      f"message_size_limit, max_packet_size) or its topic "
                                      f"{oldest.topic} not allowed there", "closed")
            return True

    def _block(self, topic: str) -> None:
        """No more messages on ``topic``: the broker closes the connection on it (the caller
        holds the flight lock)."""
        self._blocked[topic] = (f"the broker closed the connection on this topic ({topic}) "
                                f"each time: it may not accept its characters (nats-server "
                                f"takes no '.' or ' ' in topics) or not allow it")

    def _give_up_row(self, sent: _Sent, reason: str, key: str) -> None:
        """A row the broker closed the connection on, into the refused store (the caller
        holds the flight lock)."""
        for mid in [m for m, s in self._inflight.items() if s is sent]:
            del self._inflight[mid]
        self._settle(sent, reason, key)

    def _on_message(self, client, userdata, message) -> None:
        self.encoder.message_received(message)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        refused = _refusal(reason_code)
        direct = None
        with self._flight_lock:
            # a QoS 0 message calls this too, when written, unknown to the broker: only a
            # PUBACK for a known message is a sign of life (the ack timeout's clock)
            sent = self._inflight.pop(mid, None)
            order = None
            if sent is not None:
                order = sent.order
                self._last_ack = time.monotonic()
                self._settle(sent, refused, refused)
            else:
                direct = self._direct.pop(mid, None)
                if direct is not None:
                    direct, order = direct
                    self._last_ack = time.monotonic()
                else:
                    self._acked_early[mid] = (self._published, refused)
                    if len(self._acked_early) > 2 * WINDOW:   # forget what no publish can use
                        self._acked_early = {m: v for m, v in self._acked_early.items()
                                             if v[0] >= self._published}
            if order is not None and self._direct0:   # the broker took what came before
                self._direct0 = [entry for entry in self._direct0 if entry[0] > order]
        if (sent is not None or direct is not None) and self._ack_msg is not None and \
                self._last_error == self._ack_msg:
            self._forget(self._ack_msg)
            self.log(f"acknowledgements from {self._name} arrive again")
        if direct is not None and refused:
            self._log_refusal(direct, refused + "; not kept (live information)",
                              "direct: " + refused)
        self._wake.set()

    def _settle(self, sent: _Sent, refused: str | None, reason_key: str | None) -> None:
        """The broker has ``sent``'s row (``refused`` None: out of the outbox) or will not
        take it (into the refused store). The caller holds the flight lock."""
        lane = sent.lane
        arrived = lane.arrived.pop(sent.row, None)
        if refused is None:
            if arrived is not None:
                lane.latency_ms.append(1e3 * (time.monotonic() - arrived))
            lane.outbox.ack(sent.row)
            self._suspect.discard(sent.topic)   # the broker takes this topic
        else:
            lane.outbox.refuse(sent.row, refused)
            self._log_refusal(sent.topic, refused + "; kept in the refused store (harken "
                              "outbox --list, --resend)", reason_key or refused)
        if self._strike is not None and self._strike[0] is lane and self._strike[1] == sent.row:
            self._strike, self._strikes = None, 0
        self._progress.set()

    def _log_refusal(self, topic: str, reason: str, key: str) -> None:
        """Once per kind of refusal, not per message: the stats count them."""
        if key in self._reasons_logged:
            return
        self._reasons_logged.add(key)
        self.log(f"the broker {self._name} does not take a message on {topic}: "
                 f"{reason}; further refusals for this reason are counted in the stats, not "
                 f"logged")

    # -- sending (the sender thread) ---------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(1.0, self._ack_timeout_s / 4))
            self._wake.clear()
            self._spill(due_only=self._connected.is_set())
            if not self._connected.is_set():
                continue
            if self._resub:
                self._ask_again()
            if self._acks_overdue():
                continue
            with self.lock:
                self.encoder.before_send()
                for lane in list(self._lanes):
                    held = self.encoder.held(lane)
                    if held:
                        self._refuse_pending(lane, held)
                    elif held is None and not self._send_pending(lane):
                        break

    def _spill(self, due_only: bool) -> None:
        """Write the held scores that waited ``mqtt.outbox_hold_s`` (all of them while no
        connection is up: no PUBACK can come). A failed write is said once per reason and
        retried at the next round (the scores stay held)."""
        with self.lock:
            lanes = list(self._lanes)
        for lane in lanes:
            lane.outbox.spill(due_only)
            error = lane.outbox.spill_error
            if error and error != self._spill_said:
                self.log(f"{lane.outbox.path}: cannot write the unacknowledged scores "
                         f"({error}); they stay in memory and are tried again")
            self._spill_said = error

    def _acks_overdue(self) -> bool:
        """Rows in flight and no PUBACK for ``mqtt.ack_timeout_s``: a network that loses
        the broker's answers, or a line that went half-open, which keepalive finds only
        much later (docs/mqtt.md "Delivery guarantees"). Closes the connection (paho makes
        a new one; the rows are replayed), counted and reported once."""
        with self._flight_lock:
            if not self._inflight:
                return False
            oldest = min(sent.at for sent in self._inflight.values())
            waited = time.monotonic() - max(oldest, self._last_ack)
        if waited < self._ack_timeout_s:
            return False
        self.ack_timeouts += 1
        self._ack_where = self._name
        self._ack_msg = (f"no acknowledgement from {self._name} within mqtt.ack_timeout_s = "
                         f"{self._ack_timeout_s:g} s: the connection is dead; reconnecting")
        self._report(self._ack_msg)
        self._killed = True
        self._connected.clear()
        with self._flight_lock:
            self._inflight.clear()           # the next connection sends them again
        sock = self.client.socket()
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)   # paho sees the end, and reconnects
        except OSError:
            pass
        return True

    def _refuse_pending(self, lane: Lane, reason: str) -> None:
        """Into the refused store, unsent: ``lane``'s rows that may not go (``held``)."""
        for m in lane.outbox.pending(lane.last_sent, WINDOW):
            lane.last_sent = m.id
            lane.made_in.pop(m.id, None)
            with self._flight_lock:
                self._settle(_Sent(lane, m.id, 0, 0.0, m.topic, len(m.payload)), reason,
                             "held: " + reason)

    def _send_pending(self, lane: Lane) -> bool:
        """Publish ``lane``'s rows not yet sent on this connection, as many as the window
        has room for; False when the connection is gone (the next one resends)."""
        with self._flight_lock:
            room = WINDOW - len(self._inflight)
        if room <= 0:
            return True
        v5 = is_mqtt5(self.client)
        for m in lane.outbox.pending(lane.last_sent, room):
            live = self._session is not None and lane.made_in.pop(m.id, None) == self._session
            payload = lane.encode(m, live)
            size = packet_size(m.topic, payload, m.qos, v5)
            if m.topic in self._blocked:      # the broker closes the connection on it
                lane.last_sent = m.id
                with self._flight_lock:
                    self._settle(_Sent(lane, m.id, 0, 0.0, m.topic, size),
                                 self._blocked[m.topic], "closed: " + m.topic)
                continue
            if self._max_packet and size > self._max_packet:
                lane.last_sent = m.id         # never sent: the broker would close on it
                with self._flight_lock:
                    self._settle(_Sent(lane, m.id, 0, 0.0, m.topic, size),
                                 f"too large for the broker ({size} > {self._max_packet} "
                                 f"bytes)", "too large")
                continue
            with self._flight_lock:
                self._published += 1
                began = self._published
                # a broker may close the line before the row is noted as in flight below
                sent = self._sending = _Sent(lane, m.id, began, time.monotonic(), m.topic, size)
            info = self.client.publish(m.topic, payload, qos=m.qos, retain=m.retain)
            with self._flight_lock:
                self._sending = None
            if info.rc != 0:
                return False
            lane.last_sent = m.id
            with self._flight_lock:
                early = self._acked_early.pop(info.mid, None)
                if early is not None and early[0] >= began:
                    self._last_ack = time.monotonic()
                    self._settle(sent, early[1], early[1])
                else:
                    self._inflight[info.mid] = sent
        return True


def _bound(rows: OrderedDict, most: int) -> None:
    """Keep the newest ``most`` entries (the outbox holds no more rows than that)."""
    while len(rows) > most:
        rows.popitem(last=False)
