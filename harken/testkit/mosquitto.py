"""A real Mosquitto for the MQTT tests and benchmarks: a loopback port with a password file,
and on request a TLS listener that requires client certificates from a test CA made with
openssl; a plant-side subscriber; agents run as child processes against it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from harken.testkit.files import write_agent_config, write_channels

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
USER, PASSWORD = "harken", "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name: str) -> None:
    """folder/name.crt and .key: a self-signed CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)


def make_cert(folder, name: str, ca: str, san: str | None = None) -> None:
    """folder/name.crt and .key signed by CA ``ca`` (server certs get a subjectAltName)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    ext = []
    if san:
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *ext, cwd=folder)


# the files make_tls_files writes, as Broker and the tests name them
TLS_FILES = ("ca.crt", "ca.key", "other-ca.crt", "other-ca.key", "server.crt", "server.key",
             "client.crt", "client.key")


def make_tls_files(folder: Path) -> Path:
    """A test CA (ca) with a server certificate for 127.0.0.1 and a client certificate it
    signed, and a second CA (other-ca) that signed neither; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(folder, "server", "ca", san="IP:127.0.0.1,DNS:localhost")
    make_cert(folder, "client", "ca")
    return folder


class Broker:
    """Mosquitto on a free loopback port with the test user and password, and with ``tls`` a
    second listener that requires a client certificate (the files of make_tls_files, made in
    ``root``, or copied from ``certs`` where a caller made them once for many brokers: four
    RSA keys take a while). ``acl``: the text of an ACL file (Mosquitto's ``acl_file``
    format) the broker enforces; ``extra``: more mosquitto.conf lines (size limits)."""

    def __init__(self, root: Path, tls: bool = False, extra: str = "",
                 certs: Path | None = None, acl: str | None = None) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(root / "passwd"), USER, PASSWORD],
                       check=True, capture_output=True)
        (root / "passwd").chmod(0o600)
        (root / "db").mkdir(exist_ok=True)
        if acl is not None:
            (root / "acl").write_text(acl)
            extra = f"acl_file {root / 'acl'}\n{extra}"
        # persistence on: a subscriber's persistent session survives a broker restart
        conf = (f"user root\nallow_anonymous false\npassword_file {root / 'passwd'}\n"
                f"persistence true\npersistence_location {root / 'db'}/\n"
                f"{extra}listener {self.port} 127.0.0.1\n")
        self.tls_port = None
        if tls:
            self.tls_port = free_port()
            if certs is None:
                make_tls_files(root)
            else:
                for name in TLS_FILES:
                    shutil.copyfile(certs / name, root / name)
            conf += (f"listener {self.tls_port} 127.0.0.1\ncafile {root / 'ca.crt'}\n"
                     f"certfile {root / 'server.crt'}\nkeyfile {root / 'server.key'}\n"
                     "require_certificate true\n")
        (root / "mosquitto.conf").write_text(conf)

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


class Listener:
    """A plant-side subscriber with a persistent session, collecting everything under
    ``topic``."""

    def __init__(self, port, topic="harken/#", client_id="test-listener"):
        self.messages = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=False)
        self.c.username_pw_set(USER, PASSWORD)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(),
                                                                  m.retain))
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        # the broker's SUBACK, not a fixed sleep: on a loaded machine a subscription can
        # take longer than any guess, and what is published before it is not delivered
        if not self.subscribed.wait(30):
            raise AssertionError(f"listener not subscribed to {topic} within 30 s")

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


def agent_config(tmp_path, bundle, port, wav, password=PASSWORD, realtime=False, loop=False,
                 name="agent.toml", output=None, machine="fan", threshold=0, **mqtt_extra):
    """An agent config scoring ``wav`` in 2-s intervals (threshold 0: the first interval
    raises the anomaly) and publishing to the test broker."""
    (tmp_path / "secret").write_text(password + "\n")
    return write_agent_config(
        tmp_path / name,
        agent={"node": "n1", "machine": machine, "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": realtime, "loop": loop},
        decision={"interval_s": 2, "threshold": threshold, "k_on": 1, "n": 1},
        output=output or {"stdout": False},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "username": USER,
              "password_file": "secret", **mqtt_extra})


def two_machine_config(tmp_path, bundle, port, wav, **mqtt_extra):
    """Two machines, pump-1 and pump-2, on the two channels of one recording (``wav`` and
    the same sound a second later), publishing to the test broker."""
    import numpy as np

    from harken.agent.sources.wavio import read_wav
    x, rate = read_wav(wav, 16000)
    two = write_channels(tmp_path / "two.wav", [x, np.roll(x, rate)], rate)
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    return write_agent_config(
        tmp_path / "row.toml", agent={"node": "n1", "state_dir": tmp_path / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": two, "realtime": False},
        decision={"interval_s": 2, "threshold": 1e9}, output={"stdout": False},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "username": USER,
              "password_file": "secret", **mqtt_extra},
        machines=[{"name": "pump-1", "channel": 1}, {"name": "pump-2", "channel": 2}])


def run_agent(cfg, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(cfg),
                           *args], capture_output=True, text=True, timeout=timeout)


# every agent start_agent started, so that the test suite can kill what a failed test left
# running (tests/agent/conftest.py)
STARTED: list[subprocess.Popen] = []


def start_agent(cfg):
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def outbox_depth(path) -> int:
    """Messages waiting in a running agent's outbox (a read-only look, WAL allows it)."""
    import sqlite3
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        db.close()
