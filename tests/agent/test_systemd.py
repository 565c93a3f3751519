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


# -- harken systemd-unit: what it writes is what systemd reads ------------------------------

def systemd_words(line: str) -> list[str]:
    """A command line as systemd reads it (systemd.service(5) "Command lines"), for the
    escapes the unit writer uses: quotes group, backslash escapes inside them, ``%%`` is a
    percent sign and ``$$`` a dollar sign."""
    import shlex
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


@pytest.mark.parametrize("config", ["/etc/harken/agent.toml", "/srv/my plant/agent 1.toml",
                                    '/srv/a"b\\c;d/100%$HOME.toml'])
def test_systemd_unit_quotes_paths_as_systemd_reads_them(config, tmp_path):
    from harken.agent.cli import systemd_unit
    unit = systemd_unit("/opt/harken venv/bin/harken", config)
    exec_lines = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert len(exec_lines) == 1
    assert systemd_words(exec_lines[0][len("ExecStart="):]) == [
        "/opt/harken venv/bin/harken", "run", "--config", config]
    if shutil.which("systemd-analyze"):
        (tmp_path / "harken.service").write_text(unit)
        out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "harken.service")],
                             capture_output=True, text=True, timeout=60)
        problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                    if "harken.service" in ln and "is not executable" not in ln]
        assert problems == [], problems


@pytest.mark.parametrize("config", ["agent.toml\nExecStartPre=/bin/true", "a\rb.toml",
                                    "a\x1b[2Jb.toml", "a\tb.toml"])
def test_systemd_unit_refuses_control_characters_in_one_line(config):
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "systemd-unit",
                          "--exec", "/opt/harken/bin/harken", "--config", config],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    said = out.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("harken: error: --config ") \
        and "control character" in said[0], out.stderr


def test_systemd_unit_makes_a_relative_config_absolute(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "systemd-unit",
                          "--exec", "bin/harken", "--config", "conf/../agent.toml"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ExecStart="))
    assert line == f"ExecStart={tmp_path}/bin/harken run --config {tmp_path}/agent.toml"


def test_the_unit_does_not_restart_a_config_mistake_and_can_read_the_clock_state():
    text = UNIT.read_text()
    assert "RestartPreventExitStatus=2" in text.splitlines()
    assert "TimeoutStopSec=20" in text.splitlines()
    # ProtectClock=yes denies even reading adjtimex (docs/agent.md "Time you can trust")
    assert "ProtectClock=yes" not in text.splitlines()
    assert "CapabilityBoundingSet=" in text.splitlines()        # the clock stays unsettable


@pytest.mark.parametrize("option", ["--config", "--exec"])
def test_systemd_unit_refuses_an_empty_path_in_one_line(option, tmp_path):
    """Before: ``--config ''`` wrote ``--config <cwd>`` (the folder) and exited 0."""
    args = {"--exec": "/opt/harken/bin/harken", "--config": "/etc/harken/agent.toml", option: ""}
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "systemd-unit",
                          *[w for kv in args.items() for w in kv]],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    said = out.stderr.strip().splitlines()
    assert said == [f"harken: error: {option} '': empty; give the path of the "
                    f"{'agent config' if option == '--config' else 'harken command'}"]


def test_the_unit_restarts_a_failing_device_but_not_a_config_mistake():
    """Exit 75 (a full disk, an I/O error at start: harken.common.errors.EnvironmentFailure)
    is restarted, for good; exit 2 is not (docs/agent.md "Exit codes")."""
    from harken.common.errors import EXIT_TEMPFAIL, EXIT_USER
    lines = UNIT.read_text().splitlines()
    prevent = [ln.split("=", 1)[1].split() for ln in lines
               if ln.startswith("RestartPreventExitStatus=")]
    assert prevent == [[str(EXIT_USER)]] and str(EXIT_TEMPFAIL) not in prevent[0]
    assert "Restart=on-failure" in lines and "StartLimitIntervalSec=0" in lines


def test_an_environment_failure_exits_75_and_a_user_mistake_2(capsys):
    import argparse

    from harken.common.clitools import run_command
    from harken.common.errors import ConfigError, EnvironmentFailure

    def parser_raising(exc):
        p = argparse.ArgumentParser(prog="harken")
        p.add_argument("--debug", action="store_true")
        p.add_argument("--log-level", default="warning")

        def boom(_args):
            raise exc
        p.set_defaults(func=boom)
        return p
    assert run_command(parser_raising(EnvironmentFailure("x: disk full")), []) == 75
    assert run_command(parser_raising(ConfigError("x: bad key")), []) == 2
    assert run_command(parser_raising(FileNotFoundError(2, "No such file")), []) == 2
    err = capsys.readouterr().err
    assert err.count("harken: error: ") == 3 and "Traceback" not in err
