"""A real capture path in CI: PortAudio -> ALSA pulse plugin -> a PulseAudio server with a
sine source (the test starts it; scripts/setup installs PulseAudio). `harken run` scores
live audio end to end, and survives the sound server going away and coming back; a
four-channel input (a pipe source fed by the test) is one stream for four machines."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from harken.testkit.files import write_agent_config

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


class FourChannelInput:
    """A 4-channel input on the sound server (a pipe source), fed in real time by a thread
    of the test; what each channel carries can be changed while the agent listens."""

    RATE = 16000

    def __init__(self, server, root):
        self.fifo = root / "four.fifo"
        subprocess.run(["pactl", "load-module", "module-pipe-source", "source_name=four",
                        f"file={self.fifo}", "format=float32le", f"rate={self.RATE}",
                        "channels=4", "channel_map=front-left,front-right,rear-left,rear-right"],
                       env=server.env, check=True, capture_output=True)
        subprocess.run(["pactl", "set-default-source", "four"], env=server.env, check=True)
        self.signal = {1: "noise", 2: "noise", 3: "silence", 4: "noise"}
        self.running = True
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self):
        import numpy as np
        rng = np.random.default_rng(0)
        block = self.RATE // 10
        t = np.arange(block) / self.RATE
        start, sent = time.monotonic(), 0
        with open(self.fifo, "wb", buffering=0) as fifo:     # nothing left to flush at close
            while self.running:
                x = np.zeros((block, 4), np.float32)
                for ch, kind in self.signal.items():
                    if kind == "noise":
                        x[:, ch - 1] = 0.05 * rng.standard_normal(block)
                    elif kind == "tone":
                        x[:, ch - 1] = 0.1 * np.sin(2 * np.pi * 1000 * t)
                try:
                    fifo.write(x.tobytes())
                except BrokenPipeError:     # the sound server went first at teardown
                    return
                sent += block
                # a sound card's pace: the generator keeps to real time
                time.sleep(max(0.0, start + sent / self.RATE - time.monotonic()))

    def close(self):
        self.running = False
        self.thread.join(10)


def test_each_machine_hears_its_own_channel_of_a_live_multichannel_input(sound_server,
                                                                         ae_bundle, tmp_path):
    """One PortAudio stream, four machines: a tone on channel 3 alone changes machine 3's
    health only; channel 2 going silent is reported for machine 2 while the others go on."""
    feed = FourChannelInput(sound_server, sound_server.root)
    machines = [{"name": f"pump-{k}", "channel": k} for k in (1, 2, 3, 4)]
    cfg = write_agent_config(
        tmp_path / "row.toml", agent={"node": "row", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "mic", "device": "pulse", "reopen_s": 0.5},
        decision={"interval_s": 1.0, "threshold": 1e9}, output={"stats_s": 60},
        machines=machines)
    proc = start_agent(cfg, sound_server.env, 100000)
    seen: list[dict] = []

    def until(predicate, timeout=90):
        """Read records until ``predicate`` holds for all seen so far."""
        batch: list[dict] = []

        def check(record):
            batch.append(record)
            return predicate(seen + batch)
        read_until(proc, check, timeout)
        seen.extend(batch)

    def scored(records, machine, status="ok", after=0):
        return any(r["kind"] == "score" and r["machine"] == machine and r["status"] == status
                   for r in records[after:])

    def health(records):
        # an interval that straddles the switch from silence to sound is partly silent: a
        # passing "dropout" (docs/agent.md "Audio health") between the two is expected
        return [(r["machine"], r["health"]) for r in records
                if r.get("status") == "audio_health" and r["health"] != "dropout"]

    try:
        until(lambda rs: scored(rs, "pump-3", "silent")
              and all(scored(rs, f"pump-{k}") for k in (1, 2, 4)))
        assert health(seen) == [("pump-3", "silent")]
        feed.signal[3] = "tone"
        until(lambda rs: ("pump-3", "ok") in health(rs))
        assert health(seen) == [("pump-3", "silent"), ("pump-3", "ok")]
        feed.signal[2] = "silence"
        until(lambda rs: ("pump-2", "silent") in health(rs))
        mark = len(seen)
        until(lambda rs: all(scored(rs, f"pump-{k}", after=mark) for k in (1, 3, 4)))
        assert health(seen) == [("pump-3", "silent"), ("pump-3", "ok"), ("pump-2", "silent")]
        started = [r for r in seen if r.get("status") == "started"]
        assert [(r["machine"], r["channel"]) for r in started] == \
            [(f"pump-{k}", k) for k in (1, 2, 3, 4)]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        feed.close()
    assert proc.returncode == 0


def test_calibrate_every_machine_from_one_live_multichannel_capture(sound_server, ae_bundle,
                                                                   tmp_path):
    """One PortAudio stream calibrates every machine on it at once; the silent channel's
    machine says why it could not be calibrated, the others are written."""
    feed = FourChannelInput(sound_server, sound_server.root)
    cfg = write_agent_config(
        tmp_path / "row.toml", agent={"node": "row", "state_dir": tmp_path / "state"},
        model={"bundle": ae_bundle, "artifact": "onnx-int8"},
        audio={"source": "mic", "device": "pulse"}, decision={"interval_s": 1.0},
        machines=[{"name": f"pump-{k}", "channel": k} for k in (1, 3, 4)])
    try:
        out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "calibrate", "--config",
                              str(cfg), "--minutes", "0.2", "--quiet", "--no-plot"],
                             env=sound_server.env, capture_output=True, text=True, timeout=120)
    finally:
        feed.close()
    assert out.returncode == 2, out.stderr
    result = json.loads(out.stdout)["machines"]
    assert "machine pump-3: only 0 scoreable intervals" in result["pump-3"]["error"]
    for name in ("pump-1", "pump-4"):
        assert result[name]["intervals"] >= 10 and result[name]["source"] == "microphone 'pulse'"
        assert (tmp_path / "state" / f"threshold-{name}.json").is_file()
    assert result["pump-1"]["threshold"] != result["pump-4"]["threshold"]
