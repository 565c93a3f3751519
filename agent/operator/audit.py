"""The audit log: one JSON line per change an operator made (feedback, undo, maintenance,
a recalibrated threshold) and per command refused, in ``agent.state_dir/audit.jsonl``.

Append-only and synced line by line: a plant asks afterwards who silenced a machine or
taught it that a sound was normal, and the answer must survive a power cut. The operator
named is the one the command claims (the local user, or the ``operator`` of an MQTT
command): who may send commands at all is the broker's decision (docs/mqtt.md "Commands").
A torn last line (a kill mid-write) is skipped when read, and the next line starts on a
line of its own. The log moves to ``audit.jsonl.1`` past ``MAX_BYTES`` (one older file is
kept), so it is bounded on an SD card.

A refused command is logged too, but unsynced and at most ``REFUSED_PER_MINUTE`` lines a
minute (per process): junk from any client the broker lets publish must neither wear the
card with a sync per line nor rotate the operators' own lines away; how many were left out
goes into the next line written (``refused_left_out``). Which commands were carried out
(replay protection) is kept apart from this log (agent/operator/commands.py), so a flood
cannot make it forget one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from pathlib import Path

_log = logging.getLogger(__name__)

AUDIT_NAME = "audit.jsonl"
MAX_BYTES = 8 << 20
REFUSED_PER_MINUTE = 60

_limit_lock = threading.Lock()
_window: dict[str, list[float]] = {}     # state folder -> [window start, lines in it]
_left_out: dict[str, int] = {}           # state folder -> refusals not written since


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def append(state_dir: Path, record: dict, sync: bool = True) -> dict:
    """Write ``record`` (with its time, ``at``) as one line, synced unless ``sync`` is
    false; returns it as written. A torn last line (a kill mid-write) is ended first, so
    this line stays whole and readable."""
    path = Path(state_dir) / AUDIT_NAME
    key = str(Path(state_dir))
    with _limit_lock:
        left_out = _left_out.pop(key, 0)
    line = {"at": now_iso(), **record}
    if left_out:
        line["refused_left_out"] = left_out
    data = (json.dumps(line, allow_nan=False, default=str) + "\n").encode()
    try:
        try:
            if path.stat().st_size + len(data) > MAX_BYTES:
                path.replace(path.with_name(AUDIT_NAME + ".1"))
        except FileNotFoundError:
            pass
        fd = _open(path)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if left_out:                          # not written: said with the next line
            with _limit_lock:
                _left_out[key] = _left_out.get(key, 0) + left_out
        raise
    return line


def append_refused(state_dir: Path, record: dict) -> dict | None:
    """A refused command's line: unsynced, and at most ``REFUSED_PER_MINUTE`` a minute
    (module docstring); None when it was left out (counted for the next line)."""
    key = str(Path(state_dir))
    now = time.monotonic()
    with _limit_lock:
        window = _window.setdefault(key, [now, 0])
        if now - window[0] >= 60.0:
            window[:] = [now, 0]
        if window[1] >= REFUSED_PER_MINUTE:
            first = key not in _left_out
            _left_out[key] = _left_out.get(key, 0) + 1
            if first:
                _log.warning(f"{Path(state_dir) / AUDIT_NAME}: over {REFUSED_PER_MINUTE} "
                             f"refused commands a minute; the rest are counted, not logged "
                             f"one by one")
            return None
        window[1] += 1
    return append(state_dir, record, sync=False)


def check_writable(state_dir: Path) -> None:
    """Raise the OSError that ``append`` would, before a change is made: a change whose
    audit line cannot be written (a full disk, a folder where the log goes) is refused
    whole, never done and then reported as refused."""
    path = Path(state_dir) / AUDIT_NAME
    os.close(_open(path))
    st = os.statvfs(state_dir)
    if st.f_bavail * st.f_frsize < 64 * 1024:
        raise OSError(28, "No space left on device", str(path))


def read(state_dir: Path, machine: str | None = None) -> list[dict]:
    """Every line of the log (the older file first), those of ``machine`` if given; lines
    that are not whole JSON objects (a torn write) are skipped."""
    out: list[dict] = []
    for path in (Path(state_dir) / (AUDIT_NAME + ".1"), Path(state_dir) / AUDIT_NAME):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and (machine is None or line.get("machine") == machine):
                out.append(line)
    return out


def find_command(state_dir: Path, machine: str, command_id: str,
                 tail_bytes: int | None = None) -> dict | None:
    """The line that recorded command ``command_id`` for ``machine`` as carried out, if the
    log still holds it; ``tail_bytes``: looked for only in that much of the end of the
    current file (a bounded read: agent/operator/commands.py ``carried_out`` asks it only
    for the instant between a change and the line of its id)."""
    if tail_bytes is None:
        lines = read(state_dir, machine)
    else:
        path = Path(state_dir) / AUDIT_NAME
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        lines = []
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("machine") == machine:
                lines.append(line)
    for line in reversed(lines):
        if line.get("command_id") == command_id and line.get("outcome") == "ok":
            return line
    return None
