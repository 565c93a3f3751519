"""Home Assistant MQTT device discovery (one retained message per agent: node and machine).

Home Assistant's device-based discovery (``<discovery_prefix>/device/<id>/config``) lets
one message announce every entity of the agent: the anomaly score (sensor), the anomaly
state (binary_sensor, device_class ``problem``) and diagnostic sensors read from the stats
topic. Availability follows the agent's status topic; ``stopped`` counts as unavailable,
which Home Assistant's plain payload match would not do, hence the template.

Maintenance (docs/mqtt.md "Commands"): with ``mqtt.commands`` on, a ``switch`` whose state
is the retained maintenance topic and whose commands go to the machine's command topic, each
with a fresh command id (the agent refuses an id it has done: a switch that sent the same
payload twice would be refused the second time); with commands off, a read-only
binary_sensor on the same topic, so that the switch is never advertised where nothing
listens.
"""

from __future__ import annotations

from harken.agent import version
from harken.agent.sinks.mqtt.topics import Topics, discovery_topic, object_id

__all__ = ["DIAGNOSTICS", "discovery_payload", "discovery_topic", "object_id"]

# stats key -> (name, unit, device_class, state_class, display precision); diagnostic
# entities. RSS is in MiB (2**20 bytes); the eviction counter only grows; uptime has no
# state class (its long-term statistics would mean nothing).
DIAGNOSTICS = {
    "cpu_percent": ("CPU", "%", None, "measurement", 1),
    "rss_mb": ("Memory (RSS)", "MiB", "data_size", "measurement", 1),
    "inference_ms_median": ("Inference time per window", "ms", "duration", "measurement", 3),
    "outbox_depth": ("Outbox depth", None, None, "measurement", 0),
    "outbox_evicted": ("Outbox evictions", None, None, "total_increasing", 0),
    "uptime_s": ("Uptime", "s", "duration", None, 0),
}
QOS = 1                  # in every component: Home Assistant does not share a root qos


# the command a switch sends: ``value`` is its payload_on / payload_off; the id is the time
# of the click (Home Assistant renders command templates with its template engine, which
# has now()), so a click is never mistaken for a replay of the one before
SWITCH_COMMAND = ('{"id": "home-assistant-{{ now().timestamp() }}", "command": "maintenance", '
                  '"operator": "home-assistant", "state": "{{ value | lower }}"}')


def maintenance_component(topics: Topics, machine: str, dev: str, commands: bool) -> dict:
    """The maintenance entity: a switch that sends maintenance commands when commands are
    on, a binary_sensor that only shows the state when they are off."""
    state = topics.machine(machine, "maintenance")
    entity = {"name": f"{machine} maintenance", "unique_id": f"{dev}_maintenance",
              "state_topic": state, "value_template": "{{ value_json.state }}",
              "icon": "mdi:wrench", "qos": QOS}
    if not commands:
        return {"platform": "binary_sensor", **entity, "payload_on": "ON", "payload_off": "OFF"}
    return {"platform": "switch", **entity, "state_on": "ON", "state_off": "OFF",
            "payload_on": "ON", "payload_off": "OFF", "optimistic": False, "retain": False,
            "command_topic": topics.machine(machine, "command"),
            "command_template": SWITCH_COMMAND, "entity_category": "config"}


def discovery_payload(prefix: str, node: str, machine: str, interval_s: float = 10.0,
                      commands: bool = False) -> dict:
    """The retained device-discovery message. The score sensor expires after three report
    intervals without a score (a stalled agent's last score does not look live) and keeps
    its value when a replayed score arrives (docs/mqtt.md: replayed scores are history).
    ``commands``: the agent takes commands (``mqtt.commands``): the maintenance switch."""
    topics, dev = Topics(prefix, node), object_id(node, machine)
    status, stats = topics.machine(machine, "status"), topics.machine(machine, "stats")
    components: dict[str, dict] = {
        f"{dev}_score": {
            "platform": "sensor", "name": f"{machine} anomaly score",
            "unique_id": f"{dev}_score",
            "state_topic": topics.machine(machine, "score"),
            "value_template": "{{ this.state if value_json.replayed else value_json.score }}",
            "json_attributes_topic": topics.machine(machine, "score"), "state_class": "measurement",
            "expire_after": max(60, int(round(3 * interval_s))), "suggested_display_precision": 3,
            "icon": "mdi:waveform", "qos": QOS},
        f"{dev}_anomaly": {
            "platform": "binary_sensor", "name": f"{machine} anomaly",
            "unique_id": f"{dev}_anomaly", "device_class": "problem",
            "state_topic": topics.machine(machine, "anomaly"),
            "value_template": "{{ value_json.state }}", "payload_on": "ON", "payload_off": "OFF",
            "qos": QOS},
        f"{dev}_maintenance": maintenance_component(topics, machine, dev, commands),
    }
    for key, (name, unit, device_class, state_class, precision) in DIAGNOSTICS.items():
        entity = {"platform": "sensor", "name": name, "unique_id": f"{dev}_{key}",
                  "state_topic": stats, "entity_category": "diagnostic",
                  "value_template": f"{{{{ value_json.{key} }}}}",
                  "suggested_display_precision": precision, "qos": QOS}
        if state_class:
            entity["state_class"] = state_class
        if unit:
            entity["unit_of_measurement"] = unit
        if device_class:
            entity["device_class"] = device_class
        components[f"{dev}_{key}"] = entity
    sw = version()
    return {
        "device": {"identifiers": [dev], "name": f"Harken {node} {machine}",
                   "manufacturer": "Harken",
                   "model": "harken agent", "sw_version": sw},
        "origin": {"name": "harken", "sw_version": sw},
        "availability_topic": status,
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online", "payload_not_available": "offline",
        "qos": QOS,
        "components": components,
    }


if __name__ == "__main__":   # python -m ...homeassistant NODE MACHINE [PREFIX] [--commands]
    import json
    import sys
    args = [a for a in sys.argv[1:] if a != "--commands"]
    node, machine = args[:2]
    prefix = args[2] if len(args) > 2 else "harken"
    print(discovery_topic("homeassistant", node, machine))
    print(json.dumps(discovery_payload(prefix, node, machine,
                                       commands="--commands" in sys.argv), indent=1))
