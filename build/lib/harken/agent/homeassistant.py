"""Home Assistant MQTT device discovery (one retained message per node).

Home Assistant's device-based discovery (``<discovery_prefix>/device/<id>/config``) lets
one message announce every entity of the node: the anomaly score (sensor), the anomaly
state (binary_sensor, device_class ``problem``) and diagnostic sensors read from the stats
topic. Availability follows the node's status topic; ``stopped`` counts as unavailable,
which Home Assistant's plain payload match would not do, hence the template.
"""

from __future__ import annotations

from harken.agent import version
from harken.agent.topics import Topics, discovery_topic, object_id

__all__ = ["DIAGNOSTICS", "discovery_payload", "discovery_topic", "object_id"]

# stats key -> (name, unit, device_class); shown as diagnostic entities
DIAGNOSTICS = {
    "cpu_percent": ("CPU", "%", None),
    "rss_mb": ("Memory (RSS)", "MB", "data_size"),
    "inference_ms_median": ("Inference time per window", "ms", "duration"),
    "outbox_depth": ("Outbox depth", None, None),
    "outbox_evicted": ("Outbox evictions", None, None),
    "uptime_s": ("Uptime", "s", "duration"),
}


def discovery_payload(prefix: str, node: str, machine: str) -> dict:
    topics, dev = Topics(prefix, node), object_id(node)
    machine_id = "".join(c if c.isalnum() else "_" for c in machine)
    components: dict[str, dict] = {
        f"{dev}_{machine_id}_score": {
            "platform": "sensor", "name": f"{machine} anomaly score",
            "unique_id": f"{dev}_{machine_id}_score",
            "state_topic": topics.machine(machine, "score"), "value_template": "{{ value_json.score }}",
            "json_attributes_topic": topics.machine(machine, "score"), "state_class": "measurement",
            "icon": "mdi:waveform"},
        f"{dev}_{machine_id}_anomaly": {
            "platform": "binary_sensor", "name": f"{machine} anomaly",
            "unique_id": f"{dev}_{machine_id}_anomaly", "device_class": "problem",
            "state_topic": topics.machine(machine, "anomaly"), "payload_on": "ON", "payload_off": "OFF"},
    }
    for key, (name, unit, device_class) in DIAGNOSTICS.items():
        entity = {"platform": "sensor", "name": name, "unique_id": f"{dev}_{key}",
                  "state_topic": topics.stats, "entity_category": "diagnostic",
                  "value_template": f"{{{{ value_json.{key} }}}}", "state_class": "measurement"}
        if unit:
            entity["unit_of_measurement"] = unit
        if device_class:
            entity["device_class"] = device_class
        components[f"{dev}_{key}"] = entity
    sw = version()
    return {
        "device": {"identifiers": [dev], "name": f"Harken {node}", "manufacturer": "Harken",
                   "model": "harken agent", "sw_version": sw},
        "origin": {"name": "harken", "sw_version": sw},
        "availability_topic": topics.status,
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online", "payload_not_available": "offline",
        "qos": 1,
        "components": components,
    }


if __name__ == "__main__":        # python -m agent.homeassistant NODE MACHINE [PREFIX]
    import json
    import sys
    node, machine = sys.argv[1:3]
    prefix = sys.argv[3] if len(sys.argv) > 3 else "harken"
    print(discovery_topic("homeassistant", node))
    print(json.dumps(discovery_payload(prefix, node, machine), indent=1))
