"""The control socket (agent/operator/control.py) and a running ``harken run`` reached
through it: one JSON line each way, a killed daemon's socket replaced, removed at a clean
stop, mode 0660 and a clear line for a user who may not connect; maintenance on, off,
expiry and restart seen in the daemon's JSON lines; refused commands change nothing."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harken.agent.cli import main
from harken.agent.operator import audit
from harken.agent.operator.commands import MAX_BYTES
from harken.agent.operator.control import ControlError, ControlServer, request, socket_path
from harken.agent.operator.maintenance import Maintenance
from harken.common.errors import ConfigError
from harken.testkit.files import write_agent_config
from tests.helpers import collect_lines, wait_for


def echo(raw: bytes, via: str) -> dict:
    return {"ok": True, "result": {"got": raw.decode(errors="replace")[:20], "bytes": len(raw),
                                   "via": via}}


def ask(state, body) -> dict | None:
    reply = request(state, body)
    return None if reply is None else reply["result"]


@pytest.fixture
def server(tmp_path):
    s = ControlServer(tmp_path, echo, read_timeout_s=0.5).start()
    yield s
    s.close()


def test_one_request_line_one_reply_line(server, tmp_path):
    assert ask(tmp_path, {"a": 1}) == {"got": '{"a": 1}', "bytes": 8, "via": "socket"}
    assert stat.S_IMODE(os.stat(socket_path(tmp_path)).st_mode) == 0o660


def test_an_oversized_request_is_handed_on_unread_and_a_silent_client_dropped(server,
                                                                              tmp_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(socket_path(tmp_path)))
        s.sendall(b"x" * (2 * MAX_BYTES))
        s.shutdown(socket.SHUT_WR)
        reply = json.loads(s.makefile().readline())
    assert reply["result"]["bytes"] > MAX_BYTES                  # the dispatcher refuses it by size
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(socket_path(tmp_path)))          # sends nothing: dropped, no reply
    t0 = time.monotonic()
    assert ask(tmp_path, {"b": 2})["via"] == "socket"
    assert time.monotonic() - t0 < 5
    assert silent.recv(10) == b""
    silent.close()


def test_a_killed_daemons_socket_is_no_daemon_and_is_replaced_at_start(tmp_path):
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(socket_path(tmp_path)))               # bound, never listening: killed
    dead.close()
    assert request(tmp_path, {"a": 1}) is None          # the CLI then does it itself
    s = ControlServer(tmp_path, echo).start()
    try:
        assert ask(tmp_path, {"a": 1})["bytes"] == 8
    finally:
        s.close()
    assert not socket_path(tmp_path).exists()           # a clean stop removes it
    assert request(tmp_path, {"a": 1}) is None


def test_a_reply_that_is_not_the_agents_is_one_line(tmp_path):
    s = ControlServer(tmp_path, lambda raw, via: {"hello": 1}).start()
    try:
        with pytest.raises(ControlError, match="an unexpected reply"):
            request(tmp_path, {"a": 1})
    finally:
        s.close()


def test_something_else_at_the_sockets_path_is_refused_in_one_line(tmp_path):
    socket_path(tmp_path).write_text("mine")
    with pytest.raises(ConfigError, match="control.sock: is not a socket"):
        ControlServer(tmp_path, echo).start()
    assert socket_path(tmp_path).read_text() == "mine"


def test_a_state_folder_deeper_than_a_socket_address_holds(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(socket_path(deep))) > 108
    s = ControlServer(deep, echo).start()
    try:
        assert ask(deep, {"a": 1})["bytes"] == 8
    finally:
        s.close()


def as_nobody(fn) -> tuple[int, str]:
    """``fn()`` in a forked child running as nobody: (its exit status, its stderr)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # the child
        code = 3
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = os.fdopen(w, "w")
            code = fn()
            sys.stderr.flush()
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_user_who_may_not_connect_gets_one_line_and_changes_nothing():
    folder = Path(tempfile.mkdtemp(prefix="harken-control-"))
    try:
        folder.chmod(0o755)                             # reachable: the socket's mode decides
        state = folder / "state"
        state.mkdir(mode=0o755)
        cfg = write_agent_config(folder / "agent.toml", agent={"machine": "fan",
                                                               "state_dir": state},
                                 model={"bundle": folder / "none"})
        cfg.chmod(0o644)
        # what the child imports, imported here: nobody cannot read this Python's stdlib
        import uuid  # noqa: F401
        assert main(["maintenance", "--config", str(cfg), "status"]) == 0
        calls = []
        s = ControlServer(state, lambda raw, via: calls.append(raw) or {"ok": True}).start()
        try:
            code, err = as_nobody(lambda: main(["maintenance", "--config", str(cfg), "on"]))
        finally:
            s.close()
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "permission denied" in lines[0] and "sudo" in lines[0]
        assert "Traceback" not in err and calls == []
        assert not (state / "maintenance-fan.json").exists()
    finally:
        import shutil
        shutil.rmtree(folder)


# -- a running daemon -----------------------------------------------------------------------

def start_agent(cfg: Path) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = collect_lines(proc.stdout)
    return proc, lines


def alive(proc, lines, predicate):
    """``predicate`` for wait_for, failing at once (with the agent's stderr) if it ended."""
    def check():
        if proc.poll() is not None:
            raise AssertionError(f"the agent ended ({proc.returncode}): {proc.stderr.read()}")
        return predicate()
    return check


def records(lines, start=0):
    return [json.loads(ln) for ln in list(lines)[start:] if ln.startswith("{")]


def cli(cfg, *argv) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "harken.agent.cli", *argv, "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def status_seen(lines, since, **want):
    return any(r.get("kind") == "status" and r.get("status") == "maintenance"
               and all(r.get(k) == v for k, v in want.items()) for r in records(lines, since))


def test_maintenance_through_the_cli_reaches_the_running_daemon(ae_bundle, wav, tmp_path):
    """On: scores marked, the running alarm ended, no other event; off: alarms again; --for: ends by itself;
    a restart after a kill keeps it; refused commands change nothing."""
    state = tmp_path / "state"
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan", "state_dir": state},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": True, "loop": True},
        # every interval above the threshold: an alarm within two intervals
        decision={"interval_s": 1, "threshold": -1e9, "k_on": 1, "n": 1, "n_off": 1},
        output={"stdout": True})
    proc, lines = start_agent(cfg)
    try:
        wait_for("an anomaly event", alive(proc, lines, lambda: any(
            r.get("kind") == "event" for r in records(lines))), 120)
        assert socket_path(state).exists()
        mark = len(lines)
        code, out, err = cli(cfg, "maintenance", "on", "--operator", "alice")
        assert code == 0, err
        assert out.startswith("machine fan: in maintenance until turned off (by alice)")
        wait_for("three scores in maintenance", lambda: sum(
            r.get("kind") == "score" and r.get("maintenance") is True
            for r in records(lines, mark)) >= 3, 60)
        assert status_seen(lines, mark, on=True, by="alice", via="socket")
        # from the first interval decided in maintenance on (one decided just before may
        # reach the sinks after the status line)
        after = records(lines, mark)
        during = after[[r.get("maintenance") for r in after].index(True):]
        # the alarm running when maintenance began ends there (its end, once), no other
        assert [r.get("type") for r in during if r.get("kind") == "event"] == ["end"]
        assert all(r.get("anomaly") is False for r in during if r.get("kind") == "score")

        # refused: malformed, replayed, unknown machine; nothing changes
        base = {"id": "r1", "command": "maintenance", "operator": "eve", "state": "off"}
        for bad, why in [({**base, "state": "of"}, "key 'state'"),
                         ({**base, "machine": "press"}, "no such machine"),
                         ({**base, "for": "2h"}, "'for' goes with state 'on'")]:
            reply = request(state, bad)
            assert reply["ok"] is False and why in reply["reason"], reply
        # on while on until turned off changes nothing (F40b #7: ok, unchanged, no replay
        # slot); on for 2 h is a change, and its replay is refused
        same = request(state, {**base, "id": "r0", "state": "on"})
        assert same["ok"] is True and same["result"]["unchanged"] is True
        on_again = {"id": "r2", "command": "maintenance", "operator": "eve", "state": "on",
                    "for": "2h"}
        assert request(state, on_again)["ok"] is True
        replay = request(state, on_again)
        assert replay["ok"] is False and "already carried out" in replay["reason"]
        assert Maintenance(state, "fan").active()
        refused = [x for x in audit.read(state, None) if x["outcome"] == "refused"]
        assert len(refused) == 4 and {x["via"] for x in refused} == {"socket"}

        mark = len(lines)
        code, out, err = cli(cfg, "maintenance", "off")
        assert code == 0 and "not in maintenance" in out, err
        wait_for("an alarm again", lambda: any(r.get("kind") == "event"
                                               for r in records(lines, mark)), 60)

        mark = len(lines)
        code, out, err = cli(cfg, "maintenance", "on", "--for", "2s")
        assert code == 0, err
        wait_for("the end of maintenance by expiry", lambda: status_seen(
            lines, mark, on=False, via="expiry"), 60)
        wait_for("an alarm after the expiry", lambda: any(r.get("kind") == "event"
                                                          for r in records(lines, mark)), 60)
        assert [x["via"] for x in audit.read(state, "fan")
                if x["action"] == "maintenance" and x["outcome"] == "ok"][-2:] == \
            ["socket", "expiry"]

        code, out, err = cli(cfg, "maintenance", "on", "--for", "1h")
        assert code == 0, err
        proc.kill()                                   # no clean stop: the socket stays
        proc.wait(30)
        assert socket_path(state).exists()
        code, out, err = cli(cfg, "maintenance", "status")
        assert code == 0 and "in maintenance until" in out, err   # read from the file

        proc, lines = start_agent(cfg)
        wait_for("three scores", lambda: sum(r.get("kind") == "score"
                                             for r in records(lines)) >= 3, 120)
        assert status_seen(lines, 0, on=True, via="start")
        scores = [r for r in records(lines) if r.get("kind") == "score"]
        assert all(r.get("maintenance") is True for r in scores)
        assert not any(r.get("kind") == "event" for r in records(lines))
        code, out, err = cli(cfg, "maintenance", "status", "--json")
        assert code == 0 and json.loads(out)["on"] is True, err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not socket_path(state).exists()        # removed at a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_runner_hands_its_sinks_the_command_handler_only_when_commands_are_on(
        ae_bundle, wav, tmp_path):
    from harken.agent.runner import Runner
    from harken.agent.config import load_config
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav}, output={"stdout": False},
        machines=[{"name": "fan"}, {"name": "pump"}])
    runner = Runner.from_config(load_config(cfg))
    try:
        assert all(s.commands is None for m in runner.machines for s in m.sinks)
        assert all(m.pipeline.maintenance is not None for m in runner.machines)
    finally:
        runner.close()
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav}, output={"stdout": False},
        mqtt={"commands": True}, machines=[{"name": "fan"}, {"name": "pump"}])
    runner = Runner.from_config(load_config(cfg))
    try:
        fan, pump = runner.machines
        reply = fan.sinks[0].commands(json.dumps({"id": "1", "command": "maintenance",
                                                  "operator": "a", "state": "on"}).encode(),
                                      "mqtt")
        assert reply["ok"] and reply["machine"] == "fan"
        assert fan.maintenance.active() and not pump.maintenance.active()
        assert fan.pipeline.maintenance(time.time()) is True
        assert pump.pipeline.maintenance(time.time()) is False
        refused = pump.sinks[0].commands(json.dumps({"id": "2", "command": "maintenance",
                                                     "operator": "a", "state": "on",
                                                     "machine": "fan"}).encode(), "mqtt")
        assert not refused["ok"] and "does not match" in refused["reason"]
    finally:
        runner.close()
