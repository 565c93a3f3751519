"""The Sparkplug B payloads the agent makes, read by two decoders that share nothing with its
encoder: the test host's pure-protobuf messages and Eclipse Tahu's reference codec (npm
``sparkplug-payload``, run by Node.js; tests/agent/sparkplug_host.py). Both must read every
NBIRTH, DBIRTH, DDATA, DDEATH and NDEATH alike: names, types, values, timestamps, seq,
historical flags and units (docs/mqtt.md "Sparkplug B")."""

from __future__ import annotations

import pytest

from harken.agent.sinks.sparkplug.payload import DataType, Payload as AgentPayload, add_metric
from harken.testkit.mosquitto import run_agent
from tests.agent.sparkplug_host import Host, Payload, disagreements, tahu_decode, tahu_missing
from tests.agent.test_sparkplug import config


@pytest.fixture(scope="module", autouse=True)
def tahu():
    why = tahu_missing()
    if why is not None and why.startswith("skip"):
        pytest.skip(why.split(": ", 1)[1])
    assert why is None, why


def test_both_decoders_read_every_payload_of_a_run_alike(spb_broker, ae_bundle, wav, tmp_path):
    """A short run with a clean stop: NBIRTH, DBIRTH, five DDATA, DDEATH and NDEATH, each
    read the same by pure-protobuf and by Tahu."""
    host = Host(spb_broker.port)
    try:
        out = run_agent(config(tmp_path, ae_bundle, spb_broker.port, wav))
        assert out.returncode == 0, out.stderr
        host.wait(lambda h: h.of("NDEATH"))
        messages = list(host.messages)
    finally:
        host.close()
    kinds = [m.kind for m in messages]
    assert kinds[:2] == ["NBIRTH", "DBIRTH"] and kinds[-2:] == ["DDEATH", "NDEATH"]
    assert kinds.count("DDATA") == 5
    decoded = tahu_decode([m.raw for m in messages])
    problems = {f"{i} {m.kind}": d for i, (m, t) in enumerate(zip(messages, decoded))
                if (d := disagreements(m.payload, t))}
    assert problems == {}
    # the reference codec reads what the specification asks of each message
    nbirth, ndeath = decoded[0], decoded[-1]
    bdseq = {x["name"]: x for x in nbirth["metrics"]}["bdSeq"]
    assert bdseq["type"] == "Int64" and nbirth["seq"] == "0"
    assert {x["name"]: x for x in ndeath["metrics"]}["bdSeq"]["value"] == bdseq["value"]
    ddata = decoded[kinds.index("DDATA")]
    score = {x["name"]: x for x in ddata["metrics"]}["score"]
    assert score["type"] == "Float" and isinstance(score["value"], (int, float, type(None)))


def test_both_decoders_read_edge_values_alike():
    """The encoder's edge cases without a broker: nulls of every type the agent sends, 64-bit
    counters, float extremes, text beyond ASCII, historical flags and units."""
    p = AgentPayload(timestamp=2 ** 41, seq=255)
    for i, (dtype, value) in enumerate([
            (DataType.Float, None), (DataType.Int64, None), (DataType.String, None),
            (DataType.Boolean, None), (DataType.Int64, 2 ** 63 - 1), (DataType.UInt64, 2 ** 64 - 1),
            (DataType.Int32, 2 ** 31 - 1), (DataType.Float, 3.4028234663852886e38),
            (DataType.Float, 1.401298464324817e-45), (DataType.Double, -1.7976931348623157e308),
            (DataType.Float, float("inf")), (DataType.Double, float("nan")),
            (DataType.String, ""), (DataType.String, "Lüfter 3 – ünïcødé ☃ \U0001f50a"),
            (DataType.Boolean, False), (DataType.DateTime, 1_700_000_000_000)]):
        add_metric(p, f"m{i}", dtype, value, 2 ** 40 + i, historical=i % 2 == 1,
                   properties={"engUnit": (DataType.String, "dB")} if i % 3 == 0 else None)
    raw = p.SerializeToString()
    tahu = tahu_decode([raw])[0]
    assert disagreements(Payload.loads(raw), tahu) == []
