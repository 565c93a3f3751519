"""Reaching an MQTT broker: the TLS context, broker URLs, and why a connection failed.

Shared by the agent's durable publisher (agent/sinks/mqtt/publisher.py) and the plant-side
`harken watch`. paho reports a failed connection attempt without its cause
(``on_connect_fail`` takes no exception), so :func:`diagnose` repeats the TCP and TLS steps
with the same context and names what went wrong: unreachable host, untrusted certificate,
failed handshake.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from harken.common.errors import HarkenError

_log = logging.getLogger(__name__)


class BrokerError(HarkenError, ValueError):
    """A broker setting that cannot work (bad URL, unreadable certificate file)."""


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """Verification on (system CAs, or ``ca_file``); a client certificate when given."""
    for key, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        # ssl opens what it is given and a FIFO waits for a writer forever: regular files only
        if path and os.path.exists(path) and not os.path.isfile(path):
            raise BrokerError(f"mqtt.{key} = {path}: not a regular file (a certificate file "
                              f"is expected)")
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"mqtt.ca_file = {ca_file}: cannot load CA certificates "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if cert_file or key_file:
        if not cert_file:
            raise BrokerError("mqtt.key_file is set but mqtt.cert_file is not: a client "
                              "certificate needs both")
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"mqtt.cert_file = {cert_file}, mqtt.key_file = {key_file}: "
                              f"cannot load the client certificate "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def use_tls(client, ca_file: str | None, cert_file: str | None, key_file: str | None,
            insecure: bool, warn: Callable[[str], None], setting: str) -> ssl.SSLContext:
    """Give a paho client our TLS context (kept by the caller for :func:`diagnose`);
    turning verification off is always warned about, naming the ``setting`` that did it."""
    ctx = tls_context(ca_file, cert_file, key_file, insecure)
    client.tls_set_context(ctx)
    if insecure:
        warn(f"WARNING: TLS certificate verification is OFF ({setting}): anyone on the "
             "network path can pose as the broker")
        client.tls_insecure_set(True)
    return ctx


def refusal(host: str, port: int, reason_code, credentials_hint: str) -> str:
    """The line for a CONNACK refusal; credential problems get ``credentials_hint``."""
    msg = f"broker {endpoint_name(host, port)} refused the connection: {reason_code}"
    if any(w in str(reason_code).lower() for w in ("authori", "password")):
        msg += f" ({credentials_hint})"
    return msg


def diagnose(host: str, port: int, ctx: ssl.SSLContext | None, timeout: float = 5.0,
             waited: float = 0.0) -> str:
    """One line saying why a connection to ``host:port`` fails (or that TCP/TLS succeed).
    The hints name the port and host as given, whether by ``mqtt.host``/``port``, an
    ``mqtt.brokers`` URL or a ``harken watch`` URL. ``waited``: how long the failed attempt
    took; one that spent paho's whole connect timeout on a broker that takes TCP is a TLS
    handshake never answered, not probed again (a second ``timeout`` s in paho's thread,
    which held a stop as long; FINDINGS of docs/mqtt.md "Several brokers: failover")."""
    name = endpoint_name(host, port)
    unanswered_tls = (f"broker {name} accepted TCP but did not answer the TLS handshake "
                      f"within {timeout:g} s (a frozen or overloaded broker?)")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return f"cannot reach broker {name}: {exc.strerror or exc}"
    with sock:
        if ctx is None:
            return f"broker {name} accepted TCP but the MQTT connection failed"
        if waited >= timeout - 0.5:
            return unanswered_tls
        sock.settimeout(timeout)
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (f"TLS: the certificate of broker {name} was not accepted: "
                    f"{exc.verify_message} (check mqtt.ca_file: it must hold the CA that "
                    f"signed the broker's certificate, and the host name, of mqtt.host or "
                    f"the URL, must match its name)")
        except TimeoutError:
            return unanswered_tls
        except (ssl.SSLError, OSError) as exc:
            return (f"TLS handshake with broker {name} failed: {exc} (is port {port} a TLS "
                    f"listener? mqtts:// URLs and mqtt.tls = true speak TLS; check "
                    f"mqtt.cert_file and mqtt.key_file)")
    return f"broker {name} accepted TCP and TLS but the MQTT connection failed"


BROKERS_MAX = 16                  # broker URLs in one list (a cluster's nodes, not a fleet)


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """What makes two URLs one broker: the host in any case, without a trailing dot, an
        IP address in its one canonical spelling ([0:0:0:0:0:0:0:1] is [::1]), the port with
        the default filled in."""
        return self.host.lower().rstrip("."), self.port


def _redacted(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{head}{sep}{userinfo}{at}{host}"


def check_host(host: str) -> str:
    """The host to connect to, or BrokerError: an IP address (in its canonical spelling), or
    a name the resolver can be asked for: at most 253 characters, labels of 1 to 63 (RFC
    1035), no spaces or control characters. An international name is written in punycode
    (``bücher.example`` is ``xn--bcher-kva.example``), as the resolver needs it."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if "%" in host:                      # a scoped IPv6 address (fe80::1%eth0): as given
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            return host
        except ValueError:
            pass
    bad = next((c for c in host if c.isspace() or not c.isprintable() or c in "[]@,"), None)
    if bad is not None:
        raise BrokerError(f"the host name has {bad!r} in it")
    try:
        ascii_name = host.rstrip(".").encode("idna")
    except UnicodeError:
        ascii_name = b""
    if not ascii_name or len(ascii_name) > 253 or \
            any(not 1 <= len(label) <= 63 for label in ascii_name.split(b".")):
        raise BrokerError(f"{host[:80]!r} is not a host name (at most 253 characters, "
                          "dot-separated labels of 1 to 63)")
    return ascii_name.decode() + ("." if host.endswith(".") else "")


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883): the
    one set of URL rules of the agent's ``mqtt.brokers`` and ``harken watch``
    (docs/mqtt.md "Several brokers: failover"). Refused, in one line that never shows the
    password: a space, tab or newline anywhere (urllib would silently drop them and
    connect elsewhere), a scheme other than mqtt/mqtts (tcp/ssl aliases), an IPv6 address
    without brackets, an empty or out-of-range port (``host:`` too), a path, query or
    fragment (MQTT has none: the topic prefix is a setting), no host."""
    if "://" not in url:
        url = "mqtt://" + url
    shown = _redacted(url)[:120]         # the URL may carry a password: never echo it
    bad = next((c for c in url if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise BrokerError(f"broker URL {shown!r}: has {bad!r} in it (no spaces, tabs or "
                          f"line breaks in a URL)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:            # "Invalid IPv6 URL"
        raise BrokerError(f"broker URL {shown!r}: {exc} (an IPv6 address goes in brackets: "
                          f"mqtt://[::1]:1883)") from None
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise BrokerError(f"broker URL {shown!r}: scheme {parts.scheme!r} is not one of "
                          f"mqtt://, mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # credentials whose password has '/', '?' or '#': urllib ends the host part there,
        # and the password's head would be read (and shown) as a host and port
        raise BrokerError(f"broker URL {parts.scheme}://***: a user name or password with "
                          f"'/', '?' or '#' is written %2F, %3F, %23 in a URL (or use "
                          f"--password-file)")
    hostport = parts.netloc.rpartition("@")[2]
    if not hostport.startswith("[") and hostport.count(":") > 1:
        raise BrokerError(f"broker URL {shown!r}: an IPv6 address goes in brackets "
                          f"(mqtt://[::1]:1883)")
    try:
        if parts.port == 0 or hostport.endswith(":"):   # urllib reads both as "no port"
            raise ValueError
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise BrokerError(f"broker URL {shown!r}: the port must be a number from 1 to 65535") \
            from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise BrokerError(f"broker URL {shown!r}: a broker URL has no path, query or fragment "
                          f"(mqtt://host[:port]); the topic prefix is a setting of its own")
    if not parts.hostname:
        raise BrokerError(f"broker URL {shown!r}: no host name")
    try:
        host = check_host(parts.hostname)
    except BrokerError as exc:
        raise BrokerError(f"broker URL {shown!r}: {exc}") from None
    return BrokerUrl(host, port, tls,
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


_NEXT_URL = re.compile(r"(\s*,\s*)(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _parses(text: str) -> bool:
    try:
        parse_broker_url(text)
    except BrokerError:
        return False
    return True


def split_broker_urls(text: str) -> list[str]:
    """One comma-separated string of broker URLs as a list. Split only where a comma is
    followed by the next URL's scheme when the text has credentials in it (a password may
    hold a comma, and a piece of it must never be shown as a URL of its own); on every
    comma otherwise (bare ``host:port`` pieces). Spaces around a comma are the separator's."""
    text = text.strip()
    if "@" in text:
        # a password may hold ",mqtt://" itself: a piece without credentials that is no
        # URL (``mqtt://op:x`` of ``mqtt://op:x,mqtt://y@h1``) goes on into the next one,
        # so no head of a password is ever parsed, and shown, as a URL of its own
        parts = _NEXT_URL.split(text)
        pieces, cur = [], parts[0]
        for sep, nxt in zip(parts[1::2], parts[2::2]):
            if "@" not in cur and not _parses(cur):
                cur += sep + nxt
            else:
                pieces.append(cur)
                cur = nxt
        pieces.append(cur)
        pieces = [p.strip() for p in pieces]
    else:
        pieces = [p.strip() for p in text.split(",")]
    return [p for p in pieces if p]


def parse_broker_list(texts: list[str], where: str) -> list[BrokerUrl]:
    """The broker URLs of one cluster (the agent's ``mqtt.brokers``, ``harken watch``'s
    URLs), each parsed by :func:`parse_broker_url`; BrokerError, naming ``where`` (and the
    index, from 0, of a bad URL), for a list that cannot serve as one cluster: none, more
    than ``BROKERS_MAX``, the same broker twice (:attr:`BrokerUrl.key`), plain and TLS URLs
    mixed (one TLS setting serves every connection)."""
    if len(texts) > BROKERS_MAX:
        raise BrokerError(f"{where} has {len(texts)} URLs: at most {BROKERS_MAX}")
    urls, seen = [], {}
    for i, text in enumerate(texts):
        try:
            url = parse_broker_url(text)
        except BrokerError as exc:
            raise BrokerError(f"{where}[{i}]: {exc}") from None
        if url.key in seen:
            raise BrokerError(f"{where}[{i}] names the same broker as {where}[{seen[url.key]}] "
                              f"({endpoint_name(*url.key)}; default ports filled in, IP "
                              f"addresses and host names compared as the same host): each "
                              f"broker once")
        seen[url.key] = i
        urls.append(url)
    if len({u.tls for u in urls}) > 1:
        raise BrokerError(f"{where} mixes mqtt:// and mqtts:// URLs: one TLS setting serves "
                          f"every connection; use one scheme for all")
    return urls


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked): a plain
    MQTT client that a broker drops before its CONNACK may be talking to a TLS listener."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


def make_client(settings, client_id: str, log: Callable[[str], None]):
    """A paho client as every agent connection uses it: MQTT 5 (``mqtt.protocol`` "auto" or
    "5") or 3.1.1, a clean session every time (the agent's durability is its own outbox),
    the settings' credentials and TLS, reconnects backing off from 1 to 60 s. Returns
    (client, TLS context or None)."""
    import paho.mqtt.client as mqtt
    if getattr(settings, "protocol", "auto") == "3.1.1":
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    if settings.username:
        client.username_pw_set(settings.username, settings.resolved_password())
    ctx = use_tls(client, settings.ca_file, settings.cert_file, settings.key_file,
                  settings.tls_insecure, _log.warning, "mqtt.tls_insecure") if settings.tls else None
    client.reconnect_delay_set(1, 60)
    return client, ctx


def is_mqtt5(client) -> bool:
    import paho.mqtt.client as mqtt
    return client.protocol == mqtt.MQTTv5


def fall_back_to_311(client) -> None:
    """The next connection of ``client`` speaks MQTT 3.1.1 (clean session). paho has no
    public way to change a client's protocol; its ``_protocol`` decides how every packet
    is written and read (paho < 3, pyproject.toml), and a 3.1.1 client needs
    ``_clean_session``, which a version-5 client never set."""
    import paho.mqtt.client as mqtt
    client._protocol = mqtt.MQTTv311
    client._clean_session = True


BACKOFF_MAX_S = 60     # the longest wait between reconnects


def reconnect_delay(lost_up: bool, misses: int, brokers: int, flaps: int = 0) -> float:
    """Seconds before the next connection attempt over a list of ``brokers`` (docs/mqtt.md
    "Several brokers: failover"): ``lost_up``, a connection that was up has just ended (the
    next broker at once, 0 to 1 s); ``misses``, failed attempts in a row, this one included
    (0 to 1 s within a round of the list; after each whole round failed 1, 2, 4 ... up to
    ``BACKOFF_MAX_S``); ``flaps``, connections in a row that ended at once or were taken
    over (doubling from 1 s). Jittered (random.uniform, +-25 %): agents that lost one broker
    together must not all come back in the same second."""
    if flaps:
        return min(BACKOFF_MAX_S, 2 ** min(flaps - 1, 16)) * random.uniform(0.75, 1.25)
    if lost_up or misses % brokers:
        return random.uniform(0.0, 1.0)
    rounds = misses // brokers
    return min(BACKOFF_MAX_S, 2 ** min(rounds - 1, 16)) * random.uniform(0.75, 1.25)


def endpoint_name(host: str, port: int) -> str:
    """``host:port`` as logs and the stats say it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionReports:
    """What a broker connection says when it fails: once per distinct problem, not at
    every retry, nor at every round over a list of brokers (each broker's problem is its
    own line, said once, until a connection holds: ``_forget``). Needs ``host``/``port``
    (the broker being tried), ``tls``, ``log`` and ``_settled``."""
    _last_error = ""
    _said: frozenset[str] = frozenset()

    def _report(self, msg: str) -> None:
        if msg not in self._said:
            self.log(msg)
            self._said = self._said | {msg}
        self._last_error = msg

    def _forget(self, msg: str | None = None) -> None:
        """The next report of ``msg`` (of any problem when None) is news again."""
        self._said = self._said - {msg} if msg is not None else frozenset()
        if msg is None or self._last_error == msg:
            self._last_error = ""

    def _on_connect_fail(self, client, userdata) -> None:
        timer = getattr(self, "_connect_timer", None)
        waited = timer.waited() if timer is not None else 0.0
        self._report(diagnose(self.host, self.port, self.tls, waited=waited) + "; retrying")
        self._settled.set()


CONNECT_TIMEOUT_S = 10.0   # a broker that took the TCP connection but not yet the MQTT one


class ConnectTimer:
    """Gives up on a connection attempt whose CONNACK has not come within ``timeout`` s.

    paho waits for a CONNACK as long as the keepalive (up to an hour by mqtt.keepalive):
    a broker that accepts TCP and never answers (frozen by SIGSTOP, hung, a load balancer
    in front of a dead node) held a client that long before it tried the next broker of
    its list (docs/mqtt.md "Several brokers: failover"). ``started`` runs in paho's
    ``on_pre_connect``; ``answered`` at the CONNACK or the close; on expiry the socket is
    shut, paho sees the end and calls ``on_disconnect``, where ``take_expired`` says why.

    The wait is per broker (``where()`` names the one being tried) and doubles after each
    attempt it cut there, from ``CONNECT_TIMEOUT_S`` up to ``cap`` (max(keepalive, 60) s),
    back to the start once a connection is made: a loaded cluster that answers in 11 s is
    reached on the second try, not given up every 10 s for ever (docs/mqtt.md)."""

    def __init__(self, client, timeout: float | None = None, cap: float = 60.0,
                 where: Callable[[], object] | None = None) -> None:
        self.client = client
        self.base = float(CONNECT_TIMEOUT_S if timeout is None else timeout)
        self.cap = max(float(cap), self.base)
        self.timeout = self.base            # the wait of the current (or last) attempt
        self._where = where or (lambda: None)
        self._waits: dict[object, float] = {}   # broker -> its next wait, where grown
        self._key: object = None
        self.began = time.monotonic()       # when the current (or last) attempt began
        self._attempt = 0
        self._expired = False
        self._lock = threading.Lock()

    def waited(self) -> float:
        """Seconds since the current (or last) attempt began."""
        return time.monotonic() - self.began

    def wait_for(self, key: object) -> float:
        """The CONNACK wait the next attempt at broker ``key`` gets."""
        with self._lock:
            return self._waits.get(key, self.base)

    def started(self, *_args) -> None:
        key = self._where()
        self.began = time.monotonic()
        with self._lock:
            self._attempt += 1
            n, self._expired, self._key = self._attempt, False, key
            self.timeout = self._waits.get(key, self.base)
            wait = self.timeout
        timer = threading.Timer(wait, self._expire, args=(n,))
        timer.daemon = True
        timer.start()

    def answered(self, made: bool = False) -> None:
        """The attempt has an outcome; ``made``: a connection (its broker's wait is reset)."""
        with self._lock:
            self._attempt += 1
            if made:
                self._waits.pop(self._key, None)

    def take_expired(self) -> bool:
        """Whether the attempt that just ended was given up by the timer (once)."""
        with self._lock:
            expired, self._expired = self._expired, False
        return expired

    def _expire(self, n: int) -> None:
        with self._lock:
            if n != self._attempt:
                return
            self._attempt += 1
            self._expired = True
            self._waits[self._key] = min(self.cap, self.timeout * 2)   # the next try waits longer
        sock = self.client.socket()
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)   # paho sees the end and reconnects
        except OSError:
            pass


def unanswered(name: str, timeout: float) -> str:
    """The line for a broker that accepted TCP but never answered the MQTT connection."""
    return (f"broker {name} did not answer the MQTT connection within {timeout:g} s (it "
            f"accepted TCP: a frozen or overloaded broker?)")
