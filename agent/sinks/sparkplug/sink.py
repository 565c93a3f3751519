"""``mqtt.profile = "sparkplug-b"`` (or ``"both"``): each monitored machine is a device of
the agent's Sparkplug edge node. The machines of one agent share one node, one connection
(``_NODES``); the node leaves when the last of its devices closes."""

from __future__ import annotations

import threading

from typing import TYPE_CHECKING

from harken.agent.sinks.mqtt.outbox import Outbox
from harken.agent.decision.records import IntervalResult, MaintenanceChanged, Started, \
    StatusEvent
from harken.agent.sinks.base import CommandHandler, register
from harken.agent.sinks.mqtt.publisher import NetworkSink

if TYPE_CHECKING:                  # protobuf is imported only where Sparkplug is enabled
    from harken.agent.sinks.sparkplug.node import EdgeNode

_NODES: dict[tuple, tuple[EdgeNode, int]] = {}     # key -> (node, devices using it)
_NODES_LOCK = threading.Lock()


def _key(config) -> tuple:
    m = config.mqtt
    return (tuple(m.endpoints()), m.group_id, config.mqtt.edge_node_id or config.agent.node)


@register
class SparkplugSink(NetworkSink):
    """A machine as a device of the agent's edge node; the node (one connection, one
    publisher) is shared by the machines of one agent."""
    name = "sparkplug"
    profiles = ("sparkplug-b", "both")

    @classmethod
    def from_config(cls, config) -> SparkplugSink:
        from harken.agent import version
        from harken.agent.sinks.sparkplug.node import EdgeNode
        m = config.mqtt
        state = config.writable_folder("agent.state_dir", config.agent.state_dir)
        key = _key(config)
        with _NODES_LOCK:
            node, users = _NODES.get(key, (None, 0))
            if node is None:
                node = EdgeNode(config.mqtt_settings(), m.group_id, key[2], state, version())
            _NODES[key] = (node, users + 1)
        machine = config.agent.machine
        try:
            outbox = Outbox(state / f"sparkplug-{machine}.db", m.outbox_max)
        except BaseException:
            _release(key)
            raise
        return cls(node, key, machine, outbox, config)

    def __init__(self, node: EdgeNode, key: tuple, machine: str, outbox: Outbox,
                 config) -> None:
        self.node, self.key, self.outbox = node, key, outbox
        self.device = node.add_device(machine, outbox, {
            "model": "", "backend": "", "section": config.agent.section,
            "interval_s": config.decision.interval_s})

    @property
    def commands(self) -> CommandHandler | None:
        """The runner's command handler: the device's Maintenance metric is writable (DCMD)
        while one is set (docs/mqtt.md "Commands")."""
        return self.device.commands

    @commands.setter
    def commands(self, handler: CommandHandler | None) -> None:
        self.node.take_commands(self.device, handler)

    def status(self, event: StatusEvent) -> None:
        # the model and backend are known once the runner starts: the DBIRTH says them
        if isinstance(event, Started):
            self.node.describe(self.device, model=event.model, backend=event.backend)
        elif isinstance(event, MaintenanceChanged):
            self.node.maintenance(self.device, event.on)

    def interval(self, result: IntervalResult) -> None:
        self.node.data(self.device, result.payload())

    def health(self) -> dict:
        return {"sparkplug_outbox_depth": self.outbox.depth,
                "sparkplug_refused": self.outbox.refused_count,
                "sparkplug_refused_reason": self.outbox.last_refusal,
                "sparkplug_connected": self.node.connected,
                "sparkplug_ack_timeouts": self.node.publisher.ack_timeouts,
                # the server connected now (null: none) and how often it changed (failover)
                "sparkplug_broker": self.node.publisher.broker,
                "sparkplug_broker_changes": self.node.publisher.broker_changes}

    @property
    def seq_start(self) -> int:
        return self.outbox.last_seq + 1

    def close(self, flush_s: float = 5.0) -> None:
        self.node.remove_device(self.device, flush_s)
        _release(self.key)


def _release(key: tuple) -> None:
    with _NODES_LOCK:
        node, users = _NODES[key]
        if users > 1:
            _NODES[key] = (node, users - 1)
            return
        del _NODES[key]
    node.close()
