"""Home Assistant MQTT device discovery (one retained message per agent: node and machine).

Home Assistant's device-based discovery (``<discovery_prefix>/device/<id>/config``) lets
one message announce every entity of the agent: the anomaly score (sensor), the anomaly
state (binary_sensor, device_class ``problem``) and diagnostic sensors read from the stats
topic. Availability follows the agent's status topic; ``stopped`` counts as unavailable,
which Home Assistant's plain payload match would not do, hence the template.
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


def discovery_payload(prefix: str, node: str, machine: str, interval_s: float = 10.0) -> dict:
    """The retained device-discovery message. The score sensor expires after three report
    intervals without a score (a stalled agent's last score does not look live) and keeps
    its value when a replayed score arrives (docs/mqtt.md: replayed scores are history)."""
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


if __name__ == "__main__":        # python -m agent.homeassistant NODE MACHINE [PREFIX]
    import json
    import sys
    node, machine = sys.argv[1:3]
    prefix = sys.argv[3] if len(sys.argv) > 3 else "harken"
    print(discovery_topic("homeassistant", node, machine))
    print(json.dumps(discovery_payload(prefix, node, machine), indent=1))
