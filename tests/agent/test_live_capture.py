"""A real capture path in CI: PortAudio -> ALSA pulse plugin -> a PulseAudio server with a
sine source (the test starts it; scripts/setup installs PulseAudio). `harken run` scores
live audio end to end, and survives the sound server going away and coming back."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import write_agent_config

PULSE = shutil.which("pulseaudio")


class SoundServer:
    """A private PulseAudio server (own runtime dir and socket) with a sine source as the
    default input."""

    def __init__(self, root):
        self.root = root
        self.env = {**os.environ, "PULSE_RUNTIME_PATH": str(root), "HOME": str(root),
                    "PULSE_SERVER": f"unix:{root}/native"}

    def start(self):
        subprocess.run([PULSE, "-D", "--exit-idle-time=-1", "-n", "--use-pid-file=true",
                        f"--load=module-native-protocol-unix socket={self.root}/native",
                        "--load=module-null-sink sink_name=vsink"],
                       env=self.env, check=True, capture_output=True, timeout=20)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(["pactl", "load-module", "module-sine-source", "source_name=sine",
                        "frequency=440"], env=self.env, check=True, capture_output=True)
        subprocess.run(["pactl", "set-default-source", "sine"], env=self.env, check=True)

    def stop(self):
        subprocess.run([PULSE, "-k"], env=self.env, capture_output=True, timeout=20)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode:
                return
            time.sleep(0.1)


@pytest.fixture
def sound_server(tmp_path):
    assert PULSE, "pulseaudio is not installed: scripts/setup installs it for the tests"
    server = SoundServer(tmp_path / "pulse")
    server.root.mkdir()
    server.start()
    yield server
    server.stop()


def agent_config(tmp_path, bundle):
    return write_agent_config(
        tmp_path / "live.toml",
        agent={"node": "live", "machine": "fan", "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "mic", "device": "pulse", "reopen_s": 0.5},
        decision={"interval_s": 1.0, "threshold": 1e9}, output={"stats_s": 1})


def start_agent(config, env, intervals):
    return subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(config),
                             "--intervals", str(intervals)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(proc, predicate, timeout):
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if predicate(seen[-1]):
            return seen
    raise AssertionError(f"not seen in {timeout} s; got {seen}; stderr: "
                         f"{proc.stderr.read() if proc.poll() is not None else ''}")


def test_live_microphone_scored_end_to_end(sound_server, ae_bundle, tmp_path):
    proc = start_agent(agent_config(tmp_path, ae_bundle), sound_server.env, 3)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    scores = [r for r in records if r["kind"] == "score"]
    assert len(scores) == 3
    assert all(s["status"] == "ok" and s["score"] > 0 and s["windows"] > 0 for s in scores)
    assert scores[0]["backend"].startswith("onnxruntime")
    stats = [r for r in records if r.get("status") == "stats"]
    assert stats and stats[-1]["rss_mb"] > 10 and stats[-1]["overflow_samples"] == 0
    # a record whose period saw no interval has no inference time (None): not every one
    timed = [s["inference_ms_median"] for s in stats if s["inference_ms_median"] is not None]
    assert timed and min(timed) > 0 and stats[-1]["cpu_percent"] >= 0


def test_sound_server_lost_and_back(sound_server, ae_bundle, tmp_path):
    proc = start_agent(agent_config(tmp_path, ae_bundle), sound_server.env, 1000)
    try:
        read_until(proc, lambda r: r["kind"] == "score", 60)
        sound_server.stop()
        read_until(proc, lambda r: r.get("status") == "audio_lost", 60)
        assert proc.poll() is None                        # reported, not crashed
        sound_server.start()
        read_until(proc, lambda r: r.get("status") == "audio_restored", 60)
        read_until(proc, lambda r: r["kind"] == "score" and r["status"] == "ok", 60)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0                           # SIGTERM: a clean stop


def test_calibrate_from_the_live_microphone(sound_server, ae_bundle, tmp_path):
    config = agent_config(tmp_path, ae_bundle)
    out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "calibrate", "--config", str(config),
                          "--minutes", "0.2", "--quiet"], env=sound_server.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["intervals"] >= 10 and result["source"] == "microphone 'pulse'"
    assert result["threshold"] > result["score_max"] >= result["score_mean"] > 0
    assert (tmp_path / "state" / "threshold-fan.json").is_file()


def test_enroll_from_the_live_microphone_then_run_on_the_enrolled_bank(sound_server,
                                                                       general_bundle, tmp_path):
    """`harken enroll --minutes` records through the same PortAudio path as `harken run`."""
    bundle = general_bundle
    cfg = write_agent_config(
        tmp_path / "site.toml",
        agent={"node": "live", "machine": "pump", "state_dir": tmp_path / "state"},
        model={"bundle": bundle}, audio={"source": "mic", "device": "pulse", "reopen_s": 0.5},
        decision={"interval_s": 1.0}, output={"stats_s": 60})
    r = subprocess.run([sys.executable, "-m", "harken.agent.cli", "enroll", "--config", str(cfg),
                        "--minutes", "0.12", "--json"], env=sound_server.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["new_intervals"] >= 6 and out["sessions"][0]["source"] == "microphone 'pulse'"
    proc = start_agent(cfg, sound_server.env, 2)
    stdout, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert next(x for x in records if x.get("status") == "started")["bank"]["enrolled"]
    assert len([x for x in records if x["kind"] == "score"]) == 2
