"""The systemd notify protocol (sd_notify), written out with the stdlib: one datagram per
message to $NOTIFY_SOCKET. No libsystemd binding is needed on the device for four words.

READY=1 once the bundle is loaded and audio flows; WATCHDOG=1 only while audio frames
advance on every input that is not reported lost, and on at least one (a wedged capture
stops the pings and systemd restarts the service; one lost input of several is reported and
the others go on); STATUS= lines
for `systemctl status`; STOPPING=1 on shutdown. Without $NOTIFY_SOCKET every call is a
no-op, so the same code runs outside systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence


class Notifier:
    def __init__(self, environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        # ping at half the watchdog period, as sd_watchdog_enabled(3) advises
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0
        self._last_progress: list[int | None] = []

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)     # a full notify queue must never stall the audio loop
                s.sendto(message.encode(), self.address)
        except OSError:            # systemd gone, queue full, socket unwritable: never fatal
            pass

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def progress(self, samples: int | Sequence[int | None]) -> None:
        """Ping the watchdog when due, but only if ``samples`` (audio consumed so far; one
        count per input, None for an input whose loss was reported) has advanced since the
        last ping on every input still there, and at least one is."""
        if self.watchdog_s is None:
            return
        counts = [samples] if isinstance(samples, int) else list(samples)
        last = self._last_progress or [-1] * len(counts)
        if len(last) != len(counts) or all(c is None for c in counts) or any(
                c is not None and c <= (before if before is not None else -1)
                for c, before in zip(counts, last)):
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self.send("WATCHDOG=1")
            self._last_ping, self._last_progress = now, counts


# -- the unit file ------------------------------------------------------------------------

def systemd_quote(word: str, what: str = "path") -> str:
    """``word`` as one argument of a systemd command line (systemd.service(5) "Command
    lines"): quoted when it holds a space, quote, backslash or ``;``, with ``\\`` and ``"``
    escaped inside the quotes, ``%`` doubled (else a specifier) and ``$`` doubled (else an
    environment variable). Control characters (a newline would start a new unit line) are
    refused: systemd has no way to carry them that a reader of the unit would see."""
    from harken.common.errors import UsageError
    bad = sorted({c for c in word if ord(c) < 0x20 or ord(c) == 0x7f})
    if bad:
        raise UsageError(f"{what} {word!r}: contains control character(s) "
                         f"{', '.join(repr(c) for c in bad)}; a unit file cannot hold them")
    if not word:
        raise UsageError(f"{what}: empty")
    text = word.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def unit_text(template: str, exec_start: str, config: str, cwd: str | None = None) -> str:
    """The packaged unit ``template`` with ExecStart running ``exec_start run --config
    config``; both made absolute (the service's working directory is /var/lib/harken, so a
    path relative to where the command was typed would name another file) and quoted."""
    import os

    from harken.common.errors import UsageError
    for option, value in (("--exec", exec_start), ("--config", config)):
        if not value.strip():        # '' joined to the folder would name the folder itself
            raise UsageError(f"{option} {value!r}: empty; give the path of the "
                             f"{'harken command' if option == '--exec' else 'agent config'}")
    base = cwd or os.getcwd()
    exe = systemd_quote(os.path.join(base, exec_start), "--exec")
    cfg = systemd_quote(os.path.normpath(os.path.join(base, config)), "--config")
    lines = [f"ExecStart={exe} run --config {cfg}" if ln.startswith("ExecStart=") else ln
             for ln in template.splitlines()]
    return "\n".join(lines) + "\n"
