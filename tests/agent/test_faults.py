"""Fault injection: the real agent and a real Mosquitto through a full disk that is then
freed, an agent SIGKILL and a broker outage. Every score seq the agent ever made is
delivered, still held in the outbox, or counted as evicted: none is lost silently."""

import json
import os
import signal

import pytest

from harken.agent.sinks.mqtt.outbox import Outbox
from harken.testkit.mosquitto import PASSWORD, USER, Broker, Listener, start_agent
from harken.testkit.files import write_agent_config
from tests.helpers import tmpfs, wait_for


def stats_lines(path):
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:                      # a line being written
            continue
        if r.get("status") == "stats":
            out.append(r)
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs for the agent's state (root only; CI runs as root)."""
    with tmpfs(tmp_path / "disk", "2m") as mnt:
        yield mnt


def test_every_seq_is_delivered_held_or_counted_through_disk_full_kill_and_outage(
        ae_bundle, wav, small_disk, tmp_path):
    (tmp_path / "broker").mkdir()
    # a plant broker: no per-subscriber queue limit (docs/mqtt.md), so only the agent's
    # own evictions can lose a score
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 0\n")
    broker.start()
    listen = Listener(broker.port, client_id="fault-listener")   # persistent session
    broker.stop()                                  # the broker is down when the agent starts
    filler = small_disk / "other.log"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(bytes(free - 400 * 1024))   # ~400 KiB left: the outbox fills soon
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    out = tmp_path / "out.jsonl"
    cfg = write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "n1", "machine": "fan", "state_dir": small_disk / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": False, "loop": True},
        decision={"interval_s": 2, "threshold": 0, "k_on": 1, "n": 1},
        output={"stdout": False, "file": out, "stats_s": 1},
        # the write-at-once outbox (outbox_hold_s = 0): its promise is that a kill -9 loses
        # no seq; at the default hold the scores of the last seconds that the broker had not
        # acknowledged may go with the process (docs/mqtt.md "Wear", tests/agent/test_outbox.py)
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "username": USER,
              "password_file": "secret", "outbox_hold_s": 0})
    db = small_disk / "state" / "outbox.db"
    try:
        proc = start_agent(cfg)
        # 1. the disk fills while the broker is down: old scores evicted, scoring goes on
        wait_for("outbox_disk_full in a stats record",
                 lambda: any(r.get("outbox_disk_full") and r.get("outbox_evicted", 0) > 0
                             for r in stats_lines(out)))
        assert proc.poll() is None
        # 2. space comes back, then the broker: the backlog is delivered
        filler.unlink()
        broker.start()
        wait_for("scores delivered", lambda: len(listen.scores()) >= 50)
        # 3. kill -9 and restart: seq goes on where the outbox says
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        box = Outbox(db)
        killed_at = box.last_seq
        box.close()
        proc = start_agent(cfg)
        wait_for("scores after the restart",
                 lambda: max(s["seq"] for s in listen.scores()) > killed_at + 20)
        # 4. a broker outage while the agent runs: the outbox holds the scores
        broker.stop()
        mark = len(stats_lines(out))
        wait_for("scores held while the broker is down",
                 lambda: any(r.get("outbox_depth", 0) > 20 for r in stats_lines(out)[mark:]))
        broker.start()
        seen = max(s["seq"] for s in listen.scores())
        wait_for("delivery after the outage",
                 lambda: max(s["seq"] for s in listen.scores()) > seen + 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        # 5. the ledger: delivered, held or counted, for every seq the agent made
        box = Outbox(db)
        last, evicted = box.last_seq, box.evicted
        held = {json.loads(m.payload)["seq"] for m in box.pending(limit=1_000_000)
                if m.topic.endswith("/score")}
        box.close()
        wait_for("the listener to catch up",
                 lambda: max(s["seq"] for s in listen.scores()) >= max(set(range(1, last + 1))
                                                                       - held, default=0))
        received = {s["seq"] for s in listen.scores()}
        # a kill between a score's seq being taken and its outbox row skips that one seq
        # (the restart never reuses it: docs/agent.md "seq across restarts")
        missing = set(range(1, last + 1)) - received - held - {killed_at + 1}
        assert evicted > 0 and last > killed_at + 20
        assert len(missing) <= evicted, (len(missing), evicted)
        assert received <= set(range(1, last + 1))
    finally:
        listen.close()
        broker.stop()
