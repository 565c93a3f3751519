"""Maintenance mode and the command dispatcher (agent/operator/maintenance.py, commands.py):
the state file survives a restart and ends by itself, a damaged one is set aside; every
command is checked, done once, logged (refusals too) and reaches the running machine; the
CLI without a daemon changes the files itself under the state lock."""

import json
import os
import re
import time

import pytest

from harken.agent.cli import main
from harken.agent.decision.records import MaintenanceChanged
from harken.agent.operator import audit
from harken.agent.operator import feedback as feedback_module
from harken.agent.operator.commands import MAX_BYTES, Commands, Target
from harken.agent.operator.maintenance import MAX_FOR_S, Maintenance, parse_duration
from harken.agent.statelock import lock_state
from harken.common.errors import UsageError
from harken.testkit.files import write_agent_config


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200),
                                           ("1d", 86400), ("7200", 7200), (7200, 7200),
                                           ("1.5h", 5400), ("30d", MAX_FOR_S)])
def test_durations_are_read_in_their_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "31d", "2y", "h", "", "-5m", "nan", "inf",
                                  "1e9", True, None, [1]])
def test_a_bad_duration_is_refused_in_one_line_saying_what_is_allowed(text):
    with pytest.raises(UsageError) as err:
        parse_duration(text)
    assert "90s, 30m, 2h or 1d" in str(err.value) and "\n" not in str(err.value)


def test_maintenance_is_kept_in_its_file_and_read_back_by_a_restarted_agent(tmp_path):
    m = Maintenance(tmp_path, "fan")
    assert not m.active() and m.state()["on"] is False
    state = m.set(True, 7200, "alice", "cli", "c1")
    assert state["on"] and state["by"] == "alice"
    assert 7190 < state["until"] - time.time() <= 7200
    again = Maintenance(tmp_path, "fan")                 # the daemon restarted
    assert again.active() and again.state()["until"] == state["until"]
    line = audit.read(tmp_path, "fan")[-1]
    assert line["action"] == "maintenance" and line["outcome"] == "ok"
    assert (line["on"], line["operator"], line["via"], line["command_id"]) == \
        (True, "alice", "cli", "c1")
    again.set(False, None, "bob", "socket")
    assert not Maintenance(tmp_path, "fan").active()


def test_maintenance_ends_by_itself_when_its_time_runs_out(tmp_path):
    m = Maintenance(tmp_path, "fan")
    state = m.set(True, 60, "alice", "cli")
    assert m.active(state["until"] - 1) and not m.expired(state["until"] - 1)
    assert not m.active(state["until"]) and m.expired(state["until"])
    # the file says when: a restart after the end starts out of maintenance
    rec = json.loads((tmp_path / "maintenance-fan.json").read_text())
    rec["until"] = time.time() - 1
    (tmp_path / "maintenance-fan.json").write_text(json.dumps(rec))
    m = Maintenance(tmp_path, "fan")
    assert m.expired() and not m.active()
    assert m.expire()["on"] is False
    assert m.expire() is None                            # said once
    assert json.loads((tmp_path / "maintenance-fan.json").read_text())["on"] is False
    assert audit.read(tmp_path, "fan")[-1]["via"] == "expiry"


def test_off_takes_no_duration(tmp_path):
    with pytest.raises(UsageError, match="off takes no duration"):
        Maintenance(tmp_path, "fan").set(False, 60, "alice", "cli")


@pytest.mark.parametrize("content", ["{", "[]", '{"version": 1, "on": "yes", "since": 1}',
                                     '{"version": 9, "on": true, "since": 1}'])
def test_a_damaged_state_file_is_set_aside_in_one_line_and_the_machine_is_heard(
        tmp_path, caplog, content):
    (tmp_path / "maintenance-fan.json").write_text(content)
    m = Maintenance(tmp_path, "fan")
    assert not m.active()
    said = [r.getMessage() for r in caplog.records if "damaged maintenance" in r.getMessage()]
    assert len(said) == 1 and "maintenance-fan.json" in said[0]
    aside = list(tmp_path.glob("maintenance-fan.json.damaged-*"))
    assert len(aside) == 1 and aside[0].read_text() == content


# -- the dispatcher -----------------------------------------------------------------------

class FakePipeline:
    def __init__(self):
        self.swaps = []

    def swap(self, rule=None, threshold=None):
        self.swaps.append((rule, threshold))


class FakeConfig:
    def __init__(self, state, machine):
        self.state, self.agent = state, type("A", (), {"machine": machine,
                                                        "state_dir": str(state)})()

    def path(self, value):
        return self.state


@pytest.fixture
def dispatcher(tmp_path, monkeypatch):
    """Two machines; feedback functions replaced by recorders (their work is part A's:
    here only which one is called, with what, and what follows)."""
    calls, sent, pipes = [], {"fan": [], "pump": []}, {}

    def recorder(name):
        def fn(config, **kw):
            calls.append((name, config.agent.machine, kw))
            audit.append(tmp_path, {"machine": config.agent.machine, "action": name,
                                    "outcome": "ok", "operator": kw["operator"],
                                    "via": kw["via"], "command_id": kw["command_id"]})
            return {"done": name}
        return fn
    for name in ("mark_normal", "undo", "recalibrate"):
        monkeypatch.setattr(feedback_module, name, recorder(name))
    monkeypatch.setattr(feedback_module, "live_state",
                        lambda config, bundle: (f"rule-{config.agent.machine}", 0.5))
    targets = {}
    for name in ("fan", "pump"):
        pipes[name] = FakePipeline()
        targets[name] = Target(FakeConfig(tmp_path, name), Maintenance(tmp_path, name),
                               bundle=object(), pipeline=pipes[name], send=sent[name].append)
    return Commands(tmp_path, targets), calls, sent, pipes


def send(commands, via="socket", bound=None, **body):
    """``body`` as JSON through ``handle``; ``bound``: the machine of an MQTT topic."""
    return commands.handle(json.dumps(body).encode(), via, bound)


def test_feedback_commands_reach_their_functions_and_the_running_pipeline(dispatcher):
    commands, calls, sent, pipes = dispatcher
    r = send(commands, id="a1", command="feedback", operator="alice", event=17,
             machine="fan")
    assert r == {"id": "a1", "command": "feedback", "machine": "fan", "ok": True,
                 "reason": None, "result": {"done": "mark_normal"}}
    assert calls[-1] == ("mark_normal", "fan", {"event": 17, "operator": "alice",
                                                "via": "socket", "command_id": "a1"})
    assert pipes["fan"].swaps == [("rule-fan", 0.5)] and pipes["pump"].swaps == []
    send(commands, id="a2", command="feedback", operator="bob", machine="pump",
         **{"from": "2026-05-04T10:00:00+00:00", "to": 1777892400.5})
    assert calls[-1] == ("mark_normal", "pump", {"start": 1777888800.0, "end": 1777892400.5,
                                                 "operator": "bob", "via": "socket",
                                                 "command_id": "a2"})
    send(commands, "mqtt", "pump", id="a3", command="feedback", operator="bob", undo=True)
    assert calls[-1][:2] == ("undo", "pump") and calls[-1][2]["via"] == "mqtt"
    send(commands, "mqtt", "fan", id="a4", command="recalibrate-threshold", operator="c",
         hours=12, false_alarms_per_week=0.5)
    assert calls[-1] == ("recalibrate", "fan", {"hours": 12.0, "false_alarms_per_week": 0.5,
                                                "operator": "c", "via": "mqtt",
                                                "command_id": "a4"})
    assert len(pipes["fan"].swaps) == 2 and len(pipes["pump"].swaps) == 2


def test_a_maintenance_command_changes_the_state_and_tells_the_machines_sinks(dispatcher):
    commands, _, sent, _ = dispatcher
    r = send(commands, "mqtt", "fan", id="m1", command="maintenance", operator="alice",
             state="on", **{"for": "2h"})
    assert r["ok"] and r["result"]["on"] and commands.targets["fan"].maintenance.active()
    assert sent["fan"] == [MaintenanceChanged(on=True, until=r["result"]["until"],
                                              by="alice", via="mqtt")]
    assert sent["pump"] == []
    r = send(commands, id="m2", command="maintenance", operator="bob", state="off",
             machine="fan")
    assert r["ok"] and not commands.targets["fan"].maintenance.active()
    assert sent["fan"][-1] == MaintenanceChanged(on=False, until=None, by="bob", via="socket")
    r = send(commands, id="q", command="maintenance", operator="x", state="status",
             machine="fan")
    assert r["ok"] and r["result"]["on"] is False and len(sent["fan"]) == 2


@pytest.mark.parametrize("body, reason", [
    ({"command": "maintenance", "operator": "a", "state": "on"}, "key 'id' missing"),
    ({"id": "x" * 129, "command": "maintenance", "operator": "a", "state": "on"}, "key 'id'"),
    ({"id": "", "command": "maintenance", "operator": "a", "state": "on"}, "key 'id'"),
    ({"id": "i", "command": "reboot", "operator": "a"}, "unknown command"),
    ({"id": "i", "command": "maintenance", "state": "on"}, "key 'operator' missing"),
    ({"id": "i", "command": "maintenance", "operator": "a", "state": "maybe"}, "key 'state'"),
    ({"id": "i", "command": "maintenance", "operator": "a", "state": "on", "sudo": 1},
     "unknown key 'sudo'"),
    ({"id": "i", "command": "maintenance", "operator": "a", "state": "on", "for": "9y"},
     "90s, 30m, 2h or 1d"),
    ({"id": "i", "command": "maintenance", "operator": "a", "state": "off", "for": "2h"},
     "'for' goes with state 'on'"),
    ({"id": "i", "command": "feedback", "operator": "a", "event": "12"}, "key 'event'"),
    ({"id": "i", "command": "feedback", "operator": "a", "event": 1, "undo": True},
     "exactly one of"),
    ({"id": "i", "command": "feedback", "operator": "a", "from": 5}, "go together"),
    ({"id": "i", "command": "feedback", "operator": "a", "from": 5, "to": 4}, "before"),
    ({"id": "i", "command": "feedback", "operator": "a", "from": "yesterday", "to": 4},
     "ISO 8601"),
    ({"id": "i", "command": "recalibrate-threshold", "operator": "a", "hours": 0}, "hours"),
    ({"id": "i", "command": "maintenance", "operator": "a\x1b[2J", "state": "on"},
     "control or invisible character"),
])
def test_a_malformed_command_is_refused_with_its_reason_changes_nothing_and_is_logged(
        dispatcher, tmp_path, body, reason):
    commands, calls, sent, pipes = dispatcher
    r = send(commands, "mqtt", "fan", **body)
    assert r["ok"] is False and reason in r["reason"] and "\n" not in r["reason"]
    assert calls == [] and sent["fan"] == [] and pipes["fan"].swaps == []
    assert not (tmp_path / "maintenance-fan.json").exists()
    line = audit.read(tmp_path)[-1]
    assert line["outcome"] == "refused" and line["reason"] == r["reason"]
    assert line["via"] == "mqtt" and line["machine"] == "fan"


@pytest.mark.parametrize("raw, reason", [(b"{not json", "malformed JSON"),
                                         (b"[1, 2]", "not a JSON object"),
                                         (b"\xff\xfe", "malformed JSON"),
                                         (b"[" * 100000, "over the limit"),
                                         (b" " * (MAX_BYTES + 1), "over the limit")])
def test_garbage_and_oversized_payloads_are_refused_unparsed(dispatcher, tmp_path, raw,
                                                             reason):
    commands, calls, _, _ = dispatcher
    r = commands.handle(raw, "mqtt", "fan")
    assert r["ok"] is False and reason in r["reason"] and calls == []
    assert audit.read(tmp_path)[-1]["outcome"] == "refused"


def test_a_replayed_command_id_is_refused_and_done_once(dispatcher, tmp_path):
    commands, calls, sent, _ = dispatcher
    body = dict(id="same", command="feedback", operator="alice", event=3, machine="fan")
    assert send(commands, **body)["ok"]
    r = send(commands, **body)
    assert not r["ok"] and "already carried out" in r["reason"]
    assert len(calls) == 1
    # the id is per machine, and a refused id may be sent again once fixed
    assert send(commands, **{**body, "machine": "pump"})["ok"]
    bad = dict(id="fixme", command="maintenance", operator="a", state="on", machine="fan")
    assert not send(commands, **bad, **{"for": "0s"})["ok"]
    assert send(commands, **bad)["ok"] and len(sent["fan"]) == 1


def test_the_machine_must_be_known_and_match_the_topic(dispatcher):
    commands, calls, _, _ = dispatcher
    body = dict(id="i", command="feedback", operator="a", event=1)
    r = send(commands, **body)
    assert not r["ok"] and "key 'machine' missing" in r["reason"]
    r = send(commands, **body, machine="press")
    assert not r["ok"] and "no such machine" in r["reason"] and "fan" in r["reason"]
    r = send(commands, "mqtt", "fan", **body, machine="pump")
    assert not r["ok"] and "does not match" in r["reason"]
    assert calls == []


def test_a_failure_of_the_feedback_core_is_a_refusal_logged_with_its_line(dispatcher,
                                                                         monkeypatch):
    commands, _, _, pipes = dispatcher

    def no_bank(config, **kw):
        raise UsageError("this bundle's rule has no bank: feedback is not possible")
    monkeypatch.setattr(feedback_module, "mark_normal", no_bank)
    r = send(commands, id="n", command="feedback", operator="a", event=1, machine="fan")
    assert not r["ok"] and r["reason"].startswith("this bundle's rule has no bank")
    assert pipes["fan"].swaps == []


# -- the CLI without a daemon -------------------------------------------------------------

@pytest.fixture
def config(tmp_path):
    return write_agent_config(tmp_path / "agent.toml",
                              agent={"state_dir": tmp_path / "state"},
                              model={"bundle": tmp_path / "no-bundle-needed"},
                              machines=[{"name": "fan"}, {"name": "pump"}])


def test_the_cli_without_a_daemon_changes_the_files_under_the_lock(config, tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["maintenance", "--config", str(config), "--machine", "fan", "on", "--for",
                 "2h", "--operator", "alice"]) == 0
    assert "machine fan: in maintenance until" in capsys.readouterr().out
    assert Maintenance(state, "fan").active() and not Maintenance(state, "pump").active()
    assert main(["maintenance", "--config", str(config), "status", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["machine"], r["on"], r["by"]) for r in rows] == [("fan", True, "alice"),
                                                                 ("pump", False, None)]
    assert main(["maintenance", "--config", str(config), "--machine", "fan", "off"]) == 0
    assert capsys.readouterr().out == "machine fan: not in maintenance\n"
    assert not Maintenance(state, "fan").active()
    assert main(["feedback", "--config", str(config), "--machine", "fan", "--list"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["on"], x["via"]) for x in lines] == [(True, "cli"), (False, "cli")]
    assert all(x["command_id"].startswith("cli-") for x in lines)


def test_the_cli_refuses_in_one_line(config, tmp_path, capsys):
    for argv, said in [
            (["maintenance", "--config", str(config), "on"], "give --machine"),
            (["maintenance", "--config", str(config), "--machine", "press", "on"],
             "no machine 'press'"),
            (["maintenance", "--config", str(config), "--machine", "fan", "on", "--for",
              "45d"], "at most|to 30 days"),
            (["maintenance", "--config", str(config), "--machine", "fan", "off", "--for",
              "2h"], "--for goes with 'on'"),
            (["feedback", "--config", str(config), "--machine", "fan", "--event", "3"],
             "say what the sound was"),
            (["feedback", "--config", str(config), "--machine", "fan", "--from", "noon",
              "--to", "1", "normal"], "ISO 8601"),
            (["feedback", "--config", str(config), "--machine", "fan", "--from", "5",
              "normal"], "--from and --to go together"),
            (["feedback", "--config", str(config), "--machine", "fan", "--undo", "--to",
              "5"], "--to goes with --from"),
            (["maintenance", "--config", str(config), "--machine", "fan", "on",
              "--operator", "a\nb"], "control or invisible")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert re.search(said, err[-1]), (argv, err)
        assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "state" / "maintenance-fan.json").exists()


def test_machine_given_twice_is_refused_by_every_command_that_takes_it(config, tmp_path,
                                                                      capsys):
    """F40b #8: argparse keeps the last of ``--machine fan --machine pump``: an operator who
    meant both would silence only pump. Every command with --machine refuses it, in one
    line, before anything is done."""
    twice = ["--machine", "fan", "--machine", "pump"]
    c = ["--config", str(config)]
    for argv in (["maintenance", *c, *twice, "on"], ["maintenance", *c, *twice, "off"],
                 ["feedback", *c, *twice, "--events"], ["evidence", *c, *twice, "--list"],
                 ["outbox", *c, *twice, "--list"], ["enroll", *c, *twice],
                 ["calibrate", *c, *twice], ["maintenance", *c, "--machine=fan",
                                              "--machine=fan", "on"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert "argument --machine: given twice" in err[-1], (argv, err)
        assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "state" / "maintenance-fan.json").exists()
    assert not (tmp_path / "state" / "maintenance-pump.json").exists()


def test_the_cli_waits_for_no_one_when_the_state_is_held_without_a_socket(config, tmp_path,
                                                                           capsys):
    (tmp_path / "state").mkdir()
    with lock_state(tmp_path / "state", "harken calibrate"):
        assert main(["maintenance", "--config", str(config), "--machine", "fan", "on"]) == 2
    assert "harken calibrate (PID" in capsys.readouterr().err
    assert not (tmp_path / "state" / "maintenance-fan.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_hands_the_files_it_made_to_the_state_folders_owner(config, tmp_path):
    """``sudo harken maintenance`` with the daemon stopped, on the unit's DynamicUser
    state: the daemon must be able to write the files again when it starts."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    assert main(["maintenance", "--config", str(config), "--machine", "fan", "on"]) == 0
    made = sorted(p.name for p in state.iterdir())
    assert "maintenance-fan.json" in made and "audit.jsonl" in made
    assert {(p.stat().st_uid, p.stat().st_gid) for p in state.iterdir()} == {(65534, 65534)}


def test_a_state_that_cannot_be_written_is_a_refusal_saying_why(dispatcher, tmp_path,
                                                                monkeypatch):
    commands, _, sent, _ = dispatcher

    def full(*_a, **_k):
        raise OSError(28, "No space left on device", str(tmp_path / "maintenance-fan.json"))
    monkeypatch.setattr("harken.agent.operator.maintenance.write_atomic", full)
    r = send(commands, id="d", command="maintenance", operator="a", state="on",
             machine="fan")
    assert not r["ok"] and "No space left on device" in r["reason"]
    assert "maintenance-fan.json" in r["reason"] and sent["fan"] == []
    assert not commands.targets["fan"].maintenance.active()
