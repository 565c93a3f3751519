"""Maintenance mode (docs/agent.md "Maintenance"): a machine that a fitter has opened up
keeps scoring and publishing, its scores marked ``maintenance``, but raises no anomaly
event, until an operator turns it off or its ``--for`` runs out.

The state is one small versioned record per machine, ``state_dir/maintenance-M.json``,
written atomically (beside, synced, renamed), so a power cut leaves the old state or the new
one and a restarted daemon comes back in maintenance if it was. The end of a ``--for`` is an
epoch time in the file: it is noticed at the first interval after it (the runner then says
so to the sinks and the audit log, ``via: "expiry"``), also across a restart. A damaged file
is set aside (renamed ``.damaged-<UTC time>``, one warning naming it) and the machine starts
out of maintenance: a machine that alarms by mistake is heard, a silenced one is not. Damaged
means: not a regular file (a folder, say), not the record, or values out of range
(``until`` more than 30 days after ``since``, ``since`` more than a day ahead of this
device's clock): a hand-edited ``until`` of 1e300 must not silence a machine for ever. A
read that only looks (``harken maintenance status`` without a daemon) says so and renames
nothing; the daemon, or the next change, sets the file aside.

A change checks first that its audit line can be written (``audit.check_writable``): if not,
it is refused and nothing is changed. An audit line that fails after the change is made is
a warning in the reply, never a refusal of what was done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from harken.common.atomic import set_aside, write_atomic
from harken.common.errors import UsageError
from harken.common.records import Finite, NewerRecord, Record, explain, record_version
from harken.agent.operator import audit

_log = logging.getLogger(__name__)

VERSION = 1
MIN_FOR_S = 1.0
MAX_FOR_S = 30 * 86400.0           # a month: a maintenance longer than that is forgotten
AHEAD_S = 86400.0                  # a ``since`` this far past the clock: a damaged file
MAX_EPOCH = 1e11                   # about the year 5138 (agent/operator/commands.py)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)


class MaintenanceRecord(Record):
    """``maintenance-M.json``: on or off, since when, until when (None: until turned off),
    by whom and how the last change came."""
    version: Literal[1] = VERSION
    on: bool
    since: Finite
    until: Finite | None = None
    by: str | None = Field(None, max_length=128)
    via: str | None = Field(None, max_length=32)

    @model_validator(mode="after")
    def _in_range(self):
        if not 0 <= self.since < MAX_EPOCH:
            raise ValueError(f"since = {self.since!r}: expected epoch seconds from 1970 on")
        if self.until is not None and not 0 <= self.until <= self.since + MAX_FOR_S + 1:
            raise ValueError(f"until = {self.until!r}: expected at most {MAX_FOR_S / 86400:g} "
                             f"days after since ({self.since:.3f})")
        return self


def file_name(machine: str) -> str:
    return f"maintenance-{machine}.json"


def parse_duration(value: str | int | float, what: str = "--for") -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` or plain seconds (text or a number) as seconds, from
    1 s to 30 days; anything else a UsageError naming ``what`` and what is allowed."""
    allowed = (f"expected a duration like 90s, 30m, 2h or 1d, or seconds, from "
               f"{MIN_FOR_S:g} s to {MAX_FOR_S / 86400:g} days")
    if isinstance(value, bool):
        raise UsageError(f"{what} = {value!r}: {allowed}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise UsageError(f"{what} = {value[:40]!r}: {allowed}")
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    else:
        raise UsageError(f"{what}: {allowed}, got {type(value).__name__}")
    if not math.isfinite(seconds) or not MIN_FOR_S <= seconds <= MAX_FOR_S:
        raise UsageError(f"{what} = {value!r}: {allowed}")
    return seconds


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


class Maintenance:
    """One machine's maintenance state, read from its file at start and written at each
    change. The caller holds the state folder (the daemon, or a CLI that took the lock);
    one lock here keeps the audio thread's question and a command's change apart."""

    def __init__(self, state_dir: Path, machine: str, read_only: bool = False) -> None:
        """``read_only``: only look (no state lock held): a damaged file is said, not set
        aside."""
        self.state_dir, self.machine = Path(state_dir), machine
        self.path = self.state_dir / file_name(machine)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._damaged = False
        self.record: MaintenanceRecord | None = self._load()

    def _read(self) -> tuple[MaintenanceRecord | None, str | None]:
        """The record (None: no file) or why the file is damaged."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"cannot be looked at: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            return None, f"cannot be read: {exc.strerror or exc}"
        try:
            data = json.loads(raw)
            record_version(data, VERSION)
            record = MaintenanceRecord.model_validate(data)
        except NewerRecord as exc:
            return None, str(exc)
        except ValidationError as exc:
            err = exc.errors()[0]
            return None, (err["msg"] if not err["loc"] else explain(exc)).replace(
                "Value error, ", "")
        except ValueError as exc:              # not JSON, not an object, a bad version
            return None, str(exc).splitlines()[0]
        if record.since > time.time() + AHEAD_S:
            return None, (f"since = {record.since!r} is more than a day ahead of this "
                          f"device's clock")
        return record, None

    def _load(self) -> MaintenanceRecord | None:
        record, why = self._read()
        if why is None:
            return record
        self._damaged = True
        if self.read_only:
            where = "left in place (only read; the agent or the next change sets it aside)"
        else:
            where = self._set_aside()
        _log.warning(f"{self.path}: damaged maintenance state ({why}); {where}; machine "
                     f"{self.machine} is out of maintenance")
        return None

    def _set_aside(self) -> str:
        try:
            aside = set_aside(self.path, "damaged")
        except OSError as exc:
            return f"left in place ({exc.strerror or exc})"
        self._damaged = False
        return f"set aside as {aside.name}"

    def active(self, now: float | None = None) -> bool:
        """In maintenance at ``now`` (epoch seconds): on, and its ``until`` not yet reached."""
        r = self.record
        if r is None or not r.on:
            return False
        return r.until is None or (time.time() if now is None else now) < r.until

    def expired(self, now: float | None = None) -> bool:
        """On in the file, but its ``until`` has passed: the runner ends it (``expire``)."""
        r = self.record
        return r is not None and r.on and r.until is not None and \
            (time.time() if now is None else now) >= r.until

    def state(self, now: float | None = None) -> dict:
        """What ``harken maintenance status`` shows: {machine, on, until, by, since, via}
        (times as epoch seconds; ``on`` false once ``until`` is past)."""
        r = self.record
        if r is None:
            return {"machine": self.machine, "on": False, "until": None, "by": None,
                    "since": None, "via": None}
        return {"machine": self.machine, "on": self.active(now), "until": r.until, "by": r.by,
                "since": r.since, "via": r.via}

    def set(self, on: bool, for_s: float | None, operator: str | None, via: str,
            command_id: str | None = None) -> dict:
        """Turn maintenance on (for ``for_s`` seconds, None: until turned off) or off; the
        file written, the change in the audit log; returns the new ``state()``. A change
        that changes nothing (off when off, on without ``for_s`` when already on until
        turned off) writes no file and no synced line: its reply is the state with
        ``"unchanged": true``, its audit line unsynced and rate-limited like a refusal's,
        so a flood of them neither wears the card nor rotates the operators' lines away
        (docs/agent.md "Maintenance")."""
        if for_s is not None:
            if not on:
                raise UsageError("maintenance off takes no duration ('for' is for on)")
            for_s = parse_duration(for_s, "for")
        with self._lock:
            now = time.time()
            if self._unchanged(on, for_s, now):
                return self._say_unchanged(on, operator, via, command_id, now)
            record = MaintenanceRecord(on=on, since=round(now, 3),
                                       until=None if for_s is None else round(now + for_s, 3),
                                       by=operator, via=via)
            audit.check_writable(self.state_dir)  # an OSError here: refused, nothing changed
            self._write(record)                  # an OSError here: nothing changed
            try:
                audit.append(self.state_dir, {
                    "machine": self.machine, "action": "maintenance", "outcome": "ok",
                    "operator": operator, "via": via, "command_id": command_id, "on": on,
                    "until": record.until, "until_utc": _iso(record.until)})
            except OSError as exc:               # done all the same: said, not undone
                _log.warning(f"the audit log could not take a maintenance change of "
                             f"{self.machine} ({exc.strerror or exc})")
                return {**self.state(now), "warning": f"done, but the audit log could not "
                        f"take its line ({exc.strerror or exc})"}
            return self.state(now)

    def _unchanged(self, on: bool, for_s: float | None, now: float) -> bool:
        r = self.record
        if self._damaged or (r is not None and r.on and r.until is not None and
                             now >= r.until):
            return False                     # a file to set aside, an expiry to write
        if not on:
            return r is None or not r.on
        return for_s is None and r is not None and r.on and r.until is None

    def _say_unchanged(self, on: bool, operator: str | None, via: str,
                       command_id: str | None, now: float) -> dict:
        try:
            audit.append_refused(self.state_dir, {
                "machine": self.machine, "action": "maintenance", "outcome": "unchanged",
                "operator": operator, "via": via, "command_id": command_id, "on": on})
        except OSError as exc:               # nothing was to be done: said, not refused
            _log.warning(f"the audit log could not take an unchanged maintenance command of "
                         f"{self.machine} ({exc.strerror or exc})")
        return {**self.state(now), "unchanged": True}

    def expire(self) -> dict | None:
        """The ``until`` of an ``on`` has passed: the file says off, the audit log says the
        expiry; returns the new state, or None if it was not due (already ended)."""
        with self._lock:
            if not self.expired():
                return None
            was = self.record
            record = MaintenanceRecord(on=False, since=round(time.time(), 3), by=was.by,
                                       via="expiry")
            try:
                self._write(record)
            except OSError as exc:            # a full disk: ended in memory all the same
                _log.warning(f"{self.path}: the end of maintenance could not be written "
                             f"({exc.strerror or exc})")
                self.record = record
            try:
                audit.append(self.state_dir, {
                    "machine": self.machine, "action": "maintenance", "outcome": "ok",
                    "operator": was.by, "via": "expiry", "command_id": None, "on": False,
                    "until": was.until, "until_utc": _iso(was.until)})
            except OSError as exc:
                _log.warning(f"the audit log could not take the end of maintenance of "
                             f"{self.machine} ({exc.strerror or exc})")
            return self.state()

    def _write(self, record: MaintenanceRecord) -> None:
        if self._damaged or (self.path.exists() and not self.path.is_file()):
            self._damaged = True
            _log.warning(f"{self.path}: damaged maintenance state; {self._set_aside()}")
        write_atomic(self.path, json.dumps(record.model_dump(), indent=1) + "\n")
        self.record = record
