"""Home Assistant discovery: the payload's contract, and the retained announcement on a real
broker, repeated when Home Assistant's status topic says online."""

import json
import signal

from harken.agent.sinks.mqtt.homeassistant import discovery_payload, discovery_topic
from harken.testkit.mosquitto import Listener, agent_config, start_agent


def test_discovery_payload_describes_score_anomaly_and_diagnostics():
    p = discovery_payload("harken", "pump-7.hall", "fan")
    assert discovery_topic("homeassistant", "pump-7.hall", "fan") == \
        "homeassistant/device/harken_pump-7_hall_fan/config"
    assert p["availability_topic"] == "harken/pump-7.hall/fan/status"
    # 'stopped' (clean shutdown) must read as unavailable too
    assert "'online' if value == 'online' else 'offline'" in p["availability_template"]
    comps = p["components"]
    score = comps["harken_pump-7_hall_fan_score"]
    assert score["platform"] == "sensor" and score["state_topic"] == "harken/pump-7.hall/fan/score"
    # a replayed score keeps the live value; a stalled agent's score expires (3 intervals)
    assert score["value_template"] == \
        "{{ this.state if value_json.replayed else value_json.score }}"
    assert score["expire_after"] == 60
    assert discovery_payload("harken", "n", "fan", interval_s=30)["components"][
        "harken_n_fan_score"]["expire_after"] == 90
    anomaly = comps["harken_pump-7_hall_fan_anomaly"]
    assert (anomaly["platform"], anomaly["device_class"], anomaly["value_template"],
            anomaly["payload_on"], anomaly["payload_off"]) == \
        ("binary_sensor", "problem", "{{ value_json.state }}", "ON", "OFF")
    # Home Assistant shares no root qos with the components: each says it
    assert all(c["qos"] == 1 for c in comps.values())
    units = {k.rsplit("hall_fan_", 1)[1]: c for k, c in comps.items()}
    assert units["rss_mb"]["unit_of_measurement"] == "MiB"
    assert units["outbox_evicted"]["state_class"] == "total_increasing"
    assert "state_class" not in units["uptime_s"]
    assert units["inference_ms_median"]["suggested_display_precision"] == 3
    diag = [c for c in comps.values() if c.get("entity_category") == "diagnostic"]
    assert {c["state_topic"] for c in diag} == {"harken/pump-7.hall/fan/stats"}
    assert {"{{ value_json.outbox_depth }}", "{{ value_json.outbox_evicted }}",
            "{{ value_json.cpu_percent }}"} <= {c["value_template"] for c in diag}
    ids = [c["unique_id"] for c in comps.values()]
    assert len(ids) == len(set(ids))
    assert p["device"]["identifiers"] == ["harken_pump-7_hall_fan"]


def test_discovery_is_retained_and_re_announced_when_home_assistant_comes_online(
        broker, ae_bundle, wav, tmp_path):
    listen = Listener(broker.port, topic="homeassistant/#")
    proc = start_agent(agent_config(tmp_path, ae_bundle, broker.port, wav, realtime=True,
                                    loop=True, homeassistant=True))
    topic = "homeassistant/device/harken_n1_fan/config"
    listen.wait(lambda lt: any(t == topic for t, _, _ in lt.messages), 60)
    payload = json.loads(next(p for t, p, _ in listen.messages if t == topic))
    assert "harken_n1_fan_anomaly" in payload["components"]
    # Home Assistant restarts and announces itself: the agent publishes discovery again
    listen.c.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
    listen.wait(lambda lt: sum(t == topic for t, _, _ in lt.messages) >= 2, 30)
    late = Listener(broker.port, topic=topic, client_id="late")
    late.wait(lambda lt: (topic, json.dumps(payload), True) in lt.messages, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    listen.close()
    late.close()
