"""A stop that fits systemd (agent/runner.py ``_close_sinks``): every sink closed at once
under one shared budget, so SIGTERM with several machines behind a frozen connection ends
before TimeoutStopSec; a second SIGTERM cuts the wait short; SIGHUP stops cleanly with an
exit status that systemd restarts."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from harken.agent.runner import STOP_BUDGET_S
from harken.testkit.files import write_agent_config
from tests.helpers import collect_lines, wait_for

SLACK_S = 3.0          # start of the interpreter's exit, the threads' last steps: a bound


@pytest.fixture
def frozen_port():
    """A TCP port that accepts connections and never answers (a broker frozen mid-way, a
    half-open line): an MQTT CONNECT sent there waits forever for its CONNACK."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def start(tmp_path, bundle, wav, port, machines=4):
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": True, "loop": True},
        decision={"interval_s": 1, "threshold": 1e9}, output={"stdout": True},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port},
        machines=[{"name": f"m{i}"} for i in range(machines)])
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = collect_lines(proc.stdout)
    names = {f"m{i}" for i in range(machines)}
    wait_for("a score of every machine", lambda: names <= {
        json.loads(ln)["machine"] for ln in list(lines) if '"kind": "score"' in ln}, 120)
    return proc, lines


def stopped(lines):
    return sorted(json.loads(ln)["machine"] for ln in list(lines) if '"status": "stopped"' in ln)


def test_sigterm_with_four_machines_behind_a_frozen_connection_stops_within_one_budget(
        ae_bundle, wav, tmp_path, frozen_port):
    proc, lines = start(tmp_path, ae_bundle, wav, frozen_port)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr.read()
    assert elapsed < STOP_BUDGET_S + SLACK_S, f"stop took {elapsed:.1f} s"
    assert stopped(lines) == ["m0", "m1", "m2", "m3"]


def test_a_second_sigterm_cuts_the_flush_short(ae_bundle, wav, tmp_path, frozen_port):
    proc, lines = start(tmp_path, ae_bundle, wav, frozen_port, machines=1)
    proc.send_signal(signal.SIGTERM)
    wait_for("the stop under way", lambda: stopped(lines) == ["m0"], 30, every=0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert time.monotonic() - t0 < SLACK_S + 1
    assert proc.returncode == 0


def test_sighup_stops_cleanly_and_exits_129_for_systemd_to_restart(ae_bundle, wav, tmp_path):
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan",
                                        "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": True, "loop": True},
        decision={"interval_s": 1, "threshold": 1e9}, output={"stdout": True})
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = collect_lines(proc.stdout)
    wait_for("a score", lambda: any('"kind": "score"' in ln for ln in list(lines)), 120)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(30) == 129
    assert stopped(lines) == ["fan"]


def test_sigterm_stops_a_stdin_run_whose_pipe_stays_open_and_idle(ae_bundle, tmp_path):
    """Before: the read of the idle pipe held the stop; still running 25 s after SIGTERM,
    no ``stopped`` (finding 5). Now the read looks at the stop every 0.1 s."""
    import numpy as np
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "n1", "machine": "fan",
                                        "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"}, audio={"source": "stdin"},
        decision={"interval_s": 1, "threshold": 1e9}, output={"stdout": True})
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                             str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=False)
    try:
        lines = collect_lines(proc.stdout)
        noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000)
        proc.stdin.write((noise * 32767).astype("<i2").tobytes())     # 3 s; the pipe stays open
        proc.stdin.flush()
        wait_for("a score", lambda: any(b'"kind": "score"' in ln for ln in list(lines)), 120)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_BUDGET_S + SLACK_S)
        assert time.monotonic() - t0 < STOP_BUDGET_S + SLACK_S
        assert proc.returncode == 0, proc.stderr.read()
        assert [json.loads(ln)["machine"] for ln in list(lines)
                if b'"status": "stopped"' in ln] == ["fan"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
