"""systemd integration: the notify protocol against a socket the test opens, and the unit
file through `systemd-analyze verify` when the tool exists."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harken.agent.systemd import Notifier
from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import write_agent_config

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "harken.service"


def test_notifier_speaks_the_protocol_and_pings_only_on_progress(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2"})     # 1 us period
        n.ready("listening")
        assert server.recv(256) == b"READY=1\nSTATUS=listening"
        n.progress(100)
        assert server.recv(64) == b"WATCHDOG=1"
        time.sleep(0.01)
        n.progress(100)                         # audio did not advance: no ping
        n.status("audio lost")
        assert server.recv(64) == b"STATUS=audio lost"
        n.progress(200)
        assert server.recv(64) == b"WATCHDOG=1"
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("x")                             # outside systemd: nothing, no error


def test_harken_run_notifies_ready_watchdog_and_stopping(ae_bundle, small_fan, tmp_path):
    from harken.training.data.corpus import scan
    x, rate = read_wav(scan(small_fan, ["fan"], "test")[0].path, 16000)
    write_wav(tmp_path / "a.wav", x[:3 * rate], rate)
    cfg = write_agent_config(tmp_path / "agent.toml", model={"bundle": ae_bundle},
                             audio={"source": "file", "file": tmp_path / "a.wav",
                                    "realtime": True},
                             decision={"interval_s": 1, "threshold": 1e9})
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"}
        proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(cfg)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        got = []                                # read as systemd does, while it runs
        while not got or got[-1] != "STOPPING=1":
            got.append(server.recv(512).decode())
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert got[0].startswith("READY=1\nSTATUS=listening")
    assert got.count("WATCHDOG=1") >= 3                 # 3 s of audio, a ping every 0.25 s
    assert got[-1] == "STOPPING=1"
    assert len([json.loads(line) for line in out.splitlines()]) >= 3


def test_the_watchdog_goes_on_while_one_input_of_two_has_ended(ae_bundle, small_fan, tmp_path):
    """Two machines on files of their own (two inputs): after the short recording ends, the
    long one's progress alone keeps the pings going."""
    from harken.training.data.corpus import scan
    x, rate = read_wav(scan(small_fan, ["fan"], "test")[0].path, 16000)
    write_wav(tmp_path / "short.wav", x[:2 * rate], rate)
    write_wav(tmp_path / "long.wav", x[:6 * rate], rate)
    cfg = write_agent_config(tmp_path / "agent.toml", model={"bundle": ae_bundle},
                             audio={"source": "file", "file": tmp_path / "long.wav",
                                    "realtime": True},
                             decision={"interval_s": 1, "threshold": 1e9},
                             machines=[{"name": "long"},
                                       {"name": "short", "audio": {"file": tmp_path / "short.wav"}}])
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"}
        proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config",
                                 str(cfg)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        got = []                                # (wall time received, message)
        while not got or got[-1][1] != "STOPPING=1":
            got.append((time.time(), server.recv(512).decode()))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    short_end = max(r["ts"] for r in records if r["kind"] == "score" and r["machine"] == "short")
    assert any(r["kind"] == "score" and r["machine"] == "long" and r["ts"] > short_end + 2
               for r in records)
    pings_after = [t for t, msg in got if msg == "WATCHDOG=1" and t > short_end + 1.0]
    assert pings_after, "no watchdog ping after the short recording ended"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_verifies():
    out = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                         text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "harken.service" in line and "/opt/harken" not in line]
    assert problems == [], problems


def test_unit_file_has_notify_watchdog_and_capture_friendly_hardening():
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "SupplementaryGroups=audio",
                   "StateDirectory=harken", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "Restart=on-failure"):
        assert needed in text
    assert "PrivateDevices=yes" not in text and "MemoryDenyWriteExecute=yes" not in text
