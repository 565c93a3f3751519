"""The topic scheme of docs/mqtt.md, built and parsed in one place (agent/topics.py)."""

import pytest

from harken.agent.topics import Topics, discovery_topic, object_id, parse_topic


def test_topics_of_a_node_and_its_machines_and_back():
    t = Topics("plant/a", "pi-7")
    assert (t.status, t.stats) == ("plant/a/pi-7/status", "plant/a/pi-7/stats")
    assert t.machine("fan", "score") == "plant/a/pi-7/fan/score"
    for kind in ("score", "anomaly", "event"):
        p = parse_topic("plant/a", t.machine("fan", kind))
        assert (p.node, p.machine, p.kind) == ("pi-7", "fan", kind)
    p = parse_topic("plant/a", t.stats)
    assert (p.node, p.machine, p.kind) == ("pi-7", None, "stats")
    with pytest.raises(ValueError, match="unknown machine topic 'status'"):
        t.machine("fan", "status")


@pytest.mark.parametrize("topic", ["other/pi-7/status", "plant/a/pi-7/fan/score/x",
                                   "plant/a/pi-7/fan/bogus", "plant/a/pi-7", "plant/ab/pi/status"])
def test_topics_that_are_not_harkens_are_none(topic):
    assert parse_topic("plant/a", topic) is None


def test_home_assistant_ids_keep_only_what_it_allows():
    assert object_id("pi 7/x") == "harken_pi_7_x"
    assert discovery_topic("homeassistant", "pi 7") == "homeassistant/device/harken_pi_7/config"
