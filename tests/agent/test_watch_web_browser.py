"""`harken watch --web` end to end, as a plant's operator sees it: a real Mosquitto, real
`harken run` agents (one alarming, one killed so that its Last Will marks it offline), the
watcher serving its page, and headless Chromium reading the rendered page
(docs/watch.md "The web page"). What is asserted comes from the DOM the page's script
built, not from the server's JSON: the cards' states, the anomaly marker on the chart, a new
score arriving over server-sent events while the page stays open, and no console error (a
Content-Security-Policy violation would show there)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from harken.testkit.browser import Browser, find_chromium
from harken.testkit.files import write_agent_config
from harken.testkit.mosquitto import PASSWORD, USER, start_agent
from tests.agent.test_watch_live import Watcher

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium here (Debian's chromium package; "
                                "scripts/setup installs it)")

URL = re.compile(r"web page at (http://\S+)")


def agent(folder, bundle, port, wav, node: str, machine: str, threshold: float):
    """A realtime agent scoring ``wav`` over and over in 2-s intervals, publishing to the
    test broker. A killed agent's socket is closed by its kernel, and Mosquitto sends the
    Last Will at once; the keepalive of 5 s (the least allowed) bounds the wait where the
    close is not seen (the will goes after 1.5 keepalives without a packet)."""
    folder.mkdir()
    (folder / "secret").write_text(PASSWORD + "\n")
    (folder / "secret").chmod(0o600)
    return write_agent_config(
        folder / "agent.toml",
        agent={"node": node, "machine": machine, "state_dir": folder / "state"},
        model={"bundle": bundle, "artifact": "onnx-int8"},
        audio={"source": "file", "file": wav, "realtime": True, "loop": True},
        decision={"interval_s": 2, "threshold": threshold, "k_on": 1, "n": 1},
        output={"stdout": False},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "username": USER,
              "password_file": "secret", "keepalive": 5})


def card(node: str, machine: str, what: str) -> str:
    """A JavaScript expression: ``what`` of the card of node/machine (``c``), or null while
    there is none. Attribute values are compared in script, not put into a selector."""
    return (f"(() => {{ const c = [...document.querySelectorAll('article.card')].find(c => "
            f"c.dataset.node === {node!r} && c.dataset.machine === {machine!r}); "
            f"return c ? ({what}) : null; }})()")


def test_the_web_page_shows_the_fleet_live_in_a_real_browser(tmp_path, broker, ae_bundle, wav):
    """Three agents and the page: the alarming machine's card says ``anomaly`` with an event
    marker on its chart, the killed agent's card says ``offline`` (its Last Will, sent by
    the broker when the connection ended without a DISCONNECT), the third one put in
    maintenance says ``maintenance``, the alarming machine's
    sequence number grows on the open page without a reload, the page logs no error, a
    screenshot is taken, and at a phone's width the page fits the screen."""
    hot = start_agent(agent(tmp_path / "hot", ae_bundle, broker.port, wav, "press-line",
                            "fan", threshold=0))
    doomed = start_agent(agent(tmp_path / "doomed", ae_bundle, broker.port, wav, "yard",
                               "pump", threshold=1e9))
    serviced_cfg = agent(tmp_path / "serviced", ae_bundle, broker.port, wav, "dock",
                         "compressor", threshold=1e9)
    serviced = start_agent(serviced_cfg)
    w = Watcher(broker.port, "--web", "127.0.0.1:0", "--name", "e2e-web", "--json")
    browser = None
    try:
        w.wait(w.stderr_has("web page at"), timeout=30, what="the page's URL")
        url = next(m.group(1) for line in w.err if (m := URL.search(line)))
        browser = Browser(width=1280, height=900)
        browser.open(url)
        browser.evaluate("window.e2eMark = 1")         # gone if the page reloads
        browser.wait_for("document.getElementById('link').dataset.state === 'live'", 30)

        # both agents heard from, the doomed one while it is still alive
        browser.wait_for(card("yard", "pump", "c.dataset.seq !== '' && c.dataset.state"), 60)
        assert browser.evaluate(card("yard", "pump", "c.dataset.state")) == "ok"
        browser.wait_for(card("press-line", "fan", "c.dataset.state === 'anomaly'"), 60)
        browser.wait_for(card("press-line", "fan",
                              "c.querySelectorAll('svg .event-marker').length"), 30)

        # maintenance through the running agent (its control socket); it goes on scoring
        browser.wait_for(card("dock", "compressor", "c.dataset.seq !== ''"), 60)
        subprocess.run([sys.executable, "-m", "harken.agent.cli", "maintenance", "--config",
                        str(serviced_cfg), "on", "--operator", "e2e"], check=True,
                       capture_output=True, timeout=60)
        browser.wait_for(card("dock", "compressor", "c.dataset.state === 'maintenance'"), 30)

        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        browser.wait_for(card("yard", "pump", "c.dataset.state === 'offline'"), 45)
        assert browser.evaluate(card("yard", "pump",
                                     "c.querySelector('.state').textContent")) == "offline"

        # a new score arrives while the page stays open: the sequence grows, no reload
        seq = int(browser.evaluate(card("press-line", "fan", "c.dataset.seq")))
        browser.wait_for(card("press-line", "fan", f"Number(c.dataset.seq) > {seq}"), 20)
        assert browser.evaluate("window.e2eMark") == 1
        assert browser.evaluate(card("press-line", "fan", "c.dataset.state")) == "anomaly"
        assert browser.evaluate(card("press-line", "fan",
                                     "c.querySelectorAll('svg .event-marker').length")) >= 1
        assert browser.evaluate(card("yard", "pump",
                                     "c.querySelectorAll('svg .event-marker').length")) == 0
        # what needs a look comes first: the anomaly, then the offline machine
        assert browser.evaluate("[...document.querySelectorAll('article.card')].map("
                                "c => c.dataset.state)") == ["anomaly", "offline",
                                                              "maintenance"]
        summary = browser.evaluate("document.getElementById('summary').textContent")
        for count in ("3 machines", "1 anomaly", "1 offline", "1 maintenance"):
            assert count in summary, summary

        # not even the /favicon.ico every browser asks for (answered 204)
        assert browser.console_errors() == []
        shot = browser.screenshot(tmp_path / "page.png")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, len(data)

        # a small phone's width: one card a row and nothing wider than the screen (the
        # summary line of counts once could not wrap and made the whole page scroll sideways)
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=320,
                     height=640, deviceScaleFactor=1, mobile=False)
        browser.wait_for("window.innerWidth === 320", 10)
        assert browser.evaluate("document.documentElement.scrollWidth") <= 320
        lefts = browser.evaluate("[...document.querySelectorAll('article.card')].map("
                                 "c => c.getBoundingClientRect().left)")
        assert len(set(lefts)) == 1, lefts
    finally:
        if browser is not None:
            browser.close()
        for proc in (hot, serviced):
            proc.terminate()
            proc.wait(30)
        w.proc.terminate()
        w.finish(30)
    assert "Traceback" not in "".join(w.err), w.err
