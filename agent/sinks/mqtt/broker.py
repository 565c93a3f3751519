"""Reaching an MQTT broker: the TLS context, broker URLs, and why a connection failed.

Shared by the agent's durable publisher (agent/sinks/mqtt/publisher.py) and the plant-side
`harken watch`. paho reports a failed connection attempt without its cause
(``on_connect_fail`` takes no exception), so :func:`diagnose` repeats the TCP and TLS steps
with the same context and names what went wrong: unreachable host, untrusted certificate,
failed handshake.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
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
    msg = f"broker {host}:{port} refused the connection: {reason_code}"
    if any(w in str(reason_code).lower() for w in ("authori", "password")):
        msg += f" ({credentials_hint})"
    return msg


def diagnose(host: str, port: int, ctx: ssl.SSLContext | None, timeout: float = 5.0) -> str:
    """One line saying why a connection to ``host:port`` fails (or that TCP/TLS succeed)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return f"cannot reach broker {host}:{port}: {exc.strerror or exc}"
    with sock:
        if ctx is None:
            return f"broker {host}:{port} accepted TCP but the MQTT connection failed"
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            return (f"TLS: the certificate of broker {host}:{port} was not accepted: "
                    f"{exc.verify_message} (check mqtt.ca_file: it must hold the CA that "
                    f"signed the broker's certificate, and mqtt.host must match its name)")
        except (ssl.SSLError, OSError) as exc:
            return (f"TLS handshake with broker {host}:{port} failed: {exc} (is mqtt.port a "
                    f"TLS listener? check mqtt.cert_file and mqtt.key_file)")
    return f"broker {host}:{port} accepted TCP and TLS but the MQTT connection failed"


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def _redacted(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{head}{sep}{userinfo}{at}{host}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883)."""
    if "://" not in url:
        url = "mqtt://" + url
    parts = urlsplit(url)
    url = _redacted(url)           # the URL may carry a password: never echo it
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise BrokerError(f"broker URL {url!r}: scheme {parts.scheme!r} is not one of "
                          f"mqtt://, mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        if parts.port == 0:            # urllib reads 0 as "no port": the default, silently
            raise ValueError
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise BrokerError(f"broker URL {url!r}: the port must be a number from 1 to 65535") \
            from None
    if not parts.hostname:
        raise BrokerError(f"broker URL {url!r}: no host name")
    return BrokerUrl(parts.hostname, port, tls,
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


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
        self._report(diagnose(self.host, self.port, self.tls) + "; retrying")
        self._settled.set()
