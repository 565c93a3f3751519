"""MQTT against a real Mosquitto on a loopback port (password file), through the durable
outbox: contract topics, retained state, Last Will, wrong password, and no loss across
broker outages (a whole run; one mid-run with a kill -9 while it is down), agent restarts
and a full outbox."""

import json
import signal

import numpy as np

from harken.agent.sinks.mqtt.outbox import Outbox
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.mosquitto import Listener, agent_config as config, outbox_depth, run_agent, \
    start_agent
from tests.helpers import collect_lines, wait_for


def state(listener) -> list[tuple[str, bool]]:
    """(state, retained) of every anomaly-state message seen."""
    return [(json.loads(p)["state"], r) for t, p, r in listener.messages
            if t == "harken/n1/fan/anomaly"]


def test_scores_status_state_and_events_reach_the_broker(broker, ae_bundle, wav, tmp_path):
    listen = Listener(broker.port)
    out = run_agent(config(tmp_path, ae_bundle, broker.port, wav))
    assert out.returncode == 0, out.stderr
    listen.wait(lambda lt: ("harken/n1/fan/status", "stopped", False) in lt.messages)
    scores = listen.scores()
    assert [s["seq"] for s in scores] == [1, 2, 3, 4, 5]
    assert {"ts", "seq", "score", "threshold", "anomaly", "interval_s", "model",
            "backend"} <= set(scores[0])
    topics = [t for t, _, _ in listen.messages]
    assert topics[0] == "harken/n1/fan/status" and listen.messages[0][1] == "online"
    assert state(listen) == [("ON", False)]                           # threshold 0: ON
    events = [json.loads(p) for t, p, _ in listen.messages if t.endswith("/event")]
    assert events[0]["type"] == "start" and events[0]["seq"] == 1
    listen.close()
    # retained: a subscriber arriving later learns state and status at once
    late = Listener(broker.port)
    late.wait(lambda lt: ("ON", True) in state(lt)
              and ("harken/n1/fan/status", "stopped", True) in lt.messages, 10)
    late.close()
    assert "s3cret" not in out.stderr + out.stdout


def test_nothing_is_lost_while_the_broker_is_down_across_agent_restarts(broker, ae_bundle,
                                                                         wav, tmp_path):
    broker.stop()
    cfg = config(tmp_path, ae_bundle, broker.port, wav)
    first = run_agent(cfg)                              # scores go to the outbox only
    assert first.returncode == 0, first.stderr
    box = Outbox(tmp_path / "state" / "outbox.db")
    # 5 scores, the start event and the ON state, held on disk across the exit
    assert box.depth == 7 and box.last_seq == 5
    box.close()
    broker.start()
    listen = Listener(broker.port)
    second = run_agent(cfg)                             # restart: backlog first, seq goes on
    assert second.returncode == 0, second.stderr
    listen.wait(lambda lt: len(lt.scores()) >= 10)
    seqs = [s["seq"] for s in listen.scores()]
    first_seen = list(dict.fromkeys(seqs))              # duplicates allowed, same seq
    assert first_seen == list(range(1, 11))
    listen.close()


def test_last_will_on_kill_and_wrong_password(broker, ae_bundle, wav, tmp_path):
    listen = Listener(broker.port)
    cfg = config(tmp_path, ae_bundle, broker.port, wav, realtime=True, loop=True)
    proc = start_agent(cfg)
    listen.wait(lambda lt: ("harken/n1/fan/status", "online", False) in lt.messages, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    listen.wait(lambda lt: ("harken/n1/fan/status", "offline", False) in lt.messages, 90)
    listen.close()

    bad = config(tmp_path, ae_bundle, broker.port, wav, password="wrong", realtime=True)
    proc = start_agent(bad)
    err = collect_lines(proc.stderr)
    refusal = "refused the connection: Not authorized (check mqtt.username and the password)"
    wait_for("the refusal in the agent's log", lambda: any(refusal in line for line in err), 90)
    proc.terminate()
    proc.wait(30)
    assert not any("wrong" in line for line in err)


def test_no_loss_across_a_broker_outage_and_a_kill_9_while_it_is_down(
        broker, ae_bundle, wav, tmp_path):
    """The outage lasts as long as the events it must span (not a fixed time): scores the
    first agent queued, its kill -9, and scores the restarted agent queued, all while the
    broker is down; then reconnection with backoff and the whole backlog in order."""
    listen = Listener(broker.port)          # persistent session: survives the broker restart
    cfg = config(tmp_path, ae_bundle, broker.port, wav, realtime=True, loop=True)
    db = tmp_path / "state" / "outbox.db"
    proc = start_agent(cfg)
    listen.wait(lambda lt: len(lt.scores()) >= 2, 60)
    broker.stop()
    wait_for("scores queued while the broker is down", lambda: outbox_depth(db) >= 4, 120)
    proc.send_signal(signal.SIGKILL)        # killed while the broker is down...
    proc.wait(10)
    held = outbox_depth(db)
    proc = start_agent(cfg)                 # ...and restarted, still without a broker
    err = collect_lines(proc.stderr)
    wait_for("the restarted agent queueing too", lambda: outbox_depth(db) >= held + 3, 120)
    broker.start()
    # the agent retries with exponential backoff: wait until what it made is delivered
    box = Outbox(db)
    made = box.last_seq
    box.close()
    listen.wait(lambda lt: lt.scores() and max(s["seq"] for s in lt.scores()) >= made, 120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, "".join(err)
    box = Outbox(db)
    last, depth = box.last_seq, box.depth
    box.close()
    assert depth == 0 and last >= made      # a clean stop leaves nothing behind
    listen.wait(lambda lt: max(s["seq"] for s in lt.scores()) >= last, 30)
    seqs = [s["seq"] for s in listen.scores()]
    assert list(dict.fromkeys(seqs)) == list(range(1, last + 1))   # all, in order
    listen.close()


def test_a_full_outbox_evicts_the_oldest_scores_counts_them_and_keeps_the_rest(
        broker, ae_bundle, wav, tmp_path):
    x, rate = read_wav(wav, 16000)
    write_wav(tmp_path / "forty.wav", np.concatenate([x] * 4), rate)   # 20 intervals
    broker.stop()
    first = run_agent(config(tmp_path, ae_bundle, broker.port, tmp_path / "forty.wav",
                             outbox_max=10))
    assert first.returncode == 0, first.stderr
    box = Outbox(tmp_path / "state" / "outbox.db")
    # 20 scores + the start event + the ON state = 22 messages for 10 places:
    # the 12 oldest scores go, the event and the state stay
    assert (box.depth, box.evicted, box.last_seq) == (10, 12, 20)
    box.close()
    broker.start()
    listen = Listener(broker.port)
    second = run_agent(config(tmp_path, ae_bundle, broker.port, wav, realtime=True,
                              outbox_max=10, name="second.toml",
                              output={"stdout": False, "stats_s": 1}), "--intervals", "2")
    assert second.returncode == 0, second.stderr
    listen.wait(lambda lt: len(set(s["seq"] for s in lt.scores())) >= 10)
    assert list(dict.fromkeys(s["seq"] for s in listen.scores())) == list(range(13, 23))
    kinds = [t.rsplit("/", 1)[1] for t, _, _ in listen.messages]
    assert "event" in kinds and ("ON", False) in state(listen)
    stats = [json.loads(p) for t, p, _ in listen.messages if t == "harken/n1/fan/stats"]
    assert stats and stats[-1]["outbox_evicted"] == 12 and "outbox_depth" in stats[-1]
    listen.close()


def test_stats_report_the_latency_from_audio_to_puback(broker, ae_bundle, wav, tmp_path):
    listen = Listener(broker.port)
    out = run_agent(config(tmp_path, ae_bundle, broker.port, wav, realtime=True, loop=True,
                           output={"stdout": False, "stats_s": 1}), "--intervals", "4")
    assert out.returncode == 0, out.stderr
    listen.wait(lambda lt: len(lt.scores()) >= 4)
    stats = [json.loads(p) for t, p, _ in listen.messages if t == "harken/n1/fan/stats"]
    timed = [s for s in stats if s["published"]]
    # the first three scores are acknowledged while the agent still runs (the fourth
    # ends it); a loopback broker answers within a second, never in under 0 ms
    assert sum(s["published"] for s in timed) >= 3
    assert all(0 < s["publish_ms_median"] <= s["publish_ms_p99"] < 1000 for s in timed)
    assert all(s["publish_ms_p99"] is None for s in stats if not s["published"])
    listen.close()


def test_several_machines_publish_each_under_its_own_name(broker, ae_bundle, wav, tmp_path):
    """Two machines on the two channels of one recording: a connection each (its own
    Last Will and status), an outbox each, scores on each machine's topics."""
    from harken.testkit.mosquitto import two_machine_config
    cfg = two_machine_config(tmp_path, ae_bundle, broker.port, wav)
    listen = Listener(broker.port)
    out = run_agent(cfg)
    assert out.returncode == 0, out.stderr
    listen.wait(lambda lt: all((f"harken/n1/pump-{k}/status", "stopped", False) in lt.messages
                               for k in (1, 2)))
    for k in (1, 2):
        topic = f"harken/n1/pump-{k}/score"
        seqs = [json.loads(p)["seq"] for t, p, _ in listen.messages if t == topic]
        assert seqs == [1, 2, 3, 4, 5]
        assert (f"harken/n1/pump-{k}/status", "online", False) in listen.messages
        assert outbox_depth(tmp_path / "state" / f"outbox-pump-{k}.db") == 0
    one = [json.loads(p)["score"] for t, p, _ in listen.messages if t.endswith("pump-1/score")]
    two = [json.loads(p)["score"] for t, p, _ in listen.messages if t.endswith("pump-2/score")]
    assert one != two
    listen.close()
