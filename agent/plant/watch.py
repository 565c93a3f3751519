"""`harken watch`: the plant-side view of every node publishing under a prefix.

It subscribes at QoS 1 with a persistent session, so scores published while the watcher was
away are delivered when it comes back; the broker keeps them. Its client id (``default_client_id``)
is stable for one watcher and differs between two watchers on one host, so that neither
takes the other's session over. MQTT 5 where the broker speaks it (the session's expiry,
a largest message, the reasons of a refused subscription or a disconnect), else 3.1.1.
A live table (rich; agent/plant/view.py) on a terminal, or one JSON line per message for
piping. Agents publishing Sparkplug B (``mqtt.profile``) are read too, from
``spBv1.0/<sparkplug group>/#``. What the broker sends is handled by agent/plant/fleet.py,
which never raises: a paho callback that raised would end paho's network thread, and the
view would go on showing a fleet that no longer changes.

Several brokers (the nodes of a cluster: ``--broker URL URL ...``; docs/watch.md): the first
that answers, in order; a lost connection or a failed attempt goes on at the next, as the
agent does (agent/sinks/mqtt/publisher.py), with the same client id, so the persistent
session resumes on whichever node holds it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Callable, TextIO

from harken.agent.plant.fleet import DEFAULT_FORGET_AFTER_S, DEFAULT_MAX_AGENTS, MAX_PAYLOAD, \
    Fleet
from harken.agent.plant.text import safe
from harken.common.errors import UsageError
from harken.agent.sinks.mqtt.broker import BrokerError, BrokerUrl, ConnectTimer, diagnose, \
    endpoint_name, parse_broker_list, reconnect_delay, refusal, split_broker_urls, unanswered, \
    use_tls
from harken.agent.sinks.mqtt.topics import subscription

SESSION_EXPIRY_S = 7 * 86400        # MQTT 5: how long the broker keeps an absent watcher's queue
MAX_PACKET = MAX_PAYLOAD + 70_000   # MQTT 5: the broker does not send larger (topic up to 64 kB)
HISTORY_S = 3600.0                  # the web page's chart: the last hour per machine
TAKEN_OVER = 142                    # MQTT 5 DISCONNECT reason "Session taken over"
SHORT_S = 5.0                       # a connection closed sooner than this, twice: a takeover


def watch_url(text: str) -> BrokerUrl:
    """One ``--broker`` URL, or BrokerError: one line, never a traceback, the password never
    shown. The agent's ``mqtt.brokers`` rules (broker.parse_broker_url, docs/watch.md): a
    path, query or fragment is refused (MQTT has none, and ``mqtt://host/plant`` is more
    likely a prefix put in the wrong place than a broker), so are a port of 0 or none after
    the ':', an IPv6 address outside brackets, a space, tab or newline, a host that is no
    host name; an international name is used in punycode."""
    return watch_urls([text])[0]


def watch_urls(texts: list[str]) -> list[BrokerUrl]:
    """Every ``--broker`` URL (several, or one comma-separated argument: split between
    URLs only, never inside a password; broker.split_broker_urls), under the agent's rules
    for ``mqtt.brokers`` (broker.parse_broker_list: at most 16, each broker once, one
    scheme); besides, BrokerError for different credentials in two URLs (one login serves
    every broker)."""
    pieces = [t for text in texts for t in split_broker_urls(text)]
    if not pieces:
        raise BrokerError("no broker URL given: --broker URL (or URLs after the options; "
                          "several for a cluster)")
    urls = parse_broker_list(pieces, "--broker")
    if len({(u.username, u.password) for u in urls if u.username}) > 1:
        raise BrokerError("--broker: two URLs give different credentials: one login serves "
                          "every broker (or use --username and --password-file)")
    return urls


_NAME = re.compile(r"[^\x00-\x20\x7f+#]{1,128}")


def check_options(prefix: str, client_id: str | None, name: str | None,
                  sparkplug_group: str | None, max_agents: int, forget_after_s: float,
                  duration: float | None) -> None:
    """UsageError naming the first option out of range: a prefix or group with a wildcard
    would subscribe to something else, a client id with a control character is refused by the
    broker at every retry, a NaN ``--for`` would end at once."""
    for option, value in (("--prefix", prefix), ("--client-id", client_id), ("--name", name),
                          ("--sparkplug-group", sparkplug_group)):
        if value is not None and not _NAME.fullmatch(value):
            raise UsageError(f"{option} {safe(value)!r}: expected 1 to 128 characters without "
                             "spaces, control characters, '+' or '#'")
    if not 1 <= max_agents <= 100_000:
        raise UsageError(f"--max-machines {max_agents}: expected 1 to 100000")
    if not 0 <= forget_after_s <= 365 * 86400:
        raise UsageError(f"--forget-after {forget_after_s / 60:g}: expected 0 (never) to 525600 "
                         "minutes")
    if duration is not None and not duration > 0:
        raise UsageError(f"--for {duration:g}: expected a number of seconds above 0")


def web_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``8080``, ``0.0.0.0:8080``, ``[::1]:8080``) as (host, port); HOST
    defaults to 127.0.0.1, this computer only. Port 0 takes a free one (the URL is said)."""
    import ipaddress
    shown = safe(text, 80)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:            # ::1:8080 is an IPv6 address or an address and a port
        raise UsageError(f"--web {shown!r}: an IPv6 address goes in brackets, with the port "
                         "after them: [::1]:8080")
    if not re.fullmatch(r"\d{1,5}", port.strip()) or not 0 <= int(port) <= 65535:
        raise UsageError(f"--web {shown!r}: expected [HOST:]PORT with a port from 0 (any free "
                         "one) to 65535, e.g. 8080 or 0.0.0.0:8080")
    if not host:
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            raise UsageError(f"--web {shown!r}: {safe(host, 60)!r} is not an address or host "
                             "name (an IPv6 address goes in brackets: [::1]:8080)") from None
    return host, int(port)


def default_client_id(name: str | None = None) -> tuple[str, bool]:
    """The default client id and whether its session is kept: ``harken-watch-USER-HOST-``
    and the watcher's ``--name`` or else its terminal (``pts-3``), so that one watcher finds
    its session again and two watchers on one host never share one. With neither (a pipe,
    a service) the id carries the process id and the session ends with the watcher."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):          # a uid with no passwd entry (containers)
        user = f"uid{os.getuid()}"
    where, persistent = name, True
    if not where:
        for stream in (sys.stdin, sys.stdout, sys.stderr):
            try:
                if stream is not None and stream.isatty():
                    where = os.ttyname(stream.fileno()).removeprefix("/dev/")
                    break
            except (OSError, ValueError, AttributeError):
                continue
    if not where:
        where, persistent = f"pid{os.getpid()}", False
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", f"harken-watch-{user}-{socket.gethostname()}-{where}")
    if len(text) > 64:                   # brokers may limit ids; keep it unique by a digest
        text = text[:55] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text, persistent


class Connection:
    """The subscribed paho client and what the broker said about the connection: a banner
    for the live view, or one line on stderr each for the other views."""

    def __init__(self, url: BrokerUrl | list[BrokerUrl], prefix: str, client_id: str,
                 persistent: bool, ca_file: str | None, cert_file: str | None,
                 key_file: str | None, insecure: bool, on_message: Callable,
                 sparkplug_group: str | None, report: Callable[[str], None]) -> None:
        # the brokers, in order, and the one tried or connected now (module docstring)
        self.urls = list(url) if isinstance(url, (list, tuple)) else [url]
        self._at, self._misses, self._kwargs, self._ctx = 0, 0, {}, None
        self._said: set[str] = set()                  # failed attempts said (once each)
        self.url, self.client_id, self.persistent = self.urls[0], client_id, persistent
        self.topics = [subscription(prefix)] + \
            ([f"spBv1.0/{sparkplug_group}/#"] if sparkplug_group else [])
        self.tls = (ca_file, cert_file, key_file, insecure)
        self.on_message, self.report = on_message, report
        self.lock = threading.Lock()
        self.banner: list[tuple[str, str]] = []      # (line, style) under the table's title
        self.refused: list[str] = []
        self.disconnected: str | None = None
        self.errors = 0                               # exceptions caught in callbacks
        self.closing = False
        self._answer: dict = {}
        self._done = threading.Event()
        self._first = True
        self._connected_at = time.monotonic()
        # connections closed soon after made, in a row, all by one broker (``_short_at``):
        # closes by different brokers (a rolling restart) are no takeover
        self._short, self._short_at = 0, -1
        self._timer: ConnectTimer | None = None      # the CONNACK timeout of reconnects
        self.client = None

    # -- the callbacks: each guarded, an exception would end paho's network thread ---------
    def _guard(self, fn: Callable) -> Callable:
        def guarded(*args):
            try:
                fn(*args)
            except Exception as exc:     # noqa: BLE001 - report, never end the network thread
                self.errors += 1
                if self.errors == 1:
                    self.say(f"an error in the MQTT callback was caught ({type(exc).__name__}:"
                              f" {exc}); watching goes on", "yellow")
        return guarded

    def say(self, line: str, style: str) -> None:
        line = safe(line, 300)
        with self.lock:
            self.banner = [b for b in self.banner if b[0] != line] + [(line, style)]
            self.banner = self.banner[-4:]
        self.report(line)

    @property
    def where(self) -> str:
        """The broker tried or connected now: ``host:port``, and ``(broker 2 of 3)`` where
        there are several."""
        name = endpoint_name(self.url.host, self.url.port)
        n = len(self.urls)
        return f"{name} (broker {self._at + 1} of {n})" if n > 1 else name

    def _next_broker(self, client, lost_up: bool, taken: bool = False) -> None:
        """The next attempt goes to the next broker of the list (paho reconnects to the host
        of the last ``connect_async``), after a jittered wait (broker.reconnect_delay); a
        taken-over session waits 30 s or more, there is no fight over it."""
        self._misses = 0 if lost_up else self._misses + 1
        delay = min(120, 30 * (1 + self._short)) if taken else \
            reconnect_delay(lost_up, max(self._misses, 1), len(self.urls))
        if len(self.urls) > 1:
            self._at = (self._at + 1) % len(self.urls)
            self.url = self.urls[self._at]
            client.connect_async(self.url.host, self.url.port, keepalive=30, **self._kwargs)
        client.reconnect_delay_set(delay, delay)

    def _on_connect_fail(self, client, userdata) -> None:
        if self.closing or self._first:
            return
        waited = self._timer.waited() if self._timer is not None else 0.0
        line = diagnose(self.url.host, self.url.port, self._ctx, waited=waited) + "; trying the " + \
            ("next broker" if len(self.urls) > 1 else "broker again")
        if line not in self._said:                    # once per problem, not per retry
            self._said.add(line)
            self.say(line, "bold red")
        self._next_broker(client, lost_up=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answer["rc"] = reason_code
        if self._timer is not None:
            self._timer.answered(made=not reason_code.is_failure)
        if not reason_code.is_failure:
            self._connected_at = time.monotonic()
            self._misses = 0
            self._said.clear()
            if self.disconnected:
                self.say(f"connected again to {self.where}", "green")
                with self.lock:
                    self.banner = [b for b in self.banner if b[1] != "bold red"]
            self.disconnected = None
            # a persistent session the broker kept has the subscriptions already; a new one
            # (or the first connection, for the retained state) subscribes
            if self._first or not flags.session_present:
                self._subscribe(client)
            self._first = False
        elif not self._first:             # a reconnect refused (the password changed, ...)
            line = refusal(self.url.host, self.url.port, reason_code,
                           "check the user name and password") + "; retrying"
            if line not in self._said:
                self._said.add(line)
                self.say(line, "bold red")
        self._done.set()

    def _subscribe(self, client) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for t, rc in zip(self.topics, reason_codes):
            if rc.is_failure and t not in self.refused:
                self.refused.append(t)
                self.say(f"the broker refused the subscription to {t} ({rc}): nothing from "
                          "it is shown (check the broker's ACL for this user)", "bold yellow")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._done.set()
        expired = self._timer is not None and self._timer.take_expired()
        if self._timer is not None:
            self._timer.answered()
        if expired:
            self._answer["expired"] = True    # start() says it, and tries no other protocol
        if self.closing or self._first:   # before the first connection start() reports
            return
        if expired and self.disconnected is None:
            self.disconnected = "did not answer"
        if expired:
            line = unanswered(self.where, self._timer.timeout) + "; trying the " + \
                ("next broker" if len(self.urls) > 1 else "broker again")
            if line not in self._said:
                self._said.add(line)
                self.say(line, "bold red")
        if self.disconnected is not None:  # an attempt that failed after TCP (said already)
            self._next_broker(client, lost_up=False)
            return
        when = dt.datetime.now().strftime("%H:%M:%S")
        lived = time.monotonic() - self._connected_at
        if lived >= SHORT_S:
            self._short = 0
        elif self._short_at == self._at:
            self._short += 1
        else:
            self._short, self._short_at = 1, self._at
        if getattr(reason_code, "value", None) == TAKEN_OVER or self._short >= 2:
            # MQTT 5 says "Session taken over" (where the broker sends it; Mosquitto 2.0.11
            # just closes the socket): connections closed within seconds, twice running, are
            # another client of this id connecting. Back off: no fight over the session.
            self.disconnected = "taken over"
            how = "with reason Session taken over" if self._short < 2 else \
                "twice within seconds of making it"
            self.say(f"{when} the broker {self.where} closed the connection {how}:"
                      f" another client with id {self.client_id} is probably using this watcher's "
                      "session (give each watcher its own --name); retrying every 30 s or more",
                      "bold red")
            self._next_broker(client, lost_up=True, taken=True)
        else:
            self.disconnected = str(reason_code)
            self.say(f"{when} disconnected from {self.where} ({reason_code}); reconnecting"
                     + (" to the next broker" if len(self.urls) > 1 else ""), "bold red")
            self._next_broker(client, lost_up=True)

    def _message(self, client, userdata, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:        # a broker that passes a topic that is not UTF-8
            topic = bytes(msg._topic).decode("utf-8", "replace")
        self.on_message(topic, msg.payload, bool(msg.retain))

    # -- connecting -------------------------------------------------------------------------
    def _client(self, protocol):
        import paho.mqtt.client as mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=protocol,
                        **({} if protocol == mqtt.MQTTv5 else {"clean_session": not self.persistent}))
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        ca, cert, key, insecure = self.tls
        ctx = use_tls(c, ca, cert, key, insecure,
                      lambda msg: print(f"harken watch: {msg}", file=sys.stderr),
                      "--tls-insecure") if self.url.tls else None
        c.reconnect_delay_set(1, 30)
        # a broker that takes TCP but never answers is left after CONNECT_TIMEOUT_S, not
        # after the keepalive (docs/watch.md)
        self._timer = ConnectTimer(c, cap=60.0, where=lambda: (self.url.host, self.url.port))
        c.on_pre_connect = self._timer.started
        c.on_connect = self._guard(self._on_connect)
        c.on_connect_fail = self._guard(self._on_connect_fail)
        c.on_disconnect = self._guard(self._on_disconnect)
        c.on_subscribe = self._guard(self._on_subscribe)
        c.on_message = self._guard(self._message)
        return c, ctx

    def _try(self, protocol, timeout: float):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        c, ctx = self._client(protocol)
        self._answer.clear()
        self._done.clear()
        kwargs = {}
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
            props.MaximumPacketSize = MAX_PACKET
            kwargs = {"clean_start": not self.persistent, "properties": props}
        self._kwargs, self._ctx = kwargs, ctx     # the same at every broker of the list
        try:
            c.connect(self.url.host, self.url.port, keepalive=30, **kwargs)
        except OSError:
            raise BrokerError(diagnose(self.url.host, self.url.port, ctx)) from None
        c.loop_start()
        # the connect timer (10 s) and this wait end together: either way the broker never
        # answered, said in one wording, and no MQTT 3.1.1 try follows (it would wait again)
        if not self._done.wait(timeout) or self._answer.get("expired"):
            self._stop(c)
            raise BrokerError(unanswered(endpoint_name(self.url.host, self.url.port),
                                         min(timeout, self._timer.timeout)))
        return c

    def start(self, timeout: float = 10.0) -> None:
        """Connect to the first broker of the list that answers (each one said that did
        not), or raise BrokerError naming what each one did."""
        failed = []
        for i, url in enumerate(self.urls):
            self._at, self.url = i, url
            try:
                self._start(timeout)
            except BrokerError as exc:
                if len(self.urls) == 1:
                    raise
                failed.append(str(exc))
                continue
            for line in failed:
                self.report(line + "; used the next broker")
            return
        raise BrokerError(f"no broker of the {len(self.urls)} answered: " + "; ".join(failed))

    def _start(self, timeout: float) -> None:
        """Connect to ``self.url`` (MQTT 5, else 3.1.1) and subscribe, or raise BrokerError."""
        import paho.mqtt.client as mqtt
        c = self._try(mqtt.MQTTv5, timeout)
        rc = self._answer.get("rc")
        if rc is None or (rc.is_failure and rc.value in (1, 0x84)):
            # no CONNACK, or "unsupported protocol version": a broker of MQTT 3.1.1 only
            self._stop(c)
            c = self._try(mqtt.MQTTv311, timeout)
            rc = self._answer.get("rc")
            if rc is None:
                self._stop(c)
                raise BrokerError(f"broker {self.url.host}:{self.url.port} closed the MQTT "
                                  "connection without an answer")
            if not rc.is_failure:
                self.report(f"broker {self.url.host}:{self.url.port} speaks MQTT 3.1.1 only: "
                            "a takeover or refusal comes without its reason")
        if rc.is_failure:
            self._stop(c)
            raise BrokerError(refusal(self.url.host, self.url.port, rc,
                                      "check the user name and password"))
        self.client = c

    def _stop(self, c) -> None:
        self.closing = True
        try:
            c.disconnect()
        finally:
            c.loop_stop()
            self.closing = False

    def close(self) -> None:
        if self.client is not None:
            self.closing = True
            self.client.disconnect()
            self.client.loop_stop()


def watch(url: BrokerUrl | list[BrokerUrl], prefix: str = "harken", client_id: str | None = None,
          as_json: bool = False, duration: float | None = None, ca_file: str | None = None,
          cert_file: str | None = None, key_file: str | None = None, insecure: bool = False,
          out: TextIO | None = None, sparkplug_group: str | None = "harken",
          name: str | None = None, max_agents: int = DEFAULT_MAX_AGENTS,
          forget_after_s: float = DEFAULT_FORGET_AFTER_S, err: TextIO | None = None,
          web: tuple[str, int] | None = None) -> int:
    """Watch until ``duration`` seconds pass (or Ctrl-C); 0, or BrokerError at connect
    (UsageError when ``web``'s address cannot be listened on). ``url``: one broker, or the
    list of a cluster's nodes (module docstring)."""
    # the streams of the moment (a default of sys.stdout would be the one at import time)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    check_options(prefix, client_id, name, sparkplug_group, max_agents, forget_after_s, duration)
    fleet = Fleet(prefix, sparkplug_group=sparkplug_group, max_agents=max_agents,
                  forget_after_s=forget_after_s, history_s=HISTORY_S if web else 0.0)
    lock = threading.Lock()
    live_view = not as_json and out.isatty()
    stop = threading.Event()

    def report(line: str) -> None:
        if not live_view:
            print(f"harken watch: {line}", file=err, flush=True)

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        with lock:
            record = fleet.handle(topic, payload)
            if record is None or not as_json:
                return
            line = {"received": dt.datetime.now(dt.timezone.utc).isoformat(
                timespec="milliseconds"), "topic": topic, "retained": retained, **record}
            try:
                text = json.dumps(line, allow_nan=False)
            except (ValueError, RecursionError):
                fleet.malformed += 1
                return
        try:
            out.write(text + "\n")
            out.flush()
        except OSError:           # the reader went away (| head): stop, as cat does
            stop.set()

    if client_id:
        cid, persistent = client_id, True
    else:
        cid, persistent = default_client_id(name)
        if not persistent:
            report(f"not on a terminal and no --name: client id {cid}, a session that ends "
                   "with this watcher (give --name NAME to keep one across restarts)")
    conn = Connection(url, prefix, cid, persistent, ca_file, cert_file, key_file, insecure,
                      on_message, sparkplug_group, report)
    conn.start()
    page = None
    if web is not None:
        try:
            page = _serve(web, fleet, lock, conn)
        except UsageError:
            conn.close()
            raise
    end = None if duration is None else time.monotonic() + duration
    # SIGTERM (systemd, docker stop) ends the watch as Ctrl-C does: connections closed, the
    # web page's clients told, exit 0
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def remaining() -> float:
        return 0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))

    next_tick = time.monotonic()

    def tick() -> None:             # the web page's delta, once a second
        nonlocal next_tick
        if page is not None and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + 1.0
            page.feed.tick()

    def render(console):
        with lock:
            fleet.prune()
            # the rows that fit: title, banner, header, rules and caption take the rest
            room = max(console.height - 8 - len(conn.banner) - 5, 1)
            return fleet.table(max_rows=room, banner=list(conn.banner))

    try:
        if live_view:
            from rich.console import Console
            from rich.live import Live
            console = Console(file=out)
            with Live(render(console), console=console, auto_refresh=False) as live:
                while not stop.is_set() and (end is None or time.monotonic() < end):
                    stop.wait(remaining())
                    live.update(render(console), refresh=True)
                    tick()
        else:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                stop.wait(remaining())
                with lock:
                    fleet.prune()
                tick()
    except KeyboardInterrupt:
        pass
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if page is not None:
            from harken.agent.plant.web.server import stop as stop_page
            stop_page(page)
        conn.close()
    if not as_json and not live_view:       # piped table view: one snapshot at the end
        from rich.console import Console
        with lock:
            table = fleet.table(banner=list(conn.banner))
        Console(file=out, width=120).print(table)
    elif as_json and fleet.malformed:
        report(f"{fleet.malformed} malformed message(s) skipped")
    return 0


def _serve(address: tuple[str, int], fleet: Fleet, lock: threading.Lock, conn: Connection):
    """The web page's server (agent/plant/web/, loaded only with ``--web``), started;
    UsageError when the address cannot be listened on."""
    from harken.agent.plant.web.feed import Feed
    from harken.agent.plant.web.server import start
    host, port = address

    def banner() -> list[tuple[str, str]]:
        with conn.lock:
            return list(conn.banner)

    feed = Feed(fleet, lock, banner, HISTORY_S)
    try:
        server = start(host, port, feed)
    except OSError as exc:
        raise UsageError(f"--web {host}:{port}: cannot listen there ({exc.strerror or exc}); "
                         "choose another port, or an address of this computer") from None
    where = server.url()
    conn.say(f"web page at {where}" + ("" if server.loopback_only else
              " (open to the network: put it behind the plant's reverse proxy, "
              "docs/watch.md)"), "green")
    return server
