"""The topic scheme of docs/mqtt.md, built and parsed in one place (agent/sinks/mqtt/topics.py)."""

import pytest

from harken.agent.sinks.mqtt.topics import MACHINE_KINDS, Topics, discovery_topic, object_id, parse_topic


def test_every_topic_is_keyed_by_node_and_machine_and_parses_back():
    t = Topics("plant/a", "pi-7")
    assert t.machine("fan", "score") == "plant/a/pi-7/fan/score"
    assert t.machine("fan", "status") == "plant/a/pi-7/fan/status"
    for kind in MACHINE_KINDS:
        p = parse_topic("plant/a", t.machine("fan", kind))
        assert (p.node, p.machine, p.kind) == ("pi-7", "fan", kind)
    # two agents of one device (pump and fan under one node name) share no topic
    assert {t.machine("fan", k) for k in MACHINE_KINDS}.isdisjoint(
        {t.machine("pump", k) for k in MACHINE_KINDS})
    with pytest.raises(ValueError, match="unknown machine topic 'bogus'"):
        t.machine("fan", "bogus")


@pytest.mark.parametrize("topic", ["other/pi-7/fan/status", "plant/a/pi-7/fan/score/x",
                                   "plant/a/pi-7/fan/bogus", "plant/a/pi-7", "plant/a/pi-7/status",
                                   "plant/ab/pi/fan/status"])
def test_topics_that_are_not_harkens_are_none(topic):
    assert parse_topic("plant/a", topic) is None


def test_home_assistant_ids_keep_only_what_it_allows():
    assert object_id("pi 7/x", "fan.2") == "harken_pi_7_x_fan_2"
    assert discovery_topic("homeassistant", "pi 7", "fan") == \
        "homeassistant/device/harken_pi_7_fan/config"
