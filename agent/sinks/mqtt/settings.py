"""The ``[mqtt]`` table (docs/mqtt.md): broker(s), credentials, TLS, outbox, profile. The
JSON-topic sink (sink.py) and the Sparkplug B sink (../sparkplug/sink.py) both read it:
they take their base class, ``MqttTableSink``, from here, which names the table and its
model once for both."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, TypeAdapter, \
    ValidationError, model_validator

from harken.agent.sinks.base import Sink, SinkSettings
from harken.agent.sinks.mqtt.broker import BrokerError, parse_broker_list, parse_broker_url, \
    split_broker_urls
from harken.common.settings import (ClientId, Count, Host, PathText, Port, Seconds,
                                    SparkplugId, Text, TopicPrefix, resolve_password)

__all__ = ["MqttSection", "MqttTableSink", "default_client_id"]

ID_MAX = 128                      # characters of a client id (ClientId)
# the other files of agent.state_dir (Sparkplug's outboxes and bdSeq, the seq reservations,
# the calibration override, the enrolled bank): an outbox named like them would share one
RESERVED_PREFIXES = ("sparkplug", "seq-", "threshold-", "enrolled-", "recent-", "feedback-",
                     "maintenance-", "evidence-", "audit", "control", "commands-")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _outbox_name(value: str) -> str:
    """``mqtt.outbox`` is a file name inside the agent's own state folder: an absolute path
    or ``..`` let two agents share one outbox (each delivering the other's rows, seqs sent
    twice), and a name like Sparkplug's ``sparkplug-<machine>.db`` made the two profiles of
    ``profile = "both"`` share one file (JSON on DDATA topics). docs/mqtt.md."""
    if not _FILE_NAME.match(value) or value in (".", ".."):
        raise ValueError(f"a plain file name inside agent.state_dir (letters, digits, '_', "
                         f"'-', '.'; no folder, no '..', at most 100 characters), got "
                         f"{value!r}")
    if value.lower().startswith(RESERVED_PREFIXES):
        raise ValueError(f"{value!r} is named like another file of agent.state_dir (names "
                         f"starting with {', '.join(RESERVED_PREFIXES)} are the agent's own: "
                         f"Sparkplug's outboxes are sparkplug-<machine>.db); choose another")
    return value


def _brokers(urls: list[str]) -> list[str]:
    """``mqtt.brokers``: 1 to 16 URLs of one cluster, tried in order (docs/mqtt.md "Several
    brokers: failover"), under the URL rules ``harken watch`` applies too
    (broker.parse_broker_list). Refused besides: an empty list (no broker at all: leave the
    key out for ``host``/``port``) and credentials in a URL (they are ``mqtt.username``/
    password: one login serves every node, and a URL is echoed in logs). The values are
    never echoed by the config error (agent/config.py SECRET_KEYS): a URL may hold a
    password."""
    if not urls:
        raise ValueError("mqtt.brokers is an empty list: give at least one broker URL "
                         "(mqtt://host[:port] or mqtts://host[:port]), or leave the key out "
                         "and set mqtt.host")
    for i, text in enumerate(urls):
        where = f"mqtt.brokers[{i}]"
        if isinstance(text, str) and "@" in text.split("://", 1)[-1]:
            raise ValueError(f"{where}: credentials in a broker URL are not taken: set "
                             f"mqtt.username and the password (mqtt.password, password_file "
                             f"or password_env), which serve every broker of the list")
        n = len(split_broker_urls(text)) if isinstance(text, str) else 1
        if n > 1:
            raise ValueError(f"{where} holds {n} URLs: one URL per "
                             f"list item (brokers = [\"mqtt://a\", \"mqtt://b\"])")
    try:
        parsed = parse_broker_list(urls, "mqtt.brokers")
    except BrokerError as exc:
        raise ValueError(str(exc)) from None
    for i, (text, url) in enumerate(zip(urls, parsed)):
        where = f"mqtt.brokers[{i}]"
        try:
            TypeAdapter(Host).validate_python(url.host)
        except ValidationError:
            raise ValueError(f"{where}: {url.host[:80]!r} is not a host name or address") \
                from None
        if url.username is not None or "@" in text.split("://", 1)[-1]:
            raise ValueError(f"{where}: credentials in a broker URL are not taken: set "
                             f"mqtt.username and the password (mqtt.password, password_file "
                             f"or password_env), which serve every broker of the list")
    return urls


def _broker_text(value):
    """``brokers = "mqtt://a,mqtt://b"`` (the form ``harken watch`` takes) is that list."""
    return split_broker_urls(value) if isinstance(value, str) else value


def _tls_scheme(text) -> bool:
    """Whether a ``mqtt.brokers`` entry asks for TLS (``mqtts://``, ``ssl://``), before it
    is checked."""
    return isinstance(text, str) and text.split("://", 1)[0].strip().lower() in ("mqtts", "ssl") \
        and "://" in text


def _protocol(value):
    """``protocol = 5`` (a TOML number) means "5"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def default_client_id(kind: str, names: tuple[str, ...], state_dir: Path) -> str:
    """``harken-<kind...>-<names...>-<8 hex>``: stable across restarts (broker ACLs and
    sessions rely on it) but distinct between machines (``names``) and between agents of
    one node, which differ in host or state folder (docs/mqtt.md "Client ids"). The hash is
    of the host name, /etc/machine-id and the absolute ``state_dir``; two copies of one SD
    card image on one network share all three, and the broker's takeover is then reported
    and backed off."""
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    who = "\0".join([socket.gethostname(), machine_id, os.path.abspath(state_dir)])
    digest = hashlib.sha256(who.encode()).hexdigest()[:8]
    head = "-".join(("harken", kind, *names) if kind else ("harken", *names))
    return f"{head[:ID_MAX - 9]}-{digest}"


class MqttSection(SinkSettings):
    enabled: bool = False
    host: Host = "localhost"
    port: Port = 1883
    # several brokers (a cluster's nodes), tried in order, the next on a loss; instead of
    # host/port (docs/mqtt.md "Several brokers: failover"); endpoints() reads either
    brokers: Annotated[list[str], BeforeValidator(_broker_text), AfterValidator(_brokers)] | None = None
    prefix: TopicPrefix = "harken"
    client_id: ClientId = ""          # default: default_client_id(), stable across restarts
    keepalive: Count(5, 3600, "seconds") = 30
    username: Text(256) | None = None
    password: str | None = Field(None, repr=False)   # or password_file = "..." (docs/agent.md)
    password_env: str | None = None   # or the name of an environment variable
    tls: bool = False
    ca_file: PathText | None = None
    cert_file: PathText | None = None
    key_file: PathText | None = None
    tls_insecure: bool = False        # certificate verification off: logged as a warning
    outbox: Annotated[str, AfterValidator(_outbox_name)] = "outbox.db"   # in agent.state_dir
    outbox_max: Count(10, 10**9, "messages") = 100_000
    # a score is held in memory this long for its PUBACK before it is written (an SD card's
    # wear; docs/mqtt.md "Wear"); 0 writes every message at once
    outbox_hold_s: Seconds(0, 60) = 5.0
    profile: Literal["json", "sparkplug-b", "both"] = "json"   # docs/mqtt.md
    group_id: SparkplugId = "harken"  # Sparkplug group
    edge_node_id: SparkplugId | None = None   # default: agent.node
    # MQTT 5 where the broker speaks it (a refused publish says so); "auto" falls back to
    # 3.1.1 by itself when the broker refuses 5 (docs/mqtt.md "Protocol")
    protocol: Annotated[Literal["auto", "5", "3.1.1"], BeforeValidator(_protocol)] = "auto"
    # a window of messages with no PUBACK for this long is a dead connection
    ack_timeout_s: Seconds(1, 3600) = 30.0
    homeassistant: bool = False       # publish Home Assistant device discovery
    discovery_prefix: TopicPrefix = "homeassistant"
    # operator commands over MQTT (maintenance, feedback, recalibrate-threshold): the agent
    # subscribes to each machine's command topic, Home Assistant gets a maintenance switch,
    # Sparkplug a writable Maintenance metric. Off by default; who may send one is the
    # broker's ACL (docs/mqtt.md "Commands"). Strict: a stray "no" must not turn them on.
    commands: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _mqtts_means_tls(cls, data):
        """``mqtts://`` URLs in ``mqtt.brokers`` turn TLS on (``tls = false`` set with them
        is refused below)."""
        urls = data.get("brokers") if isinstance(data, dict) else None
        urls = _broker_text(urls)
        if isinstance(data, dict) and "tls" not in data and isinstance(urls, list) \
                and any(_tls_scheme(u) for u in urls):
            data = {**data, "tls": True}
        return data

    @model_validator(mode="after")
    def _brokers_alone(self):
        """``brokers`` replaces ``host``/``port``: both set would leave one of them unused,
        and which one is a guess."""
        if self.brokers is None:
            return self
        both = [f"mqtt.{k}" for k in ("host", "port") if k in self.model_fields_set]
        if both:
            raise ValueError(f"mqtt.brokers and {' and '.join(both)} are both set: give the "
                             f"broker list alone (mqtt.brokers) or one broker "
                             f"(mqtt.host, mqtt.port), not both")
        secure = any(_tls_scheme(u) for u in self.brokers)
        if not self.tls and secure:
            raise ValueError("mqtt.brokers has mqtts:// (TLS) URLs but mqtt.tls = false: "
                             "remove mqtt.tls (mqtts:// turns it on) or use mqtt:// URLs")
        # the mirror image: TLS said by a key while every URL says plain (harken watch
        # refuses --ca-file with mqtt:// URLs alike; docs/mqtt.md)
        if not secure:
            if self.tls:
                raise ValueError("mqtt.tls = true but mqtt.brokers has mqtt:// (plain) URLs: "
                                 "write mqtts://host[:port] URLs for TLS (mqtts:// turns it "
                                 "on), or remove mqtt.tls")
            tls_keys = [f"mqtt.{k}" for k in ("ca_file", "cert_file", "key_file", "tls_insecure")
                        if getattr(self, k)]
            if tls_keys:
                raise ValueError(f"{' and '.join(tls_keys)} set but mqtt.brokers has mqtt:// "
                                 f"(plain) URLs, which do not use TLS: write mqtts:// URLs, "
                                 f"or remove {' and '.join(tls_keys)}")
        return self

    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers to connect to, in order: ``brokers``, or ``[(host, port)]``. Everything
        that connects uses this (agent/sinks/mqtt/publisher.py)."""
        if self.brokers is None:
            return [(self.host, self.port)]
        return [(u.host, u.port) for u in map(parse_broker_url, self.brokers)]

    @model_validator(mode="after")
    def _password_needs_username(self):
        if (self.password is not None or self.password_env) and not self.username:
            raise ValueError("a password (mqtt.password, password_file or password_env) "
                             "needs mqtt.username")
        return self

    def resolved_password(self) -> str | None:
        return resolve_password(self.password, None, self.password_env, "mqtt.password_env")

    def for_machine(self, name: str) -> MqttSection:
        """One broker connection per machine (a Last Will each): its own client id and
        outbox file."""
        outbox = Path(self.outbox)
        return self.model_copy(update={
            "outbox": str(outbox.with_name(f"{outbox.stem}-{name}{outbox.suffix}")),
            "client_id": f"{self.client_id}-{name}" if self.client_id else ""})


class MqttTableSink(Sink):
    """The base of the sinks that read ``[mqtt]``."""
    table = "mqtt"
    Settings = MqttSection
