"""One agent per state (agent/statelock.py) and seq that is never reused across restarts
(agent/seqstore.py): docs/reliability.md "One agent per state, sinks and stopping"."""

import json
import os
import signal
import subprocess
import sys

import pytest

from harken.agent import seqstore
from harken.agent.seqstore import SeqReservation
from harken.agent.statelock import StateBusy, StateLock, lock_state
from harken.common.errors import ConfigError
from harken.testkit.files import write_agent_config
from tests.agent.test_sink_faults import fill
from tests.helpers import collect_lines, tmpfs, wait_for

HARKEN = [sys.executable, "-m", "harken.agent.cli"]


def run_config(tmp_path, bundle, wav, *, loop=False, output=None, name="agent.toml", **extra):
    return write_agent_config(
        tmp_path / name, agent={"node": "n1", "machine": "fan", "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": loop, "loop": loop},
        decision={"interval_s": 2, "threshold": 1e9}, output=output or {"stdout": True},
        **extra)


# -- the lock ---------------------------------------------------------------------------

def test_a_second_holder_of_one_state_is_refused_naming_the_pid_and_folder(tmp_path):
    first = lock_state(tmp_path, "harken run")
    with pytest.raises(StateBusy) as refused:
        lock_state(tmp_path, "harken run")
    assert refused.value.pid == os.getpid()
    assert str(refused.value).startswith(f"harken run (PID {os.getpid()}) is running on the "
                                         f"state folder {tmp_path}")
    with pytest.raises(StateBusy, match=r"\(PID \d+\) is running on this state .*; stop it, "
                                        r"calibrate, start it again"):
        lock_state(tmp_path, "harken calibrate", "calibrate")
    first.release()
    lock_state(tmp_path, "harken run").release()          # free again once released


def test_a_lock_file_left_by_a_killed_process_is_no_obstacle(tmp_path):
    code = ("import sys, time; from harken.agent.statelock import lock_state;"
            "lock_state(sys.argv[1], 'harken run'); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StateBusy, match=f"PID {proc.pid}"):
            lock_state(tmp_path, "harken run")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert (tmp_path / "harken.lock").read_text().startswith(f"{proc.pid} ")   # left behind
    lock = lock_state(tmp_path, "harken run")                # ...and no obstacle
    assert (tmp_path / "harken.lock").read_text() == f"{os.getpid()} harken run\n"
    lock.release()


def test_a_lock_file_in_the_way_is_one_line_and_a_read_only_one_still_locks(tmp_path):
    (tmp_path / "a" / "harken.lock").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"harken.lock: cannot open the state lock"):
        StateLock(tmp_path / "a").acquire()
    ro = tmp_path / "b"
    ro.mkdir()
    (ro / "harken.lock").write_text("")
    (ro / "harken.lock").chmod(0o444)
    first = StateLock(ro).acquire()          # root ignores the mode; others open it read-only
    with pytest.raises(StateBusy):
        StateLock(ro).acquire()
    first.release()


def test_run_calibrate_and_enroll_are_refused_while_run_holds_the_state(ae_bundle, wav,
                                                                        tmp_path):
    cfg = run_config(tmp_path, ae_bundle, wav, loop=True)
    proc = subprocess.Popen([*HARKEN, "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = collect_lines(proc.stdout)
    try:
        wait_for("the first score", lambda: any('"kind": "score"' in ln for ln in lines), 120)
        state = tmp_path / "state"
        for argv, says in (
                (["run", "--config", str(cfg)],
                 f"harken run (PID {proc.pid}) is running on the state folder {state}"),
                (["calibrate", "--config", str(cfg), "--files", str(wav), "--no-plot"],
                 f"harken run (PID {proc.pid}) is running on this state ({state}); stop it, "
                 f"calibrate, start it again"),
                (["enroll", "--config", str(cfg), "--files", str(wav)],
                 f"harken run (PID {proc.pid}) is running on this state ({state}); stop it, "
                 f"enroll, start it again")):
            out = subprocess.run([*HARKEN, *argv], capture_output=True, text=True, timeout=120)
            assert out.returncode == 2, out.stderr
            said = out.stderr.strip().splitlines()
            assert len(said) == 1 and said[0].startswith(f"harken: error: {says}"), out.stderr
        assert not (state / "threshold-fan.json").exists()
        assert proc.poll() is None                               # the daemon goes on
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0


# -- seq across restarts ------------------------------------------------------------------

def seqs(text):
    return [json.loads(ln)["seq"] for ln in text.splitlines()
            if ln.startswith("{") and json.loads(ln)["kind"] == "score"]


def test_seq_strictly_increases_across_restarts_with_json_lines_only(ae_bundle, wav, tmp_path):
    cfg = run_config(tmp_path, ae_bundle, wav)
    runs = []
    for _ in range(3):
        out = subprocess.run([*HARKEN, "run", "--config", str(cfg), "--intervals", "2"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        runs.append(seqs(out.stdout))
    every = [s for run in runs for s in run]
    assert [len(r) for r in runs] == [2, 2, 2]
    assert every == sorted(set(every)), runs              # strictly increasing, none twice
    reserved = json.loads((tmp_path / "state" / "seq-fan.json").read_text())
    assert reserved["next_unreserved"] > every[-1]
    assert every == list(range(1, 7))             # one boot: no gap either


def test_seq_strictly_increases_across_restarts_with_mqtt_even_without_the_outbox(
        broker, ae_bundle, wav, tmp_path):
    from harken.testkit.mosquitto import PASSWORD, USER
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    cfg = run_config(tmp_path, ae_bundle, wav,
                     mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port,
                           "username": USER, "password_file": "secret"})
    runs = []
    for i in range(2):
        out = subprocess.run([*HARKEN, "run", "--config", str(cfg), "--intervals", "2"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        runs.append(seqs(out.stdout))
        for f in (tmp_path / "state").glob("outbox.db*"):
            f.unlink()                    # the outbox moved aside: it remembers nothing
    assert runs[1][0] > runs[0][-1], runs


def test_the_reservation_reserves_ahead_and_a_restart_resumes_without_reuse(tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "seq-fan.json"
    r = SeqReservation(path, block=10)
    assert r.start(at_least=5) == 5 and r.limit == 15
    for s in range(5, 15):
        r.take(s)
    assert json.loads(path.read_text())["next_unreserved"] == 15
    r.take(15)                                          # the block is used up: next one
    assert json.loads(path.read_text())["next_unreserved"] == 25
    # the same boot (a clean stop, a kill): exactly where it stopped, no gap
    assert SeqReservation(path, block=10).start() == 16
    assert SeqReservation(path, block=10).start(at_least=100) == 100   # or above a sink's
    # a reboot (a power cut may have lost the unsynced mark): above the synced reservation
    monkeypatch.setattr(seqstore, "boot_id", lambda: "another-boot")
    assert SeqReservation(path, block=10).start() == 110


def test_a_killed_run_resumes_at_its_mark_without_reuse_or_gap(tmp_path):
    code = ("import sys, os, signal; from harken.agent.seqstore import SeqReservation;"
            "r = SeqReservation(sys.argv[1], block=1000); s = r.start();"
            "[r.take(i) for i in range(s, s + 7)]; os.kill(os.getpid(), signal.SIGKILL)")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "seq-fan.json")])
        assert proc.returncode == -signal.SIGKILL
    assert SeqReservation(tmp_path / "seq-fan.json").start() == 15


def test_a_seq_reservation_on_a_full_disk_is_retried_and_scoring_goes_on(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        r = SeqReservation(disk / "seq-fan.json", block=2)
        first = r.start()
        filler = fill(disk)
        r.take(first + 2)                                # cannot write: said, not raised
        assert r.failed and r.failures == 1
        filler.unlink()
        r.take(first + 3)
        assert r.failed is None
        assert json.loads((disk / "seq-fan.json").read_text())["next_unreserved"] == first + 5


@pytest.mark.parametrize("text", ['{"next_unreserved": "7"}', "{", '{"next_unreserved": 0}',
                                  "[]", '{"next_unreserved": true}'])
def test_a_damaged_seq_reservation_is_one_line_naming_the_file(tmp_path, text):
    (tmp_path / "seq-fan.json").write_text(text)
    with pytest.raises(ConfigError, match=r"seq-fan.json: not a seq reservation .*restore it, "
                                          r"or remove it"):
        SeqReservation(tmp_path / "seq-fan.json")


def test_a_state_folder_removed_while_running_is_locked_again_with_its_seq(ae_bundle, wav,
                                                                           tmp_path):
    import shutil
    cfg = run_config(tmp_path, ae_bundle, wav, loop=True, output={"stdout": True, "stats_s": 1})
    proc = subprocess.Popen([*HARKEN, "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = collect_lines(proc.stdout)
    state = tmp_path / "state"
    try:
        wait_for("a score", lambda: any('"kind": "score"' in ln for ln in list(lines)), 120)
        shutil.rmtree(state)
        wait_for("the lock and the seq reservation again", lambda: (
            (state / "harken.lock").exists() and (state / "seq-fan.json").exists()), 30)
        out = subprocess.run([*HARKEN, "run", "--config", str(cfg)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and f"(PID {proc.pid}) is running" in out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    last = max(s for s in seqs("".join(lines)))
    assert json.loads((state / "seq-fan.json").read_text())["next_unreserved"] > last


# -- exit codes: a config mistake is not restarted, a failing device is -------------------

def test_a_full_state_disk_at_start_exits_75_for_systemd_to_restart(ae_bundle, wav, tmp_path):
    """Before: exit 2, and the unit's RestartPreventExitStatus=2 kept the service down for
    good (finding 9). A full disk is the device's: exit 75, restarted; a second start once
    there is room scores."""
    with tmpfs(tmp_path / "disk", "64k") as disk:
        cfg = run_config(tmp_path, ae_bundle, wav)
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "state"), str(disk)))
        filler = fill(disk)
        out = subprocess.run([*HARKEN, "run", "--config", str(cfg), "--intervals", "1"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 75, out.stderr
        said = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("harken:")]
        assert said == [f"harken: error: {disk}/seq-fan.json: cannot write the seq reservation "
                        f"(No space left on device); check agent.state_dir"], out.stderr
        assert "Traceback" not in out.stderr
        filler.unlink()
        again = subprocess.run([*HARKEN, "run", "--config", str(cfg), "--intervals", "1"],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and seqs(again.stdout) == [1], again.stderr


def test_a_config_mistake_still_exits_2(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nnode = "n1"\nmachine = "fan"\nsurprise = 1\n')
    out = subprocess.run([*HARKEN, "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr


def test_a_corrupt_outbox_at_start_is_set_aside_and_scoring_goes_on(broker, ae_bundle, wav,
                                                                   tmp_path):
    """Before: 'cannot open the outbox (file is not a database)', exit 2, nothing scored
    and never restarted (finding 9). Now the damaged file is kept under a new name, said in
    one line, and a fresh outbox takes the scores."""
    from harken.testkit.mosquitto import PASSWORD, USER
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    cfg = run_config(tmp_path, ae_bundle, wav,
                     mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port,
                           "username": USER, "password_file": "secret"})
    state = tmp_path / "state"
    state.mkdir()
    junk = os.urandom(8192)                         # what a power cut left of it
    (state / "outbox.db").write_bytes(junk)
    out = subprocess.run([*HARKEN, "run", "--config", str(cfg), "--intervals", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(seqs(out.stdout)) == 2
    aside = sorted(state.glob("outbox.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    said = [ln for ln in out.stderr.splitlines() if "damaged" in ln]
    assert len(said) == 1 and f"set aside as {aside[0].name}" in said[0], out.stderr
