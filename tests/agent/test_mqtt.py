"""MQTT against a real Mosquitto on a loopback port (password file), through the durable
outbox: contract topics, retained state, Last Will, and no loss across a broker outage and
an agent restart."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from agent.outbox import Outbox
from agent.wavio import read_wav, write_wav
from tests.conftest import write_agent_config

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, root):
        self.root, self.port, self.proc = root, free_port(), None
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(root / "passwd"), "harken", "s3cret"],
                       check=True, capture_output=True)
        (root / "passwd").chmod(0o600)
        (root / "mosquitto.conf").write_text(
            f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {root / 'passwd'}\npersistence false\n")

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.root / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def broker(tmp_path):
    assert shutil.which("mosquitto_passwd"), "mosquitto is not installed: scripts/setup does it"
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Listener:
    """A plant-side subscriber collecting everything under harken/#."""

    def __init__(self, port):
        self.messages = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener",
                             clean_session=False)
        self.c.username_pw_set("harken", "s3cret")
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(),
                                                                  m.retain))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("harken/#", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        time.sleep(0.3)

    def scores(self):
        return [json.loads(p) for t, p, _ in self.messages if t.endswith("/score")]

    def wait(self, predicate, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return
            time.sleep(0.1)
        raise AssertionError(f"not seen in {timeout} s: {self.messages[-5:]}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def config(tmp_path, bundle, port, wav, password="s3cret", realtime=False, loop=False):
    (tmp_path / "secret").write_text(password + "\n")
    return write_agent_config(
        tmp_path / "agent.toml",
        agent={"node": "n1", "machine": "fan", "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": realtime, "loop": loop},
        decision={"interval_s": 2, "threshold": 0, "k_on": 1, "n": 1},
        output={"stdout": False},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "username": "harken",
              "password_file": "secret"})


@pytest.fixture
def wav(small_fan, tmp_path):
    from training.data.corpus import scan
    clip = scan(small_fan, ["fan"], "test")[0]
    x, rate = read_wav(clip.path, 16000)
    write_wav(tmp_path / "ten.wav", x, rate)           # 10 s: 4 full 2-s intervals + finish
    return tmp_path / "ten.wav"


def run_agent(cfg, timeout=120):
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=timeout)


def test_scores_status_state_and_events_reach_the_broker(broker, ae_bundle, wav, tmp_path):
    listen = Listener(broker.port)
    out = run_agent(config(tmp_path, ae_bundle, broker.port, wav))
    assert out.returncode == 0, out.stderr
    listen.wait(lambda lt: ("harken/n1/status", "stopped", False) in lt.messages)
    scores = listen.scores()
    assert [s["seq"] for s in scores] == [1, 2, 3, 4, 5]
    assert {"ts", "seq", "score", "threshold", "anomaly", "interval_s", "model",
            "backend"} <= set(scores[0])
    topics = [t for t, _, _ in listen.messages]
    assert topics[0] == "harken/n1/status" and listen.messages[0][1] == "online"
    assert ("harken/n1/fan/anomaly", "ON", False) in listen.messages    # threshold 0: ON
    events = [json.loads(p) for t, p, _ in listen.messages if t.endswith("/event")]
    assert events[0]["type"] == "start" and events[0]["seq"] == 1
    listen.close()
    # retained: a subscriber arriving later learns state and status at once
    late = Listener(broker.port)
    late.wait(lambda lt: ("harken/n1/fan/anomaly", "ON", True) in lt.messages
              and ("harken/n1/status", "stopped", True) in lt.messages, 10)
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
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listen.wait(lambda lt: ("harken/n1/status", "online", False) in lt.messages, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    listen.wait(lambda lt: ("harken/n1/status", "offline", False) in lt.messages, 90)
    listen.close()

    bad = config(tmp_path, ae_bundle, broker.port, wav, password="wrong", realtime=True)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(bad)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    proc.terminate()
    err = proc.communicate(timeout=30)[1]
    assert "refused the connection: Not authorized (check mqtt.username and the password)" in err
    assert "wrong" not in err
