"""Sparkplug B (mqtt.profile) against a real Mosquitto, with a host application that decodes
every payload with an implementation independent of the agent's encoder
(tests/agent/sparkplug_host.py): births in order and complete, DDATA equal to the JSON
scores, seq continuity and its wrap at 255, NDEATH's bdSeq after a kill -9, rebirth on
NCMD, and historical replay after a 30-s broker outage with every interval delivered once."""

import os
import signal

import numpy as np
import pytest

from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric, decode, \
    metric_value, parse_topic, topic
from harken.testkit.mosquitto import Listener, outbox_depth, run_agent, start_agent
from harken.testkit.mosquitto import agent_config as json_config
from tests.agent.sparkplug_host import Host
from tests.helpers import wait_for


def config(tmp_path, bundle, port, wav, profile="sparkplug-b", **extra):
    return json_config(tmp_path, bundle, port, wav, profile=profile, threshold=1e9, **extra)


def seqs(host):
    """Every seq-carrying message's seq, in arrival order (NDEATH carries none)."""
    return [m.payload.seq for m in host.messages if m.kind != "NDEATH"]


def continuous(values) -> bool:
    return all(b == (a + 1) % 256 for a, b in zip(values, values[1:]))


def test_the_payload_schema_round_trips_every_metric_type():
    p = Payload(timestamp=5, seq=7)
    add_metric(p, "f", DataType.Float, 1.5, 5, properties={"engUnit": (DataType.String, "s")})
    add_metric(p, "b", DataType.Boolean, True, 5, historical=True)
    add_metric(p, "i", DataType.Int64, 2 ** 40, 5)
    add_metric(p, "s", DataType.String, "ok", 5)
    add_metric(p, "n", DataType.Float, None, 5)
    q = decode(p.SerializeToString())
    assert [metric_value(m) for m in q.metrics] == [1.5, True, 2 ** 40, "ok", None]
    assert q.seq == 7 and q.metrics[1].is_historical and q.metrics[0].properties.keys == ["engUnit"]
    assert topic("g", "DDATA", "n1", "fan") == "spBv1.0/g/DDATA/n1/fan"
    assert parse_topic("spBv1.0/g/NBIRTH/n1") == ("g", "NBIRTH", "n1", None)
    assert parse_topic("spBv1.0/STATE/host") is None and parse_topic("harken/n1/fan/score") is None
    with pytest.raises(ValueError, match="not a Sparkplug B payload"):
        decode(b"\xff\xff\xff")


def test_births_data_seq_wrap_and_a_clean_death(spb_broker, ae_bundle, wav, tmp_path):
    """300 intervals of 0.5 s, both profiles: the births lead, complete; every DDATA equals
    its JSON score; seq runs on through 255 to 0; a clean stop sends DDEATH and NDEATH."""
    host, listen = Host(spb_broker.port), Listener(spb_broker.port)
    cfg = config(tmp_path, ae_bundle, spb_broker.port, wav, profile="both", loop=True)
    text = cfg.read_text().replace("interval_s = 2", "interval_s = 0.5")
    cfg.write_text(text)
    out = run_agent(cfg, "--intervals", "300")
    assert out.returncode == 0, out.stderr
    host.wait(lambda h: h.of("NDEATH"))
    kinds = [m.kind for m in host.messages]
    assert kinds[:2] == ["NBIRTH", "DBIRTH"] and kinds[-2:] == ["DDEATH", "NDEATH"]
    nbirth, dbirth = host.messages[0].payload, host.messages[1].payload
    assert nbirth.seq == 0 and dbirth.seq == 1
    node = nbirth.values()
    assert node["Node Control/Rebirth"] is False and node["Properties/Version"]
    assert node["Properties/Models"].startswith("ae-") and node["Properties/Machines"] == 1
    assert node["Properties/Backends"].startswith("onnxruntime")
    assert kinds.count("DBIRTH") == 1               # born once, complete: model known
    assert host.messages[1].device == "fan" and host.messages[0].edge_node == "n1"
    types = {m.name: m.datatype for m in dbirth.metrics}
    assert types["score"] == types["threshold"] == types["rms_dbfs"] == DataType.Float
    assert (types["anomaly"], types["status"]) == (DataType.Boolean, DataType.String)
    assert {m.name: m.unit() for m in dbirth.metrics if m.unit()} == {
        "rms_dbfs": "dBFS", "inference_ms": "ms", "Properties/Interval": "s"}
    births = [m for m in host.of("DBIRTH")]
    assert births[-1].payload.values()["Properties/Model"].startswith("ae-")
    # the last NDEATH (a clean stop) carries the bdSeq of the NBIRTH it ends
    assert host.of("NDEATH")[-1].payload.values()["bdSeq"] == node["bdSeq"]
    data = host.of("DDATA", "fan")
    assert [d.payload.values()["interval_seq"] for d in data] == list(range(1, 301))
    listen.wait(lambda lt: len(lt.scores()) == 300)
    json_scores = {s["seq"]: s["score"] for s in listen.scores()}
    for d in data:
        v = d.payload.values()
        assert v["score"] == pytest.approx(np.float32(json_scores[v["interval_seq"]]), rel=1e-6)
        assert v["anomaly"] is False and v["status"] == "ok"
        assert not any(m.is_historical for m in d.payload.metrics)     # all live
    s = seqs(host)
    assert continuous(s) and s.count(0) >= 2 and 255 in s            # wrapped
    host.close()
    listen.close()


def test_ndeath_after_kill_9_matches_the_nbirth_and_a_restart_counts_on(
        spb_broker, ae_bundle, wav, tmp_path):
    host = Host(spb_broker.port)
    cfg = config(tmp_path, ae_bundle, spb_broker.port, wav, realtime=True, loop=True)
    proc = start_agent(cfg)
    host.wait(lambda h: h.of("DDATA"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    host.wait(lambda h: h.of("NDEATH"))                 # the Will, sent by the broker
    born = host.of("NBIRTH")[0].payload.values()["bdSeq"]
    assert host.of("NDEATH")[0].payload.values()["bdSeq"] == born
    proc = start_agent(cfg)
    host.wait(lambda h: len(h.of("NBIRTH")) == 2)
    assert host.of("NBIRTH")[1].payload.values()["bdSeq"] == (born + 1) % 256
    proc.terminate()
    proc.wait(20)
    host.close()


def test_an_ncmd_rebirth_publishes_the_births_again(spb_broker, ae_bundle, wav, tmp_path):
    host = Host(spb_broker.port)
    proc = start_agent(config(tmp_path, ae_bundle, spb_broker.port, wav, realtime=True,
                              loop=True))
    host.wait(lambda h: h.of("DDATA"))
    host.rebirth("n1")
    host.wait(lambda h: len(h.of("NBIRTH")) == 2 and len(h.of("DBIRTH")) >= 2)
    second = host.messages.index(host.of("NBIRTH")[1])
    assert host.messages[second].payload.seq == 0
    assert host.messages[second + 1].kind == "DBIRTH"
    assert host.of("NBIRTH")[1].payload.values()["bdSeq"] == \
        host.of("NBIRTH")[0].payload.values()["bdSeq"]          # the same session
    proc.terminate()
    proc.wait(20)
    host.close()


def test_a_30_s_outage_is_replayed_as_history_after_the_births(spb_broker, ae_bundle, wav,
                                                                tmp_path):
    host = Host(spb_broker.port)
    cfg = config(tmp_path, ae_bundle, spb_broker.port, wav, realtime=True, loop=True)
    cfg.write_text(cfg.read_text().replace("interval_s = 2", "interval_s = 1"))
    proc = start_agent(cfg)
    host.wait(lambda h: len(h.of("DDATA")) >= 2)
    spb_broker.stop()
    box = tmp_path / "state" / "sparkplug-fan.db"
    # 30 s of intervals held by the outbox: the agent's own record, not a sleep
    wait_for("30 intervals in the outbox", lambda: outbox_depth(box) >= 30, timeout=120)
    spb_broker.start()
    host.wait(lambda h: len(h.of("NBIRTH")) == 2, timeout=120)
    host.wait(lambda h: any(not any(m.is_historical for m in d.payload.metrics)
                            for d in h.messages[h.messages.index(h.of("NBIRTH")[1]):]
                            if d.kind == "DDATA"), timeout=60)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    host.wait(lambda h: h.of("NDEATH"))
    data = [d.payload for d in host.of("DDATA")]
    order = [d.values()["interval_seq"] for d in data]
    assert order == list(range(1, len(order) + 1))             # every interval, once
    rebirth = host.messages.index(host.of("NBIRTH")[1])
    after = [m.payload for m in host.messages[rebirth:] if m.kind == "DDATA"]
    historical = [p for p in after if all(m.is_historical for m in p.metrics)]
    assert len(historical) >= 30
    # history keeps its own time: each value's timestamp is when its interval ended
    assert all(m.timestamp < p.timestamp for p in historical for m in p.metrics)
    assert after.index(historical[-1]) < len(after) - 1        # live values follow
    assert continuous(seqs(host)[seqs(host).index(0, 1):])     # the new session's seq
    host.close()


def test_watch_reads_sparkplug_devices_like_json_agents():
    from harken.agent.plant.watch import Fleet
    fleet = Fleet("harken")

    def data(score, anomaly, seq, ts_ms):
        p = Payload(timestamp=ts_ms, seq=seq)
        for name, dtype, value in (("score", DataType.Float, score),
                                   ("threshold", DataType.Float, 2.0),
                                   ("anomaly", DataType.Boolean, anomaly),
                                   ("status", DataType.String, "ok"),
                                   ("interval_seq", DataType.Int64, seq)):
            add_metric(p, name, dtype, value, ts_ms)
        return p.SerializeToString()

    for name, payload in [("spBv1.0/harken/DBIRTH/n9/pump", Payload().SerializeToString()),
                          ("spBv1.0/harken/DDATA/n9/pump", data(1.5, False, 1, 100_000)),
                          ("spBv1.0/harken/DDATA/n9/pump", data(2.5, True, 2, 110_000)),
                          ("spBv1.0/harken/DDATA/n9/pump", b"\xff\xff"),       # not protobuf
                          ("spBv1.0/STATE/scada", b"{}")]:
        record = fleet.parse(name, payload)
        if record is not None:
            fleet.update(record, now=120.0)
    row = fleet.rows[("n9", "pump")]
    assert (row.score, row.threshold, row.seq, row.anomaly, row.audio) == \
        (2.5, 2.0, 2, "ON", "ok")
    assert row.last_seen == 110.0 and fleet.status[("n9", "pump")] == "online"
    assert fleet.malformed == 1
    death = Payload()                        # Sparkplug B 3.0: an NDEATH carries its bdSeq
    add_metric(death, "bdSeq", DataType.Int64, 0, 120_000)
    fleet.update(fleet.parse("spBv1.0/harken/NDEATH/n9", death.SerializeToString()))
    assert fleet.status[("n9", "pump")] == "offline"


def test_several_machines_are_devices_of_one_edge_node(spb_broker, ae_bundle, wav, tmp_path):
    """Two machines on the two channels of one recording: one connection, one NBIRTH, a
    DBIRTH and DDATA per device, one seq count across all of them."""
    from harken.testkit.mosquitto import two_machine_config
    cfg = two_machine_config(tmp_path, ae_bundle, spb_broker.port, wav,
                             profile="sparkplug-b", group_id="plant")
    host = Host(spb_broker.port, group="plant")
    out = run_agent(cfg)
    assert out.returncode == 0, out.stderr
    host.wait(lambda h: h.of("NDEATH"))
    assert len(host.of("NBIRTH")) == 1
    assert host.of("NBIRTH")[0].payload.values()["Properties/Machines"] == 2
    assert sorted(m.device for m in host.of("DBIRTH")) == ["pump-1", "pump-2"]
    for name in ("pump-1", "pump-2"):
        assert [d.payload.values()["interval_seq"] for d in host.of("DDATA", name)] == \
            [1, 2, 3, 4, 5]
    one = [d.payload.values()["score"] for d in host.of("DDATA", "pump-1")]
    two = [d.payload.values()["score"] for d in host.of("DDATA", "pump-2")]
    assert one != two
    assert continuous(seqs(host))
    host.close()
