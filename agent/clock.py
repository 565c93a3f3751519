"""Whether the wall clock can be trusted (docs/agent.md "Time you can trust").

A Raspberry Pi has no real-time clock: it boots at the time it last saved (or 1970) and
jumps when NTP sets it, possibly minutes after the agent started scoring. Records stamped
before that carry ``"clock": "unsynced"``; the jump itself is reported once.

Whether the clock is synchronised is the kernel's own flag, read with ``adjtimex(2)`` with
no mode bits set (a read that needs no privilege): every NTP client (systemd-timesyncd,
chrony, ntpd) clears STA_UNSYNC when it has set the clock, and the kernel raises it again
when the estimated error passes 16 s, returning TIME_ERROR. A seccomp filter that denies
the call (systemd's ``ProtectClock=yes`` denies even reads, systemd issue 26413) falls back
to ``/run/systemd/timesync/synchronized``, which systemd-timesyncd touches on sync; where
neither tells, the state is unknown and records are not flagged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harken.common.errors import ConfigError

TIME_ERROR = 5                         # adjtimex's return value: clock not synchronised
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
JUMP_S = 2.0                           # a step of the wall clock against the monotonic one

_libc = None


def _adjtimex() -> int | None:
    """adjtimex(2)'s clock state (0-4 synchronised, 5 TIME_ERROR), None if unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buf = ctypes.create_string_buffer(512)     # struct timex (208 bytes on 64-bit), modes=0
        state = _libc.adjtimex(buf)
    except (OSError, AttributeError):               # not Linux, no libc symbol
        return None
    return None if state < 0 else int(state)


def kernel_clock_synced() -> bool | None:
    """True/False from the kernel, else from systemd-timesyncd's flag file, else None."""
    state = _adjtimex()
    if state is not None:
        return state != TIME_ERROR
    if TIMESYNCD_FLAG.exists():
        return True
    return None


class ClockWatch:
    """The clock's state for the records, and its jumps. ``synced`` is injectable (tests,
    a site whose clock comes from GPS without the kernel's flag); ``wall`` and ``mono``
    are the clocks compared to tell a jump."""

    def __init__(self, synced: Callable[[], bool | None] = kernel_clock_synced,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic, jump_s: float = JUMP_S) -> None:
        self._synced, self._wall, self._mono, self.jump_s = synced, wall, mono, jump_s
        self._offset = wall() - mono()
        self._lock = threading.Lock()
        self.state = self.read()

    def read(self) -> str:
        """``synced``, ``unsynced`` or ``unknown`` now."""
        try:
            s = self._synced()
        except OSError:
            s = None
        return "unknown" if s is None else "synced" if s else "unsynced"

    def unsynced(self) -> bool:
        """Whether records stamped now must say ``"clock": "unsynced"`` (read before the
        stamp: a sync in between only flags a record that was already right)."""
        self.state = self.read()
        return self.state == "unsynced"

    def poll(self) -> float | None:
        """The wall clock's step since the last poll, in seconds, when it stepped by more
        than ``jump_s`` (NTP setting a Pi's clock at boot); else None."""
        with self._lock:
            offset = self._wall() - self._mono()
            step, self._offset = offset - self._offset, offset
        return step if abs(step) > self.jump_s else None


def fixed(state: bool | None) -> Callable[[], bool | None]:
    """A detector that always says ``state`` (tests; HARKEN_CLOCK below)."""
    return lambda: state


def from_environment() -> Callable[[], bool | None]:
    """The detector ``harken run`` uses: the kernel's, unless ``HARKEN_CLOCK`` says
    ``synced``/``unsynced`` (a clock set by GPS or PTP without the kernel flag)."""
    value = os.environ.get("HARKEN_CLOCK", "").strip().lower()
    if value in ("synced", "unsynced"):
        return fixed(value == "synced")
    if value not in ("", "kernel"):
        raise ConfigError(f"HARKEN_CLOCK={value!r}: expected 'kernel' (the default), "
                          f"'synced' or 'unsynced'")
    return kernel_clock_synced
