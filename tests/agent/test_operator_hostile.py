"""Issue 40's hostile findings on maintenance, the audit log and the dispatcher
(docs/reliability.md): maintenance ends a running event, a torn or flooded audit log
defeats no replay protection, a change whose audit line cannot be written is refused
before it is made, a maintenance file out of range or not a file is set aside, a read
changes no file, and a CLI holding the state is named as such."""

import datetime
import json
import time

import numpy as np
import pytest

from harken.agent.cli import main
from harken.agent.decision import Decision, DecisionConfig
from harken.agent.operator import audit, commands as commands_module
from harken.agent.operator.commands import Commands, Target
from harken.agent.operator.maintenance import MAX_FOR_S, Maintenance
from harken.agent.statelock import lock_state
from harken.testkit.files import write_agent_config


# -- 3: maintenance turned on during an event ends it -------------------------------------

def test_hold_ends_an_event_that_was_running():
    d = Decision(1.0, DecisionConfig(k_on=1, n=1, n_off=1))
    start = d.update(5.0, 10.0)
    assert start is not None and start.type == "start" and d.anomaly
    d.update(7.0, 12.0)
    end = d.hold(14.0)
    assert end is not None and end.type == "end" and not d.anomaly
    assert (end.ts, end.peak_score, end.duration_s) == (14.0, 7.0, 4.0)
    assert d.hold(16.0) is None                          # said once
    again = d.update(5.0, 18.0)                          # afresh after maintenance
    assert again is not None and again.type == "start"


def test_the_pipeline_passes_the_end_on_as_the_intervals_event(ae_bundle):
    from harken.agent.model.bundle import open_bundle
    from harken.agent.model.factory import make_scorer
    from harken.agent.pipeline import Pipeline
    bundle = open_bundle(ae_bundle)
    scorer = make_scorer(bundle, bundle.sections[0], "onnx-int8")
    pipe = Pipeline(scorer, Decision(-1e9, DecisionConfig(k_on=1, n=1, n_off=1)),
                    interval_s=0.5)
    held = []
    pipe.maintenance = lambda ts: bool(held)
    x = 0.1 * np.random.default_rng(1).standard_normal(3 * 16000).astype(np.float32)
    results = []
    for i in range(0, x.size, 4000):
        out = pipe.push(x[i:i + 4000])
        results += out
        if out and out[-1].event is not None and out[-1].event.type == "start":
            held.append(True)                            # maintenance turned on
    start = next(i for i, r in enumerate(results) if r.event is not None)
    assert results[start].event.type == "start" and results[start].anomaly
    after = results[start + 1]
    assert after.maintenance and not after.anomaly
    assert after.event is not None and after.event.type == "end"
    assert all(r.event is None for r in results[start + 2:])


# -- 4: the audit log and replay protection -----------------------------------------------

class _Config:
    def __init__(self, state, machine):
        self.agent = type("A", (), {"machine": machine, "state_dir": str(state)})()


@pytest.fixture
def dispatcher(tmp_path):
    targets = {"fan": Target(_Config(tmp_path, "fan"), Maintenance(tmp_path, "fan"))}
    return Commands(tmp_path, targets)


def send(commands, **body):
    return commands.handle(json.dumps(body).encode(), "mqtt", "fan")


def test_an_append_after_a_torn_last_line_starts_on_a_new_line(tmp_path):
    audit.append(tmp_path, {"machine": "fan", "n": 1})
    with open(tmp_path / "audit.jsonl", "ab") as f:
        f.write(b'{"machine": "fan", "n": 2, "torn')          # killed mid-write
    audit.append(tmp_path, {"machine": "fan", "n": 3})
    assert [x["n"] for x in audit.read(tmp_path, "fan")] == [1, 3]


def test_a_torn_audit_line_lets_no_command_run_twice(dispatcher, tmp_path):
    with open(tmp_path / "audit.jsonl", "ab") as f:
        f.write(b'{"machine": "fan", "torn')
    on = dict(id="A", command="maintenance", operator="a", state="on")
    assert send(dispatcher, **on)["ok"]
    r = send(dispatcher, **on)
    assert not r["ok"] and "already carried out" in r["reason"]


def test_a_flood_of_refused_junk_forgets_no_id_and_is_rate_limited_unsynced(
        dispatcher, tmp_path, monkeypatch):
    assert send(dispatcher, id="A", command="maintenance", operator="a", state="on")["ok"]
    assert send(dispatcher, id="B", command="maintenance", operator="a", state="off")["ok"]
    synced = []
    monkeypatch.setattr(audit.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(audit, "MAX_BYTES", 4096)         # the log rotates many times over
    for i in range(300):
        r = send(dispatcher, id=f"junk-{i}", command="maintenance", operator="x", state="??")
        assert not r["ok"]
    assert synced == []                                   # refusals: never fsynced
    refused = [x for x in audit.read(tmp_path) if x["outcome"] == "refused"]
    assert len(refused) <= audit.REFUSED_PER_MINUTE
    # the replay is still refused: the ids carried out are kept apart from the log
    r = send(dispatcher, id="A", command="maintenance", operator="a", state="on")
    assert not r["ok"] and "already carried out" in r["reason"]
    assert not dispatcher.targets["fan"].maintenance.active()
    # the next line written says how many refusals were left out
    audit._window.clear()                                 # a minute later
    send(dispatcher, id="late", command="maintenance", operator="x", state="??")
    last = audit.read(tmp_path)[-1]
    assert last["refused_left_out"] == 300 + 1 - audit.REFUSED_PER_MINUTE
    # refused junk never grows the file of ids; it stays bounded however many are done
    ids = tmp_path / commands_module.DONE_NAME
    assert ids.name.startswith("commands-") and len(ids.read_text().splitlines()) == 2
    # (F40b #7: the ids of the last 7 days are all kept, past DONE_KEEP; bounded by age
    # and DONE_MAX, test_no_op_commands_take_no_slot_and_ids_are_kept_for_seven_days)
    for i in range(3 * commands_module.DONE_KEEP):
        commands_module.remember(tmp_path, "fan", f"x{i}")
    assert len(ids.read_text().splitlines()) == 2 + 3 * commands_module.DONE_KEEP
    assert commands_module.carried_out(tmp_path, "fan", "x0")
    assert commands_module.carried_out(tmp_path, "fan", f"x{3 * commands_module.DONE_KEEP - 1}")


def test_no_op_commands_take_no_slot_and_ids_are_kept_for_seven_days(dispatcher, tmp_path,
                                                                      monkeypatch):
    """F40b #7: 2,100 valid ``maintenance off`` while off (fresh ids) used to push the
    operator's id A out of the last 1,000 kept, and A's replay then silenced the machine.
    A no-op is answered ok and ``unchanged``, writes no file and no synced line, and takes
    no slot; the ids kept are those of the last 7 days or the last 1,000, whichever are
    more, at most DONE_MAX."""
    assert send(dispatcher, id="A", command="maintenance", operator="a", state="on")["ok"]
    assert send(dispatcher, id="B", command="maintenance", operator="a", state="off")["ok"]
    m = tmp_path / "maintenance-fan.json"
    ids = tmp_path / commands_module.DONE_NAME
    before = (m.read_bytes(), m.stat().st_mtime_ns, ids.read_bytes())
    synced = []
    monkeypatch.setattr(audit.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(commands_module.os, "fsync", lambda fd: synced.append(fd))
    for i in range(2100):
        r = send(dispatcher, id=f"noop-{i}", command="maintenance", operator="x", state="off")
        assert r["ok"] and r["result"]["unchanged"] is True and r["result"]["on"] is False
    assert synced == [] and (m.read_bytes(), m.stat().st_mtime_ns, ids.read_bytes()) == before
    lines = [x for x in audit.read(tmp_path) if x.get("outcome") == "unchanged"]
    assert 0 < len(lines) <= audit.REFUSED_PER_MINUTE     # unsynced and rate-limited
    r = send(dispatcher, id="A", command="maintenance", operator="a", state="on")
    assert not r["ok"] and "already carried out" in r["reason"]
    assert not dispatcher.targets["fan"].maintenance.active()
    # on until turned off, asked again: unchanged too; with a 'for' it is a change
    assert not send(dispatcher, id="C", command="maintenance", operator="a",
                    state="on")["result"].get("unchanged")
    assert send(dispatcher, id="D", command="maintenance", operator="a",
                state="on")["result"]["unchanged"] is True
    assert not send(dispatcher, id="E", command="maintenance", operator="a", state="on",
                    **{"for": "1h"})["result"].get("unchanged")

    def aged(days: float, n: int, tag: str) -> list[str]:
        at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
        return [json.dumps({"at": at.isoformat(timespec="milliseconds"), "machine": "fan",
                            "id": f"{tag}{i}"}) for i in range(n)]
    keep = commands_module.DONE_KEEP
    # 6 days old: all kept, however many (under DONE_MAX)
    ids.write_text("\n".join(aged(6, 3 * keep, "y")) + "\n")
    commands_module.remember(tmp_path, "fan", "new")
    assert len(ids.read_text().splitlines()) == 3 * keep + 1
    assert commands_module.carried_out(tmp_path, "fan", "y0")
    # 8 days old: the last DONE_KEEP kept (whichever are more), the rest dropped
    ids.write_text("\n".join(aged(8, 3 * keep, "o") + aged(1, 10, "y")) + "\n")
    commands_module.remember(tmp_path, "fan", "new")
    kept = [json.loads(x)["id"] for x in ids.read_text().splitlines()]
    assert len(kept) == keep and kept[-1] == "new" and f"o{3 * keep - 1}" in kept
    assert not commands_module.carried_out(tmp_path, "fan", "o0")
    # the hard cap
    monkeypatch.setattr(commands_module, "DONE_MAX", 2 * keep)
    ids.write_text("\n".join(aged(1, 4 * keep, "z")) + "\n")
    commands_module.remember(tmp_path, "fan", "new")
    kept = [json.loads(x)["id"] for x in ids.read_text().splitlines()]
    assert len(kept) == 2 * keep and kept[-1] == "new"


def test_a_torn_line_of_the_ids_file_is_skipped_and_the_next_starts_afresh(tmp_path):
    commands_module.remember(tmp_path, "fan", "one")
    with open(tmp_path / commands_module.DONE_NAME, "ab") as f:
        f.write(b'{"machine": "fan", "id": "tw')
    commands_module.remember(tmp_path, "fan", "two")
    assert commands_module.carried_out(tmp_path, "fan", "one")
    assert commands_module.carried_out(tmp_path, "fan", "two")
    assert not commands_module.carried_out(tmp_path, "pump", "two")


# -- 5: an audit log that cannot be written -----------------------------------------------

def test_maintenance_is_refused_unchanged_when_its_audit_line_cannot_be_written(
        dispatcher, tmp_path):
    (tmp_path / "audit.jsonl").mkdir()
    r = send(dispatcher, id="m", command="maintenance", operator="a", state="on")
    assert not r["ok"] and "audit.jsonl" in r["reason"]
    assert not (tmp_path / "maintenance-fan.json").exists()
    assert not Maintenance(tmp_path, "fan").active()


def test_an_audit_append_failing_after_the_change_is_ok_with_a_warning(dispatcher, tmp_path,
                                                                       monkeypatch):
    def full(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(audit, "append", full)
    r = send(dispatcher, id="m", command="maintenance", operator="a", state="on")
    assert r["ok"] and "audit log" in r["result"]["warning"]
    assert Maintenance(tmp_path, "fan").active()


# -- 9, 10: a maintenance file out of range, or not a file --------------------------------

@pytest.mark.parametrize("record", [
    {"until": 99999999999999}, {"until": 1e300}, {"since": 1e300, "until": 1e300 + 1},
    {"until": "since+31d"}, {"until": -1}, {"since": "now+2d", "until": "now+3d"},
    {"since": -5}, {"by": "x" * 500}])
def test_a_maintenance_record_out_of_range_is_set_aside_and_the_machine_heard(
        tmp_path, caplog, record):
    now = time.time()
    rec = {"version": 1, "on": True, "since": now, "until": now + 3600, "by": "a",
           "via": "cli"} | record
    for key in ("since", "until"):
        v = rec[key]
        if isinstance(v, str):
            base, delta = (v[:5], v[5:]) if v.startswith("since") else (v[:3], v[3:])
            origin = now if base == "now" else rec["since"]
            rec[key] = origin + float(delta.rstrip("d")) * (86400 if delta.endswith("d") else 1)
    (tmp_path / "maintenance-fan.json").write_text(json.dumps(rec))
    m = Maintenance(tmp_path, "fan")
    assert not m.active() and m.state()["until"] is None
    assert any("damaged maintenance" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("maintenance-fan.json.damaged-*"))


def test_a_maintenance_record_at_the_limits_is_kept(tmp_path):
    now = time.time()
    rec = {"version": 1, "on": True, "since": now, "until": now + MAX_FOR_S, "by": "a",
           "via": "cli"}
    (tmp_path / "maintenance-fan.json").write_text(json.dumps(rec))
    assert Maintenance(tmp_path, "fan").active()


def test_a_folder_at_the_maintenance_file_is_set_aside_and_the_machine_heard(tmp_path, caplog):
    (tmp_path / "maintenance-fan.json").mkdir()
    m = Maintenance(tmp_path, "fan")
    assert not m.active()
    said = [r.getMessage() for r in caplog.records if "damaged maintenance" in r.getMessage()]
    assert len(said) == 1 and "not a regular file" in said[0]
    assert list(tmp_path.glob("maintenance-fan.json.damaged-*"))[0].is_dir()
    assert m.set(True, None, "a", "cli")["on"]              # and it can be written again


@pytest.fixture
def config(tmp_path):
    return write_agent_config(tmp_path / "agent.toml",
                              agent={"state_dir": tmp_path / "state"},
                              model={"bundle": tmp_path / "no-bundle-needed"},
                              machines=[{"name": "fan"}])


@pytest.mark.parametrize("content", ['{"version": 1, "on": true, "since": 1, '
                                     '"until": 99999999999999}', "{", None])
def test_maintenance_status_without_a_daemon_changes_no_file(config, tmp_path, capsys,
                                                             content):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "maintenance-fan.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    before = sorted(p.name for p in state.iterdir())
    assert main(["maintenance", "--config", str(config), "status"]) == 0
    out = capsys.readouterr()
    assert out.out == "machine fan: not in maintenance\n"
    assert "damaged maintenance" in out.err and "Traceback" not in out.err
    assert sorted(p.name for p in state.iterdir()) == before
    # a change sets it aside and is made
    assert main(["maintenance", "--config", str(config), "on"]) == 0
    assert list(state.glob("maintenance-fan.json.damaged-*"))


# -- 13: another CLI command holding the state folder -------------------------------------

def test_a_cli_command_holding_the_state_is_named_as_busy_not_as_a_starting_daemon(
        config, tmp_path, capsys):
    (tmp_path / "state").mkdir()
    with lock_state(tmp_path / "state", "harken feedback"):
        assert main(["maintenance", "--config", str(config), "on"]) == 2
    err = capsys.readouterr().err
    assert "harken feedback (PID" in err and "still starting" not in err
    assert "try again when it is done" in err
