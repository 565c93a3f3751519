"""The MQTT topic scheme (docs/mqtt.md), written once: the publisher, Home Assistant
discovery and ``harken watch`` build and parse topics here.

Everything is keyed by node and machine, the identity of one agent (one device may run
several agents, one per machine, under one node name):
``<prefix>/<node>/<machine>/{score,anomaly,event,status,stats,maintenance}``, and for the
operator's commands (docs/mqtt.md "Commands") ``<prefix>/<node>/<machine>/command`` (the
agent subscribes, only with ``mqtt.commands``) and ``.../result`` (its replies);
``<discovery_prefix>/device/harken_<node>_<machine>/config`` for Home Assistant.
"""

from __future__ import annotations

from dataclasses import dataclass

MACHINE_KINDS = ("score", "anomaly", "event", "status", "stats", "maintenance", "command",
                 "result")
# what the agents publish about their machines (``harken watch`` reads these); the other
# kinds are the operator's commands to an agent and its replies
STATE_KINDS = ("score", "anomaly", "event", "status", "stats", "maintenance")


@dataclass(frozen=True)
class Topics:
    """The topics of one node under ``prefix``."""
    prefix: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    def machine(self, machine: str, kind: str) -> str:
        """``kind`` is one of MACHINE_KINDS."""
        if kind not in MACHINE_KINDS:
            raise ValueError(f"unknown machine topic {kind!r}; known: {list(MACHINE_KINDS)}")
        return f"{self.base}/{machine}/{kind}"


@dataclass(frozen=True)
class ParsedTopic:
    node: str
    machine: str
    kind: str                    # one of MACHINE_KINDS


def parse_topic(prefix: str, topic: str) -> ParsedTopic | None:
    """The parts of a Harken topic under ``prefix``; None for any other topic."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) == 3 and parts[2] in MACHINE_KINDS:
        return ParsedTopic(parts[0], parts[1], parts[2])
    return None


def subscription(prefix: str) -> str:
    """Every Harken topic of every node under ``prefix``."""
    return f"{prefix}/#"


def ha_status_topic(discovery_prefix: str) -> str:
    """Home Assistant's birth/will topic (``online`` after it restarts)."""
    return f"{discovery_prefix}/status"


def object_id(node: str, machine: str) -> str:
    """The agent's Home Assistant device id; ids allow [a-zA-Z0-9_-] only."""
    def clean(text: str) -> str:
        return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)
    return f"harken_{clean(node)}_{clean(machine)}"


def discovery_topic(discovery_prefix: str, node: str, machine: str) -> str:
    return f"{discovery_prefix}/device/{object_id(node, machine)}/config"
