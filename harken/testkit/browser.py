"""Headless Chromium driven over the DevTools protocol, for the web page's tests and its
screenshot (docs/watch.md "The web page").

The protocol goes over ``--remote-debugging-pipe`` (JSON messages ending in a NUL byte, on
the browser's file descriptors 3 and 4): no port to find, no websocket library. Playwright
or Selenium would drive it too, but Playwright's wheel carries its own Node driver and
expects its own browser build, and Selenium needs a chromedriver of the browser's exact
version; Debian's ``chromium`` package alone is what the tests can count on, and these few
commands (open a page, evaluate a script, take a screenshot) are all they use.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser's path, or None when none is installed (scripts/setup installs Debian's)."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser said no, went away, or did not answer in time."""


class Browser:
    """One headless Chromium with one page. ``with Browser() as b: b.open(url)``."""

    def __init__(self, width: int = 1280, height: int = 900, binary: str | None = None) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError("no Chromium here (Debian: apt install chromium; scripts/setup "
                               "does it)")
        self.profile = tempfile.mkdtemp(prefix="harken-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4
        def fds() -> None:
            # above 10 first: either pipe end may itself be fd 3 or 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next = 0
        self._answers: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        # the browser's own messages (a CSP violation, a failed load) come in the Log domain
        self.call("Log.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                        del self.events[:-1000]
                    self._cond.notify_all()

    def call(self, method: str, session: bool = False, timeout: float = 60.0, **params) -> dict:
        """Send one command and wait for its answer's ``result``."""
        with self._cond:
            self._next += 1
            n = self._next
        msg = {"id": n, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        with self._cond:
            while n not in self._answers:
                if self._closed:
                    raise BrowserError(f"the browser exited during {method}")
                if not self._cond.wait(max(end - time.monotonic(), 0)) and \
                        time.monotonic() >= end:
                    raise BrowserError(f"no answer to {method} within {timeout:g} s")
            answer = self._answers.pop(n)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def open(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        with self._cond:
            seen = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired", after=seen)

    def wait_event(self, method: str, after: int = 0, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if e.get("method") == method:
                        return e
                if self._closed or not self._cond.wait(max(end - time.monotonic(), 0)) and \
                        time.monotonic() >= end:
                    raise BrowserError(f"no {method} within {timeout:g} s")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (returned by value)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}"
                               f" {result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.2):
        """Evaluate until the value is truthy; that value, or BrowserError at timeout with
        the last value seen."""
        end = time.monotonic() + timeout
        value = None
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(poll)
        raise BrowserError(f"not true within {timeout:g} s: {expression} (last: {value!r})")

    def console_errors(self) -> list[str]:
        """Exceptions, console errors and the browser's own error entries for the page (a
        Content-Security-Policy violation, a resource that failed to load)."""
        with self._cond:
            events = list(self.events)
        out = []
        for e in events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(str(e["params"]["exceptionDetails"].get("text")))
            elif e.get("method") == "Runtime.consoleAPICalled" and \
                    e["params"].get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", "")))
                                    for a in e["params"].get("args", [])))
            elif e.get("method") == "Log.entryAdded" and \
                    e["params"]["entry"].get("level") == "error":
                entry = e["params"]["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
                           .rstrip())
        return out

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (all of it with ``full_page``)."""
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                              "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if not self._closed:
                self.call("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
