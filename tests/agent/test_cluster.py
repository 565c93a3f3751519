"""The 3-node broker cluster of harken/testkit/cluster.py (nats-server 2.9, MQTT gateway on
JetStream) with paho clients only: the kit starts and leaves no process behind; retained
messages replicate and survive a node's SIGKILL; a plant subscriber's persistent session
(fixed client id, clean_session false, QoS 1) whose node is SIGKILLed resumes on another
node with every message published meanwhile, under the setting docs/deploy.md "Many
devices: a broker cluster" names as required (``consumer_replicas`` = 3), and loses them
with ``consumer_replicas`` = 1, so the setting is shown to matter."""

from __future__ import annotations

import time

import pytest

from tests.helpers import gone
from harken.testkit.cluster import Collector, NatsCluster, mqtt_answers, open_subscriber, publish_all

BURST = 20
SCORE = "harken/n1/m1/score"


def test_kit_starts_and_stops_cleanly(tmp_path):
    """Every node answers MQTT once started; after the block, even one that raised, every
    process the kit started is gone; a killed and restarted node answers again."""
    cluster = NatsCluster(tmp_path)
    with pytest.raises(RuntimeError, match="test failed here"):
        with cluster:
            assert len(cluster.urls) == 3 and len(set(cluster.urls)) == 3
            assert all(cluster.alive(i) for i in range(3))
            assert all(mqtt_answers(int(u.rsplit(":", 1)[1])) for u in cluster.urls)
            cluster.kill(2)
            assert not cluster.alive(2)
            cluster.restart(2)
            assert mqtt_answers(cluster.mqtt_ports[2])
            assert len(cluster.pids) == 4
            raise RuntimeError("test failed here")
    assert all(gone(pid) for pid in cluster.pids)
    assert not any(cluster.alive(i) for i in range(3))


def test_retained_replicates_and_survives_node_kill(tmp_path):
    """An agent's retained status taken by node 0 is seen on node 1 (exact topic and the
    watcher's ``<prefix>/#``), on node 2 after node 0 was SIGKILLed, and on node 0 again
    after its restart (its store kept)."""
    status = "harken/n1/m1/status"
    with NatsCluster(tmp_path) as cluster:
        u = cluster.urls
        assert publish_all(u[0], [(status, "online")], retain=True) == 1

        def seen(url: str, topic: str) -> bool:
            # a fresh QoS 1 subscription, asked again while a node's outage makes the
            # broker refuse it (open_subscriber); the retained status comes with the SUBACK
            c, _ = open_subscriber(url, f"read-{time.monotonic_ns()}", topic)
            try:
                return c.wait_for(lambda ms: (status, "online", True) in ms, 15)
            finally:
                c.close()

        assert seen(u[1], status)
        assert seen(u[1], "harken/#")
        cluster.kill(0)
        # the exact topic: one JetStream consumer to create where `harken/#` needs two, so
        # fewer refusals to ask again through while node 0 is dead (docs/deploy.md)
        assert seen(u[2], status)
        cluster.restart(0)
        assert seen(u[0], status)


def _resume_after_consumer_node_dies(cluster: NatsCluster) -> tuple[Collector, int]:
    """A plant subscriber on the node that leads its QoS 1 consumer; that node is SIGKILLed
    (the subscriber's connection dies with it); ``BURST`` scores are published on a second
    node and the subscriber resumes its session on the third. Returns the resumed
    subscriber (still connected) and how many of the burst the broker acknowledged."""
    u = cluster.urls
    sub = Collector(u[0], "plant-subscriber", clean_session=False)
    assert sub.connect() and sub.subscribe("harken/+/+/score", qos=1)
    assert publish_all(u[1], [(SCORE, "warm")]) == 1
    assert sub.wait_for(lambda ms: any(p == "warm" for _, p, _ in ms), 15)
    node = 0
    for _ in range(3):      # move the subscriber onto the node that leads its consumer
        leaders = cluster.msgs_consumer_leaders()
        assert len(leaders) == 1, leaders
        lead = next(iter(leaders.values()))
        if lead == node:
            break
        sub.close()
        node = lead
        sub, _ = open_subscriber(u[node], "plant-subscriber", clean_session=False)
        assert sub.session_present
    cluster.kill(node)
    sub.drop()
    others = [i for i in range(3) if i != node]
    acked = publish_all(u[others[0]], [(SCORE, f"s{k}") for k in range(BURST)], timeout=30)
    resumed, _ = open_subscriber(u[others[1]], "plant-subscriber", clean_session=False)
    assert resumed.session_present
    return resumed, acked


def burst_received(c: Collector) -> set[str]:
    return {p for _, p, _ in c.messages} & {f"s{k}" for k in range(BURST)}


def test_persistent_subscriber_resumes_on_another_node(tmp_path):
    """consumer_replicas = 3 (the kit's setting, docs/deploy.md): every message published
    while the subscriber's node (which led its consumer) was dead arrives after it resumes
    on another node."""
    with NatsCluster(tmp_path) as cluster:
        assert cluster.consumer_replicas == 3
        resumed, acked = _resume_after_consumer_node_dies(cluster)
        assert acked == BURST
        assert resumed.wait_for(lambda ms: len(burst_received(resumed)) == BURST, 30), \
            sorted(burst_received(resumed))
        resumed.close()


def test_single_replica_consumer_loses_the_burst(tmp_path):
    """consumer_replicas = 1 (streams still 3): the same sequence loses what was published
    while the consumer's node was dead: the setting matters."""
    with NatsCluster(tmp_path, consumer_replicas=1) as cluster:
        resumed, acked = _resume_after_consumer_node_dies(cluster)
        assert acked == BURST            # the broker took them: the loss is the consumer's
        # a resumed session delivers its backlog at once; give it the same time as above
        resumed.wait_for(lambda ms: len(burst_received(resumed)) == BURST, 10)
        assert len(burst_received(resumed)) < BURST
        resumed.close()
