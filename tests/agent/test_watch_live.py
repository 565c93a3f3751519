"""`harken watch` as a process against a real Mosquitto with hostile publishers: retained
messages that would end paho's network thread, escape sequences read on a real terminal (a
pty), thousands of retained topics, two watchers on one host, a takeover of the session, the
broker going away, a refused subscription, an oversized message, a reader that goes away
(docs/reliability.md "The plant view")."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from harken.testkit.mosquitto import PASSWORD, USER, Broker, free_port

CLI = [sys.executable, "-m", "harken.agent.cli", "watch"]
SCORE = {"ts": 0.0, "seq": 1, "score": 1.5, "threshold": 2.0, "anomaly": False}


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    """One broker for the tests that only publish and watch (each under its own prefix)."""
    b = Broker(tmp_path_factory.mktemp("watch-broker"))
    b.start()
    yield b
    b.stop()


class Publisher:
    def __init__(self, port: int, client_id: str = "", protocol=mqtt.MQTTv311) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol)
        self.c.username_pw_set(USER, PASSWORD)
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10)

    def send(self, topic: str, payload, retain: bool = False, qos: int = 1) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(30)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Watcher:
    """`harken watch` as a child process, its output lines collected as they come."""

    def __init__(self, port: int, *args: str, stdout=subprocess.PIPE,
                 user: str = f"{USER}:{PASSWORD}@") -> None:
        self.proc = subprocess.Popen([*CLI, "--broker", f"mqtt://{user}127.0.0.1:{port}",
                                      *args], stdout=stdout,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                        for s, lines in ((self.proc.stdout, self.out),
                                         (self.proc.stderr, self.err)) if s is not None]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, lines) -> None:
        for line in stream:
            lines.append(line)

    def records(self) -> list[dict]:
        return [json.loads(x) for x in list(self.out)]

    def wait(self, predicate, timeout: float = 30, what: str = "") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return
            if self.proc.poll() is not None and not predicate(self):
                time.sleep(0.2)
                break
            time.sleep(0.05)
        raise AssertionError(f"not seen{': ' + what if what else ''}; out {self.out[-5:]}, "
                             f"err {self.err[-5:]}")

    def stderr_has(self, text: str):
        return lambda w: any(text in line for line in w.err)

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        for t in self.threads:
            t.join(10)
        return rc


def seen(topic: str):
    return lambda w: any(r["topic"] == topic for r in w.records())


def test_a_retained_message_that_breaks_the_parser_does_not_stop_the_watch(shared_broker):
    """Retained: a score nested 100 000 deep, a stats record likewise, a ts of 10^400 and a
    status of ``[/bold]``. paho's network thread used to end at the first; now each is
    skipped and counted and a live score published afterwards still arrives."""
    pub = Publisher(shared_broker.port)
    p = "t1"
    pub.send(f"{p}/evil/fan/score", b"[" * 100_000 + b"]" * 100_000, retain=True)
    pub.send(f"{p}/evil/fan/stats", b"[" * 100_000, retain=True)
    pub.send(f"{p}/evil/pump/score", b'{"ts": 1' + b"0" * 400 + b', "score": 1.0}', retain=True)
    pub.send(f"{p}/evil/fan/status", "[/bold]\x1b]0;PWNED\x07", retain=True)
    pub.send(f"{p}/good/fan/status", "online", retain=True)
    w = Watcher(shared_broker.port, "--prefix", p, "--json", "--for", "8", "--client-id", "w-t1")
    try:
        w.wait(seen(f"{p}/good/fan/status"), what="the retained state")
        pub.send(f"{p}/n1/fan/score", {**SCORE, "ts": time.time(), "seq": 42})
        w.wait(lambda w: any(r["kind"] == "score" and r["payload"]["seq"] == 42
                             for r in w.records()), what="the live score")
    finally:
        assert w.finish() == 0
        pub.close()
    assert any("3 malformed message(s) skipped" in line for line in w.err), w.err
    assert "Traceback" not in "".join(w.err)
    raw = "".join(w.out)
    assert "\x1b" not in raw and "\\u001b]0;PWNED" in raw     # JSON escapes it


def run_in_pty(args: list[str], columns: int, rows: int = 30, seconds: float = 4) -> bytes:
    """What `harken watch` writes to a terminal of ``columns`` x ``rows``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([*CLI, *args, "--for", str(seconds)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:               # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(60)
    return b"".join(chunks)


@pytest.mark.parametrize("columns", [160, 20])
def test_escape_sequences_from_the_broker_never_reach_the_operators_terminal(shared_broker,
                                                                             columns):
    """On a real terminal (a pty; 160 and 20 columns): a status and an anomaly state carrying
    a window title, a clear screen, blink, colour, BEL and CR, and a node name carrying
    markup, are shown as visible text; none of the broker's escape sequences is written.
    (Mosquitto refuses control characters in topic names; test_watch_hostile.py feeds them
    to the fleet directly.)"""
    pub = Publisher(shared_broker.port)
    p = f"t2w{columns}"
    pub.send(f"{p}/n1[bold]/fan/status", "\x1b]0;PWNED\x07\x1b[2J\r\x07[/bold]", retain=True)
    pub.send(f"{p}/n1/fan[red]/anomaly", {"state": "\x1b[5mON\x1b[31m\x1b]0;PWNED2\x07"},
             retain=True)
    pub.close()
    out = run_in_pty(["--broker", f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{shared_broker.port}",
                      "--prefix", p], columns)
    assert b"Traceback" not in out and b"harken fleet" in out
    for seq in (b"\x1b]0;PWNED", b"\x1b[2J", b"\x1b[5m", b"\x1b[31m", b"\x07"):
        assert seq not in out, seq
    if columns > 100:
        assert b"?]0;PWNED?" in out and b"n1[bold]" in out and b"fan[red]" in out


def rss_and_time(args: list[str]) -> tuple[int, float, subprocess.CompletedProcess]:
    """Peak RSS (kB) and wall time of one `harken watch` run."""
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and
    # exec, so under a pytest worker that trained models it reads gigabytes
    code = ("import re, sys; from harken.agent.cli import main; rc = main(sys.argv[1:]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('maxrss', hwm, file=sys.stderr); sys.exit(rc)")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, "watch", *args], capture_output=True,
                         text=True, timeout=120)
    took = time.monotonic() - start
    rss = int(next(x.split()[1] for x in out.stderr.splitlines() if x.startswith("maxrss")))
    return rss, took, out


def test_thousands_of_retained_topics_keep_watch_bounded(shared_broker):
    """3000 retained scores (with 2 kB statuses): `--for 5` ends within a bound, the view
    keeps at most --max-machines and says how many it forgot, and the peak memory is
    bounded (a bound, not a speed test)."""
    p, n = "t3", 3000
    pub = Publisher(shared_broker.port)
    for i in range(n):
        pub.c.publish(f"{p}/n{i}/fan/score", json.dumps({**SCORE, "seq": i}), qos=0, retain=True)
        pub.c.publish(f"{p}/n{i}/fan/status", "x" * 2048, qos=0, retain=True)
    pub.send(f"{p}/last/fan/status", "online", retain=True)     # QoS 1: all before it stored
    pub.close()
    url = f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{shared_broker.port}"
    rss, took, out = rss_and_time(["--broker", url, "--prefix", p, "--for", "5",
                                   "--max-machines", "200"])
    assert out.returncode == 0, out.stderr
    assert took < 5 + 30, took
    assert rss < 250_000, rss                    # kB
    forgotten = re.search(r"(\d+) machine\(s\) forgotten beyond the limit of 200", out.stdout)
    assert forgotten and int(forgotten.group(1)) > 1000, out.stdout[-500:]
    assert sum(1 for line in out.stdout.splitlines() if " fan " in line) == 200


def test_two_watchers_on_one_host_do_not_kick_each_other_off(shared_broker):
    """Two watchers started alike on one host (no --client-id) each get every score; neither
    reports a disconnect. (They shared one default client id, and each saw about half.)"""
    p = "t4"
    a = Watcher(shared_broker.port, "--prefix", p, "--json", "--for", "8")
    b = Watcher(shared_broker.port, "--prefix", p, "--json", "--for", "8")
    pub = Publisher(shared_broker.port)
    try:
        pub.send(f"{p}/ready/fan/status", "online", retain=True)
        for w in (a, b):
            w.wait(seen(f"{p}/ready/fan/status"), what="subscribed")
        for i in range(20):
            pub.send(f"{p}/n1/fan/score", {**SCORE, "ts": time.time(), "seq": i})
        for w in (a, b):
            w.wait(lambda w: sum(r["kind"] == "score" for r in w.records()) == 20, timeout=20,
                   what="all 20 scores")
    finally:
        pub.close()
        assert a.finish() == 0 and b.finish() == 0
    for w in (a, b):
        assert not any("disconnected" in line or "took" in line for line in w.err), w.err


def test_a_takeover_of_the_session_is_shown_and_not_fought(shared_broker):
    """A second client with this watcher's id takes its session over: the watcher says so
    (from MQTT 5's reason, or from two connections closed within seconds: Mosquitto 2.0.11
    sends no reason) and backs off instead of taking it back every second."""
    w = Watcher(shared_broker.port, "--prefix", "t5", "--json", "--for", "6", "--client-id",
                "plant-t5")
    pub = Publisher(shared_broker.port)
    try:
        pub.send("t5/ready/fan/status", "online", retain=True)
        w.wait(seen("t5/ready/fan/status"), what="subscribed")
        intruder = Publisher(shared_broker.port, client_id="plant-t5", protocol=mqtt.MQTTv5)
        w.wait(w.stderr_has("this watcher's session"), timeout=15)
        # within the back-off the intruder connects again and stays: no fight
        end = time.monotonic() + 15
        while not intruder.c.is_connected() and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(2)
        assert intruder.c.is_connected()
        intruder.close()
    finally:
        pub.close()
        assert w.finish() == 0


def test_a_broker_that_goes_away_is_shown_and_the_watch_reconnects(tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    w = Watcher(broker.port, "--json", "--for", "25", "--client-id", "plant-t6")
    try:
        pub = Publisher(broker.port)
        pub.send("harken/ready/fan/status", "online", retain=True)
        pub.close()
        w.wait(seen("harken/ready/fan/status"), what="subscribed")
        broker.stop()
        w.wait(w.stderr_has(f"disconnected from 127.0.0.1:{broker.port}"), timeout=15)
        broker.start()
        w.wait(w.stderr_has(f"connected again to 127.0.0.1:{broker.port}"), timeout=40)
        pub = Publisher(broker.port)
        pub.send("harken/n1/fan/score", {**SCORE, "seq": 77})
        pub.close()
        w.wait(lambda w: any(r["kind"] == "score" and r["payload"]["seq"] == 77
                             for r in w.records()), what="a score after the reconnect")
    finally:
        w.proc.terminate()
        w.finish()
        broker.stop()


DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


@pytest.mark.skipif(not os.path.exists(DYNSEC), reason="Mosquitto's dynamic-security plugin "
                    "is not installed (Debian's mosquitto package has it)")
def test_a_refused_subscription_is_shown(tmp_path):
    """The broker lets this user subscribe to the JSON topics but not to Sparkplug's (an ACL
    of Mosquitto's dynamic-security plugin; a plain acl_file grants every subscription and
    filters delivery): the SUBACK refusal is said, naming the topic; the rest is watched."""
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "ds.json"), USER,
                    PASSWORD], check=True, capture_output=True)
    ds = json.loads((tmp_path / "ds.json").read_text())
    ds["roles"][0]["acls"].insert(0, {"acltype": "subscribePattern", "topic": "spBv1.0/#",
                                      "allow": False, "priority": 10})
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    broker = Broker(tmp_path, extra=f"plugin {DYNSEC}\nplugin_opt_config_file "
                    f"{tmp_path / 'ds.json'}\n")
    broker.start()
    try:
        w = Watcher(broker.port, "--json", "--for", "4", "--client-id", "w-acl")
        w.wait(w.stderr_has("refused the subscription to spBv1.0/harken/#"), timeout=15)
        assert w.finish() == 0
        assert not any("harken/#" in line and "refused" in line and "spBv1.0" not in line
                       for line in w.err)
    finally:
        broker.stop()


def test_an_oversized_message_is_not_delivered_to_the_watch(shared_broker):
    """A 1 MB retained score: watch asks the broker (MQTT 5 maximum packet size) not to send
    it more than it can use; the good one beside it is shown."""
    pub = Publisher(shared_broker.port)
    pub.send("t7/big/fan/score", {**SCORE, "pad": "x" * 1_000_000}, retain=True)
    pub.send("t7/good/fan/score", SCORE, retain=True)
    pub.close()
    w = Watcher(shared_broker.port, "--prefix", "t7", "--json", "--for", "3", "--client-id", "w-t7")
    assert w.finish() == 0
    assert [r["node"] for r in w.records()] == ["good"]


def test_a_reader_that_goes_away_ends_the_watch(shared_broker):
    """`harken watch --json | head -1`: when the reader closes the pipe, watch ends at once
    (exit 0, no traceback) instead of running on with a dead network thread."""
    pub = Publisher(shared_broker.port)
    for i in range(3):
        pub.send(f"t8/n{i}/fan/status", "online", retain=True)
    w = subprocess.Popen([*CLI, "--broker", f"mqtt://{USER}:{PASSWORD}@127.0.0.1:"
                          f"{shared_broker.port}", "--prefix", "t8", "--json", "--for", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         # buffered, as in a user's shell: PYTHONUNBUFFERED would hide the
                         # flush at exit into the closed pipe (exit 120)
                         env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    start = time.monotonic()
    assert w.stdout.readline()
    w.stdout.close()
    for i in range(5):
        pub.send("t8/n1/fan/score", {**SCORE, "seq": i})
    pub.close()
    rc = w.wait(30)
    assert time.monotonic() - start < 20
    assert rc == 0 and b"Traceback" not in w.stderr.read()


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server (a broker of MQTT "
                    "3.1.1 only) is not installed")
def test_a_broker_of_mqtt_3_1_1_only_is_watched_with_3_1_1(tmp_path):
    """nats-server refuses MQTT 5: watch says so once and watches with 3.1.1 (nats refuses
    the Sparkplug subscription too: '.' is no topic character there, and watch says that)."""
    port, client_port = free_port(), free_port()
    (tmp_path / "nats.conf").write_text(
        f'server_name: w\nlisten: 127.0.0.1:{client_port}\njetstream {{ store_dir: '
        f'"{tmp_path / "js"}" }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n')
    nats = subprocess.Popen(["nats-server", "-c", str(tmp_path / "nats.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        w = Watcher(port, "--json", "--for", "6", "--client-id", "nats-watch", user="")
        # one SUBSCRIBE holds both topics: its SUBACK (the refusal) means harken/# is on
        w.wait(w.stderr_has("refused the subscription to spBv1.0"), timeout=20)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nats-pub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("harken/n1/fan/score", json.dumps(SCORE), qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert w.finish() == 0, w.err
    finally:
        nats.terminate()
        nats.wait(10)
    assert any("speaks MQTT 3.1.1 only" in line for line in w.err), w.err
    assert [r["payload"]["seq"] for r in w.records()] == [1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_a_named_watcher_finds_its_session_again(shared_broker):
    """`--name` (or the terminal) makes the default client id: the same watcher started
    again gets what was published while it was away (MQTT 5 session expiry, 7 days)."""
    first = Watcher(shared_broker.port, "--prefix", "t9", "--json", "--for", "1", "--name",
                    "control-room")
    assert first.finish() == 0, first.err
    pub = Publisher(shared_broker.port)
    for i in range(3):
        pub.send("t9/n1/fan/score", {**SCORE, "seq": i})
    pub.close()
    again = Watcher(shared_broker.port, "--prefix", "t9", "--json", "--for", "3", "--name",
                    "control-room")
    assert again.finish() == 0, again.err
    assert [r["payload"]["seq"] for r in again.records()] == [0, 1, 2]


def table_rows(text: str) -> dict[tuple[str, str], str]:
    """The piped table's rows: (node, machine) -> the whole row."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1] and cells[1] != "node":
            rows[(cells[1], cells[2])] = line
    return rows


def spb_payload(**metrics) -> bytes:
    from harken.agent.sinks.sparkplug.payload import DataType, Payload, add_metric
    p = Payload(timestamp=int(time.time() * 1000), seq=0)
    for name, value in metrics.items():
        add_metric(p, name, DataType.Int64 if name == "bdSeq" else DataType.Float, value,
                   int(time.time() * 1000))
    return p.SerializeToString()


def test_only_a_machines_own_will_marks_it_offline(shared_broker):
    """Three ways anyone could mark a live node offline, each now applied to nothing more
    than it names (docs/watch.md): a retained ``<prefix>/n14/*/status`` = offline is the
    status of a machine called ``*``, not of every machine of n14; an NDEATH without bdSeq
    (Sparkplug B requires one) is counted malformed and leaves the node's devices online; the
    NDEATH of a Sparkplug edge node n16 leaves alone the JSON agents of a node of that name
    (their status is their own Last Will). The messages are queued in order for the
    watcher's persistent session, so that it sees the births before the deaths."""
    p, g = "t11", "g11"
    first = Watcher(shared_broker.port, "--prefix", p, "--sparkplug-group", g, "--json",
                    "--for", "1", "--name", "w11")
    assert first.finish() == 0, first.err                 # the session, subscribed
    pub = Publisher(shared_broker.port)
    for node in ("n14", "n16"):
        for machine in ("fan", "pump"):
            pub.send(f"{p}/{node}/{machine}/status", "online", retain=True)
            pub.send(f"{p}/{node}/{machine}/score", {**SCORE, "ts": time.time()})
    pub.send(f"{p}/n14/*/status", "offline", retain=True)
    pub.send(f"spBv1.0/{g}/NBIRTH/n15", spb_payload(bdSeq=3))
    pub.send(f"spBv1.0/{g}/DBIRTH/n15/fan", spb_payload(score=1.0))
    pub.send(f"spBv1.0/{g}/NDEATH/n15", spb_payload())                # no bdSeq
    pub.send(f"spBv1.0/{g}/NDEATH/n16", spb_payload(bdSeq=0))         # announced nothing here
    pub.close()
    w = Watcher(shared_broker.port, "--prefix", p, "--sparkplug-group", g, "--for", "3",
                "--name", "w11")
    assert w.finish() == 0, w.err
    out = "".join(w.out)
    rows = table_rows(out)
    for key in [("n14", "fan"), ("n14", "pump"), ("n16", "fan"), ("n16", "pump"),
                ("n15", "fan")]:
        assert key in rows and "online" in rows[key] and "offline" not in rows[key], (key, out)
    assert "offline" in rows[("n14", "*")], out
    assert "1 malformed message(s) skipped" in out, out


def test_an_agent_whose_clock_is_not_set_is_aged_by_arrival(shared_broker):
    """A score with ``"clock": "unsynced"`` (a Raspberry Pi before NTP) stamped in 1970:
    the table says "clock not set" and how long ago it arrived, not "20781 d ago"; a score of
    a synchronised agent is still aged by its ts."""
    pub = Publisher(shared_broker.port)
    pub.send("t10/pi/fan/score", {**SCORE, "ts": 1000.0, "clock": "unsynced"}, retain=True)
    pub.send("t10/ok/fan/score", {**SCORE, "ts": time.time() - 7200}, retain=True)
    pub.close()
    w = Watcher(shared_broker.port, "--prefix", "t10", "--for", "2")
    assert w.finish() == 0, w.err
    out = "".join(w.out)
    rows = table_rows(out)
    assert "clock not set" in rows[("pi", "fan")] and " s ago" in rows[("pi", "fan")], out
    assert " d ago" not in out, out
    assert "2.0 h ago" in rows[("ok", "fan")] and "clock" not in rows[("ok", "fan")], out
