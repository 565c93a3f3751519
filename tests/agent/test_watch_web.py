"""`harken watch --web`: the page's data (history buckets, the feed's snapshot and deltas),
its server (headers, loopback-only Host, bounds) and what a hostile publisher can do to it,
against a real Mosquitto and a real watcher (docs/watch.md "The web page"). The rendered page
in a real browser is tests/agent/test_watch_web_browser.py."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from harken.agent.plant.fleet import Fleet
from harken.agent.plant.history import BUCKETS, History
from harken.agent.plant.state import machine_state
from harken.agent.plant.watch import web_address
from harken.agent.plant.web import server as web_server
from harken.agent.plant.web.feed import Feed, encode, row_id
from harken.common.errors import UsageError
from harken.testkit.mosquitto import PASSWORD, USER

STATIC = Path(__file__).resolve().parents[2] / "agent" / "plant" / "web" / "static"


def buckets(points: dict) -> list[tuple]:
    """The columns of ``History.points`` as (t, score, threshold, flags) per bucket."""
    return list(zip(points["t"], points["score"], points["threshold"], points["flags"]))


def score(ts: float, value: float, seq: int = 0, threshold: float = 2.0, anomaly: bool = False,
          **extra) -> bytes:
    return json.dumps({"ts": ts, "seq": seq, "score": value, "threshold": threshold,
                       "anomaly": anomaly, "status": "ok", "interval_s": 1.0, **extra}).encode()


# -- the hour of buckets ------------------------------------------------------------------

def test_a_bucket_keeps_the_peak_and_the_hour_stays_a_fixed_size():
    h = History(3600)
    now = 100_000.0
    for i in range(5000):                       # far more scores than buckets
        h.add(now - 3000 + i * 0.5, 1.0, 2.0, False, False, now)
    h.add(now - 100.0, 9.0, 2.0, True, False, now)          # one peak in a bucket of 1.0s
    h.add(now - 99.5, 1.0, 2.0, False, False, now)
    pts = buckets(h.points(now=now))
    assert len(pts) <= BUCKETS
    peak = [p for p in pts if p[0] <= now - 100.0 < p[0] + h.step]
    assert peak and peak[0][1] == 9.0 and peak[0][3] & 1     # the peak and its anomaly flag
    assert all(p[0] < q[0] for p, q in zip(pts, pts[1:]))    # oldest first
    assert h.t.nbytes + h.score.nbytes + h.threshold.nbytes + h.flags.nbytes < 10_000


def test_a_score_from_the_future_is_placed_at_its_arrival_and_an_old_one_is_not_kept():
    """A ts a year ahead (a wrong clock, a hostile publisher) would push the machine's later
    scores out of the window if it were believed."""
    h = History(3600)
    now = 100_000.0
    assert h.add(now + 365 * 86400, 5.0, 2.0, False, False, now) == math.floor(now / h.step) * h.step
    assert h.add(now - 2 * 3600, 1.0, 2.0, False, False, now) is None
    assert h.add(now + 1.0, 1.5, 2.0, False, False, now + 1.0) is not None
    assert h.points(now=now + 1.0)["score"] == [5.0]   # one bucket, its peak


def test_late_history_lands_in_its_bucket_but_does_not_replace_the_newest_score():
    fleet = Fleet("harken", history_s=3600)
    fleet.handle("harken/n1/fan/score", score(1000.0, 1.0, seq=10), now=1000.5)
    fleet.handle("harken/n1/fan/score", score(900.0, 7.0, seq=5, replayed=True), now=1001.0)
    row = fleet.agents[("n1", "fan")]
    assert row.seq == 10 and row.score == 1.0
    assert 7.0 in row.history.points(now=1001.0)["score"]


# -- the state word ---------------------------------------------------------------------------

def test_each_state_from_what_the_broker_said():
    fleet = Fleet("harken", history_s=3600)
    now = 10_000.0
    fleet.handle("harken/n/ok/score", score(now, 1.0), now=now)
    fleet.handle("harken/n/bad/score", score(now, 5.0, anomaly=True), now=now)
    fleet.handle("harken/n/bad/anomaly", b'{"state": "ON"}', now=now)
    fleet.handle("harken/n/gone/score", score(now, 5.0), now=now)
    fleet.handle("harken/n/gone/anomaly", b'{"state": "ON"}', now=now)
    fleet.handle("harken/n/gone/status", b"offline", now=now)
    fleet.handle("harken/n/fix/score", score(now, 5.0), now=now)
    fleet.handle("harken/n/fix/anomaly", b'{"state": "ON"}', now=now)
    fleet.handle("harken/n/fix/maintenance", b'{"state": "ON"}', now=now)
    fleet.handle("harken/n/new/status", b"online", now=now)
    fleet.handle("harken/n/stuck/score", score(now - 600, 1.0), now=now - 600)
    states = {m: machine_state(r, now) for (_, m), r in fleet.agents.items()}
    assert states == {"ok": "ok", "bad": "anomaly", "gone": "offline", "fix": "maintenance",
                      "new": "waiting", "stuck": "stale"}


# -- the feed ---------------------------------------------------------------------------------

def _feed(fleet: Fleet) -> Feed:
    return Feed(fleet, threading.Lock(), lambda: [("connected", "green")], 3600.0)


def test_a_delta_carries_only_what_changed_and_says_what_was_forgotten():
    fleet = Fleet("harken", history_s=3600, max_agents=3)
    feed = _feed(fleet)
    now = time.time()
    for m in ("a", "b", "c"):
        fleet.handle(f"harken/n/{m}/score", score(now, 1.0), now=now)
    first = feed.delta(now)
    assert sorted(r["machine"] for r in first["rows"]) == ["a", "b", "c"]
    assert feed.delta(now)["rows"] == []                   # nothing changed
    fleet.handle("harken/n/b/score", score(now + 1, 3.0, seq=1), now=now + 1)
    fleet.handle("harken/n/d/score", score(now + 1, 1.0), now=now + 1)   # "a" is forgotten
    d = feed.delta(now + 1)
    assert sorted(r["id"] for r in d["rows"]) == [row_id(("n", "b")), row_id(("n", "d"))]
    assert d["gone"] == [row_id(("n", "a"))]
    b = next(r for r in d["rows"] if r["id"] == row_id(("n", "b")))
    assert b["points"]["score"][-1] == 3.0 and len(b["points"]["t"]) <= 2   # from the last sent
    # only what changed: the score, seq and times, not the names, model or state
    assert {"score", "seq", "last_seen", "heard"} <= set(b) and "node" not in b and "state" not in b
    # the clock alone makes a machine stale: sent without a message
    later = feed.delta(now + 10 * 60)
    assert {r["id"]: r["state"] for r in later["rows"]} == \
        {row_id(("n", m)): "stale" for m in "bcd"}


def test_a_second_page_gets_the_rows_changed_since_the_last_delta_whole_and_none_without_pages():
    """Its snapshot is newer than what the first page has: a field that changed and changed
    back between the last delta and the snapshot must still reach it."""
    fleet = Fleet("harken", history_s=3600)
    feed = _feed(fleet)
    now = time.time()
    fleet.handle("harken/n/fan/score", score(now, 1.0), now=now)
    first: list[bytes] = []
    assert feed.tick(now) == 0 and feed.last == {}          # no page: nothing made
    feed.subscribe(lambda data: first.append(data) or True)
    fleet.handle("harken/n/fan/anomaly", b'{"state": "ON"}', now=now)
    second: list[bytes] = []
    feed.subscribe(lambda data: second.append(data) or True)
    fleet.handle("harken/n/fan/anomaly", b'{"state": "OFF"}', now=now)
    assert feed.tick(now) == 2
    row = json.loads(second[-1][6:])["rows"][0]
    assert row["state"] == "ok" and row["anomaly"] == "OFF" and row["node"] == "n"  # whole
    fleet.handle("harken/n/fan/score", score(now + 1, 2.0, seq=1), now=now + 1)
    feed.tick(now + 1)
    assert "node" not in json.loads(second[-1][6:])["rows"][0]                       # diff again


def test_a_new_page_gets_the_whole_hour():
    fleet = Fleet("harken", history_s=3600)
    now = time.time()
    for i in range(100):
        fleet.handle("harken/n/fan/score", score(now - 1000 + i * 10, float(i), seq=i), now=now)
    snap = _feed(fleet).snapshot(now)
    assert snap["type"] == "snapshot" and len(snap["rows"]) == 1
    points = snap["rows"][0]["points"]
    assert len(points["t"]) == 100 and points["score"][-1] == 99.0


def test_an_event_is_one_ascii_line_whatever_the_names_hold():
    """A name with a newline, a carriage return, U+2028 or a NUL must not end the event early
    (the page would read half a message, or a message the publisher wrote)."""
    fleet = Fleet("harken", history_s=3600)
    hostile = "x\n\ndata: {\"type\":\"snapshot\"}\r\u2028\u0000<script>"
    fleet.handle(f"harken/n/{hostile}/status", hostile.encode(), now=time.time())
    data = encode(_feed(fleet).snapshot())
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    assert data.count(b"\n") == 2 and b"\r" not in data and data.isascii()
    row = json.loads(data[6:])["rows"][0]
    assert "\n" not in row["machine"] and "\u2028" not in row["machine"]
    assert row["machine"].endswith("<script>")             # shown as text, not dropped


# -- the page's own files -----------------------------------------------------------------

def test_the_page_puts_broker_text_into_the_dom_only_as_text():
    """The Content-Security-Policy is the second line of defence; the first is that the page
    never parses a string as HTML or code."""
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "srcdoc", "DOMParser"):
        assert sink not in js, sink
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "<style" not in html and not re.search(r"\son\w+=", html)
    assert re.search(r'<script src="app.js"', html)
    # relative URLs only: the page works behind a reverse proxy's sub-path
    assert 'EventSource("events")' in js and 'href="app.css"' in html


@pytest.mark.skipif(shutil.which("node") is None, reason="no node here (scripts/setup installs it)")
def test_the_pages_script_parses():
    """A syntax error would leave the page at "connecting…" with nothing but "Uncaught"."""
    out = subprocess.run(["node", "--check", str(STATIC / "app.js")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("text,expected", [
    ("8080", ("127.0.0.1", 8080)), ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("[::1]:8080", ("::1", 8080)), (":8080", ("127.0.0.1", 8080)), ("0", ("127.0.0.1", 0)),
    ("plant-pc.local:80", ("plant-pc.local", 80))])
def test_the_web_address_is_read(text, expected):
    assert web_address(text) == expected


@pytest.mark.parametrize("text", ["", "http", "70000", "-1", "host:", "a b:80", "::1:8080",
                                  "1.2.3.4:8080:9", "x" * 300 + ":80"])
def test_a_web_address_that_names_nowhere_is_refused(text):
    with pytest.raises(UsageError, match="--web"):
        web_address(text)


# -- the server ---------------------------------------------------------------------------

@pytest.fixture
def served():
    fleet = Fleet("harken", history_s=3600)
    now = time.time()
    fleet.handle("harken/n1/fan/score", score(now, 1.0), now=now)
    feed = _feed(fleet)
    srv = web_server.start("127.0.0.1", 0, feed)
    yield srv
    web_server.stop(srv)


def get(srv, path: str, host: str | None = None, method: str = "GET"):
    c = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    c.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        c.putheader("Host", host)
    c.endheaders()
    r = c.getresponse()
    body = r.read() if path != "/events" or r.status != 200 else None
    return r, body, c


def raw_answer(srv, request: bytes) -> bytes:
    """The head of the server's answer to ``request`` sent as raw bytes."""
    import socket
    with socket.create_connection(srv.server_address[:2], timeout=30) as s:
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return head


def test_every_answer_carries_a_strict_content_security_policy(served):
    for path in ("/", "/app.js", "/app.css", "/fleet.json", "/nothing"):
        r, body, c = get(served, path)
        csp = r.getheader("Content-Security-Policy")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.getheader("X-Content-Type-Options") == "nosniff"
        c.close()
    r, body, _ = get(served, "/fleet.json")
    assert r.status == 200 and json.loads(body)["rows"][0]["machine"] == "fan"


def test_it_is_read_only_and_answers_only_loopback_names_when_bound_to_loopback(served):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 would
    otherwise read the fleet."""
    assert get(served, "/fleet.json", host="evil.example:8080")[0].status == 421
    assert get(served, "/fleet.json", host=f"localhost:{served.server_address[1]}")[0].status == 200
    assert get(served, "/fleet.json", host="[::1]:80")[0].status == 200
    assert get(served, "/", method="POST")[0].status == 405
    assert get(served, "/", method="DELETE")[0].status == 405


def test_pages_beyond_the_bound_are_refused_and_a_page_that_does_not_read_is_dropped(
        monkeypatch):
    monkeypatch.setattr(web_server, "MAX_PAGES", 2)
    fleet = Fleet("harken", history_s=3600)
    feed = _feed(fleet)
    srv = web_server.start("127.0.0.1", 0, feed)
    try:
        readers = []
        for _ in range(2):
            r, _, c = get(srv, "/events")
            assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
            assert r.readline() == b"retry: 3000\n"
            readers.append((r, c))
        deadline = time.monotonic() + 30
        while len(feed.pages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(feed.pages) == 2
        assert get(srv, "/events")[0].status == 503
        # neither page reads: once the sockets' buffers are full (the kernel takes what a
        # page does not read until then, as fast as the server writes it: a slow machine's
        # server thread kept up with QUEUE + 5 ticks), their queues fill, and the feed lets
        # them go. Each tick carries 100 machines' rows, so that the buffers fill in a few
        # hundred ticks; a page is never dropped before its queue is full.
        ticks, deadline = 0, time.monotonic() + 120
        while feed.pages and time.monotonic() < deadline:
            for m in range(100):
                fleet.handle(f"harken/n/m{m}/score", score(time.time(), float(ticks), seq=ticks))
            feed.tick()
            ticks += 1
        assert feed.pages == [] and ticks >= web_server.QUEUE
        for r, c in readers:
            c.close()
    finally:
        web_server.stop(srv)


def test_a_connection_that_never_sends_its_request_is_closed(monkeypatch):
    monkeypatch.setattr(web_server.Handler, "timeout", 1.0)
    srv = web_server.start("127.0.0.1", 0, _feed(Fleet("harken")))
    try:
        import socket
        s = socket.create_connection(srv.server_address[:2], timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\n")                   # and never the rest
        while s.recv(4096):                                # until the server closes it
            pass
        s.close()
    finally:
        web_server.stop(srv)


# -- a real watcher against a hostile broker ------------------------------------------------

def _watcher(broker, tmp_path, *extra):
    env = {**os.environ, "HARKEN_MQTT_PASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "harken.agent.cli", "watch", "--broker",
                             f"mqtt://{USER}@127.0.0.1:{broker.port}", "--web", "127.0.0.1:0",
                             "--name", "web-test", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"web page at (http://\S+/)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()   # keep draining
            return proc, found.group(1)
    raise AssertionError(f"the watcher said no URL (exit {proc.wait()})")


def _fleet_json(url: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(url + "fleet.json", timeout=30) as r:
        return json.loads(r.read())


def _until(fn, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def _rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))


def _publisher(broker):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile")
    c.username_pw_set(USER, PASSWORD)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'


def test_hostile_retained_messages_leave_the_page_answering_and_the_names_as_text(broker,
                                                                                    tmp_path):
    c = _publisher(broker)
    retained = [
        (f"harken/n1/{HOSTILE_NAME}/status", b"<script>window.pwned=2</script>"),
        ("harken/n1/fan/score", b"[" * 100_000 + b"]" * 100_000),
        ("harken/n1/fan/anomaly", b"\xff\xfe\x00"),
        ("harken/n1/deep/score", b'{"ts": 1e400, "score": NaN}'),
        ("harken/n1/big/score", b"x" * 300_000),
        ("harken/n1/nan/score", json.dumps({"ts": time.time(), "score": 1.0, "threshold": 2.0,
                                            "model": "</script><script>alert(1)</script>",
                                            "backend": {"a": [1] * 10}}).encode()),
        ("harken/n1/ok/score", score(time.time(), 1.0)),
    ]
    for topic, payload in retained:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(30)
    proc, url = _watcher(broker, tmp_path)
    try:
        fleet = _until(lambda: (f := _fleet_json(url)) and
                       {r["machine"] for r in f["rows"]} >= {HOSTILE_NAME, "nan", "ok"} and f)
        rows = {r["machine"]: r for r in fleet["rows"]}
        assert rows[HOSTILE_NAME]["status"].startswith("<script>")   # kept as text
        assert rows["nan"]["model"] == "</script><script>alert(1)</script>"
        assert rows["nan"]["backend"] is None                       # not a string: not shown
        assert fleet["malformed"] >= 3
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0                                 # SIGTERM: a clean stop
        c.loop_stop()


def test_a_flood_of_a_thousand_fake_nodes_keeps_the_watcher_bounded(broker, tmp_path):
    """Each fake node a machine with a score history: the watcher keeps at most
    --max-machines, and a second thousand replaces the first without growing it."""
    proc, url = _watcher(broker, tmp_path, "--max-machines", "1000")
    c = _publisher(broker)
    try:
        _until(lambda: _fleet_json(url) is not None)
        base = _rss_kb(proc.pid)
        now = time.time()
        for wave in range(2):
            for i in range(1000):
                for k in range(3):
                    c.publish(f"harken/fake{wave}-{i}/m/score",
                              score(now - 600 + k * 120, float(k), seq=k), qos=0)
            last = f"fake{wave}-999"
            c.publish(f"harken/{last}/m/status", b"online", qos=1).wait_for_publish(60)
            _until(lambda: any(r["node"] == last and r["status"] == "online"
                               for r in _fleet_json(url)["rows"]), 120)
            if wave == 0:
                first = _rss_kb(proc.pid)
        fleet = _fleet_json(url)
        assert len(fleet["rows"]) == 1000 and fleet["forgotten"] >= 1000
        assert {r["node"].split("-")[0] for r in fleet["rows"]} == {"fake1"}
        second = _rss_kb(proc.pid)
        # a thousand machines with their hours: tens of MB at most, and not again for the
        # second thousand (they replace the first)
        assert first - base < 80_000, (base, first)
        assert second - first < 30_000, (first, second)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        c.loop_stop()


def test_the_feed_of_a_thousand_machines_stays_within_a_bounded_memory():
    tracemalloc.start()
    try:
        fleet = Fleet("harken", history_s=3600, max_agents=1000)
        feed = _feed(fleet)
        feed.subscribe(lambda data: True)          # a page open: the feed keeps its baseline
        now = time.time()
        for i in range(2000):
            for k in range(12):
                fleet.handle(f"harken/n{i}/m/score", score(now - 3000 + k * 250, 1.0, seq=k),
                             now=now)
            if i % 500 == 0:
                feed.tick(now)
        feed.tick(now)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(fleet.agents) == 1000 and len(feed.last) == 1000 and len(feed.sent) == 1000
    assert used < 25 * 2 ** 20, used


def test_a_port_already_taken_is_one_line_and_exit_2(broker):
    import socket
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        out = subprocess.run([sys.executable, "-m", "harken.agent.cli", "watch", "--broker",
                              f"mqtt://{USER}@127.0.0.1:{broker.port}", "--name", "taken",
                              "--web", f"127.0.0.1:{taken.getsockname()[1]}"],
                             env={**os.environ, "HARKEN_MQTT_PASSWORD": PASSWORD},
                             capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
    assert out.returncode == 2, out.stderr
    assert "cannot listen there" in out.stderr and "Traceback" not in out.stderr


# -- the hostile tester's findings (docs/reliability.md "The plant view") --------------------

def test_a_score_beyond_a_float32_neither_kills_the_feed_nor_reaches_the_page_as_infinity():
    """1e39 was stored as float32 inf in the hour and made the JSON encoder raise: the
    watcher died, and again at every start while the message was retained."""
    fleet = Fleet("harken", history_s=3600)
    feed = _feed(fleet)
    feed.subscribe(lambda data: True)
    now = time.time()
    fleet.handle("harken/n/fan/score", score(now, 1e39, threshold=5e38), now=now)
    fleet.handle("harken/n/hot/score", score(now, 1.7e308, threshold=1.0), now=now)
    fleet.handle("harken/n/lvl/score", score(now, 1.0, rms_dbfs=1e300), now=now)
    assert feed.tick(now) == 1
    rows = {r["machine"]: r for r in json.loads(encode(feed.snapshot(now))[6:])["rows"]}
    assert rows["fan"]["points"]["score"] == [1e39] and rows["fan"]["score"] == 1e39
    assert rows["hot"]["points"]["score"] == [pytest.approx(1.7e308)]
    assert rows["lvl"]["level_dbfs"] is None                  # no level of 1e300 dBFS


def test_a_late_score_reaches_a_page_already_open():
    """Replayed scores from ten minutes ago (an agent's outbox after a broken link) land in
    older buckets than the one last sent: an open page must get them, anomaly and all."""
    fleet = Fleet("harken", history_s=3600)
    feed = _feed(fleet)
    got: list[bytes] = []
    feed.subscribe(lambda data: got.append(data) or True)
    now = time.time()
    fleet.handle("harken/n/fan/score", score(now, 1.0, seq=10), now=now)
    feed.tick(now)
    for i in range(5):
        fleet.handle("harken/n/fan/score", score(now - 600 + i, 50.0, seq=i, anomaly=True,
                                                 replayed=True), now=now + 1)
    feed.tick(now + 1)
    points = json.loads(got[-1][6:])["rows"][0]["points"]
    late = [b for b in buckets(points) if b[0] < now - 500]
    assert late and late[0][1] == 50.0 and late[0][3] & 1


def test_a_clock_running_ahead_does_not_keep_a_silent_agent_ok():
    fleet = Fleet("harken", history_s=3600)
    now = 10_000.0
    fleet.handle("harken/n/fan/status", b"online", now=now)
    fleet.handle("harken/n/fan/score", score(now + 3600, 1.0), now=now)
    row = fleet.agents[("n", "fan")]
    assert machine_state(row, now + 30) == "ok"
    assert machine_state(row, now + 600) == "stale"


def test_an_anomaly_state_in_lower_case_is_an_anomaly():
    fleet = Fleet("harken", history_s=3600)
    fleet.handle("harken/n/fan/score", score(100.0, 5.0, anomaly=True), now=100.0)
    fleet.handle("harken/n/fan/anomaly", b'{"state": "on"}', now=100.0)
    assert machine_state(fleet.agents[("n", "fan")], 100.0) == "anomaly"


def _resolves(name: str) -> bool:
    """Whether ``name`` has an IPv4 address here (what the server's bind looks up)."""
    try:
        return bool(socket.getaddrinfo(name, 0, socket.AF_INET, socket.SOCK_STREAM))
    except socket.gaierror:
        return False


@pytest.mark.parametrize("host", ["127.1", "0x7f000001", "localhost"])
def test_a_loopback_socket_answers_loopback_names_only_however_its_address_was_written(host):
    if host == "localhost" and not _resolves(host):
        pytest.skip("this system's resolver does not know the name 'localhost' (no /etc/hosts "
                    "entry, as in the arm64 check's chroot): nothing to bind")
    srv = web_server.start(host, 0, _feed(Fleet("harken")))
    try:
        assert srv.loopback_only
        assert get(srv, "/fleet.json", host="evil.example")[0].status == 421
    finally:
        web_server.stop(srv)


@pytest.mark.parametrize("host", ["localhost:80@evil.com", "[::1]evil.com", "", "a b"])
def test_a_host_header_that_is_no_host_is_refused(served, host):
    assert get(served, "/fleet.json", host=host)[0].status == 421


def test_the_servers_own_error_pages_carry_the_policy_too(served):
    # more than http.server's 100 headers: its own 431 page
    head = raw_answer(served, b"GET / HTTP/1.1\r\n" +
                      b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n")
    assert head.startswith(b"HTTP/1.") and b" 431 " in head.split(b"\r\n")[0]
    assert b"Content-Security-Policy: default-src 'none'" in head


def test_a_client_that_dribbles_its_headers_is_closed_at_the_deadline(monkeypatch):
    """Slowloris: a header line every 0.2 s keeps a per-read timeout of 1 s from ever firing;
    the request's head has one deadline."""
    import socket
    monkeypatch.setattr(web_server, "REQUEST_TIMEOUT_S", 1.0)
    srv = web_server.start("127.0.0.1", 0, _feed(Fleet("harken")))
    try:
        s = socket.create_connection(srv.server_address[:2], timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 20 and not closed:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.2)               # the pace of the dribble, not a wait
                closed = s.recv(4096) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
        s.close()
        assert closed and time.monotonic() - start < 10
    finally:
        web_server.stop(srv)


def test_the_stream_is_gzip_where_the_browser_takes_it(served):
    import zlib
    c = http.client.HTTPConnection(*served.server_address[:2], timeout=30)
    c.request("GET", "/events", headers={"Accept-Encoding": "gzip, deflate"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Encoding") == "gzip"
    unpack = zlib.decompressobj(31)
    text = b""
    while b"\n\ndata: " not in text and not text.endswith(b"}\n\n"):
        text += unpack.decompress(r.read1(65536))
    assert text.startswith(b"retry: 3000\n\ndata: {")
    c.close()


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no chromium here (Debian's chromium package; scripts/setup installs it)")
def test_a_page_refused_with_503_comes_back_by_itself_and_draws_every_score():
    """A browser's event stream gives up for good on an answer that is not 200 (too many
    pages; a proxy's 502 while the watcher restarts): the page must open a new one itself.
    And what it draws: a lone score is a dash, never nothing; negative scores stay inside."""
    from harken.testkit.browser import Browser
    fleet = Fleet("harken", history_s=3600)
    now = time.time()
    fleet.handle("harken/n/lone/score", score(now - 900, 80.0, anomaly=True), now=now)
    for i in range(30):
        fleet.handle("harken/n/neg/score", score(now - 300 + 10 * i, -10.0 + i / 10,
                                                 threshold=-3.0), now=now)
    for t in (now - 3000, now - 2990, now - 2980, now - 20, now - 10, now):   # two events
        fleet.handle("harken/n/gap/score", score(t, 9.0, anomaly=True), now=now)
    fleet.handle("harken/n/huge/score", score(now - 60, 1e308, threshold=-1e308), now=now)
    fleet.handle("harken/n/huge/score", score(now, 1.0, threshold=2.0), now=now)
    feed = _feed(fleet)
    srv = web_server.start("127.0.0.1", 0, feed)
    srv.pages = threading.BoundedSemaphore(1)
    srv.pages.acquire()                                 # every page slot taken
    try:
        with Browser(width=800, height=900) as b:
            b.open(f"http://127.0.0.1:{srv.server_address[1]}/")
            b.wait_for("document.getElementById('link').dataset.state === 'lost'", 30)
            srv.pages.release()                         # a slot frees up
            b.wait_for("document.querySelectorAll('article.card').length === 4", 60)
            lines = b.evaluate("""Object.fromEntries([...document.querySelectorAll('article.card')]
                .map(c => [c.dataset.machine, [...c.querySelectorAll('polyline.score-line')]
                .map(l => l.getAttribute('points'))]))""")
            gap = b.evaluate("""(() => { const c = [...document.querySelectorAll('article.card')]
                .find(c => c.dataset.machine === 'gap'); return [c.querySelectorAll('.event-marker')
                .length, c.querySelector('.since').textContent]; })()""")
            # the one 503 this test made the page meet, and nothing else
            assert [e for e in b.console_errors() if "503" not in e] == []
    finally:
        web_server.stop(srv)
    lone = [pt for line in lines["lone"] for pt in line.split()]
    assert len(lone) == 2                               # one bucket: a dash across its 10 s
    ys = [float(pt.split(",")[1]) for line in lines["neg"] for pt in line.split()]
    assert ys and all(0 <= y <= 100 for y in ys)
    # an absence of 49 minutes parts two events: two markers, and "since" the second
    assert gap[0] == 2 and "anomalous since" in gap[1]
    huge = [float(v) for line in lines["huge"] for pt in line.split() for v in pt.split(",")]
    assert huge and all(math.isfinite(v) for v in huge)      # no NaN from 1e308 - (-1e308)


# -- round 2 -----------------------------------------------------------------------------------

def test_pages_opening_at_once_share_one_snapshot_and_a_tick_makes_a_new_one(monkeypatch):
    """Thirty-two pages reconnecting after a blip made thirty-two snapshots of the whole
    fleet under its lock: the watcher stood still for half a minute."""
    fleet = Fleet("harken", history_s=3600)
    feed = _feed(fleet)
    now = time.time()
    fleet.handle("harken/n/fan/score", score(now, 1.0), now=now)
    made = []
    real = feed.snapshot
    monkeypatch.setattr(feed, "snapshot", lambda *a: made.append(1) or real(*a))
    firsts = [feed.subscribe(lambda data: True) for _ in range(5)]
    assert len(made) == 1 and all(f is firsts[0] for f in firsts)
    fleet.handle("harken/n/fan/score", score(now + 1, 2.0, seq=1), now=now + 1)
    feed.tick(now + 1)
    later = feed.subscribe(lambda data: True)
    assert len(made) == 2 and json.loads(later[6:])["rows"][0]["score"] == 2.0


def test_a_machine_forgotten_and_back_within_a_tick_is_sent_whole_with_its_new_hour():
    fleet = Fleet("harken", history_s=3600, max_agents=1)
    feed = _feed(fleet)
    got: list[bytes] = []
    feed.subscribe(lambda data: got.append(data) or True)
    now = time.time()
    for i in range(5):
        fleet.handle("harken/n/a/score", score(now - 300 + 60 * i, 9.0, anomaly=True), now=now)
    feed.tick(now)
    fleet.handle("harken/n/b/score", score(now, 1.0), now=now)        # a is forgotten ...
    fleet.handle("harken/n/a/score", score(now, 1.0, seq=7), now=now)  # ... and back
    feed.tick(now)
    row = json.loads(got[-1][6:])["rows"][0]
    assert row["reset"] is True and row["node"] == "n" and row["points"]["score"] == [1.0]


def test_an_absurd_report_interval_still_goes_stale_within_ten_minutes():
    fleet = Fleet("harken", history_s=3600)
    now = 10_000.0
    fleet.handle("harken/n/fan/score", score(now, 1.0, interval_s=1e9), now=now)
    assert machine_state(fleet.agents[("n", "fan")], now + 601) == "stale"


def test_a_seq_beyond_what_javascript_holds_is_sent_as_text():
    fleet = Fleet("harken", history_s=3600)
    fleet.handle("harken/n/fan/score", score(time.time(), 1.0, seq=2 ** 63 - 1))
    assert _feed(fleet).snapshot()["rows"][0]["seq"] == str(2 ** 63 - 1)


def test_one_address_cannot_hold_more_than_a_few_heads_arriving():
    """A slowloris that reconnects each time it is closed would otherwise keep every slot."""
    import socket
    srv = web_server.start("127.0.0.1", 0, _feed(Fleet("harken")))
    slow = []
    try:
        for _ in range(web_server.MAX_HEADS_PER_ADDRESS):
            s = socket.create_connection(srv.server_address[:2], timeout=30)
            s.sendall(b"GET / HTTP/1.1\r\n")
            slow.append(s)
        deadline = time.monotonic() + 30
        while sum(srv.heads.values()) < web_server.MAX_HEADS_PER_ADDRESS:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        extra = socket.create_connection(srv.server_address[:2], timeout=30)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert extra.recv(100) == b""                    # closed unanswered
        extra.close()
        for s in slow:
            s.close()
        _until(lambda: not srv.heads, 30)
        assert get(srv, "/")[0].status == 200            # the address may ask again
    finally:
        web_server.stop(srv)


def test_gzip_refused_with_q_0_is_not_sent_and_fleet_json_is_compressed_where_taken(served):
    import zlib
    assert web_server.accepts_gzip("gzip, deflate, br") and web_server.accepts_gzip("*")
    assert not web_server.accepts_gzip("gzip;q=0") and not web_server.accepts_gzip("identity")
    c = http.client.HTTPConnection(*served.server_address[:2], timeout=30)
    c.request("GET", "/fleet.json", headers={"Accept-Encoding": "gzip"})
    r = c.getresponse()
    assert r.getheader("Content-Encoding") == "gzip"
    assert json.loads(zlib.decompress(r.read(), 31))["rows"][0]["machine"] == "fan"
    c.request("GET", "/fleet.json", headers={"Accept-Encoding": "gzip;q=0"})
    r = c.getresponse()
    assert r.getheader("Content-Encoding") is None and json.loads(r.read())["rows"]
    c.close()


def test_a_request_line_that_is_no_http_gets_headers_and_the_policy(served):
    head = raw_answer(served, b"GARBAGE\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b"Content-Security-Policy" in head
