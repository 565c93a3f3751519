"""The audit log: one JSON line per change an operator made (feedback, undo, maintenance,
a recalibrated threshold) and per command refused, in ``agent.state_dir/audit.jsonl``.

Append-only and synced line by line: a plant asks afterwards who silenced a machine or
taught it that a sound was normal, and the answer must survive a power cut. The operator
named is the one the command claims (the local user, or the ``operator`` of an MQTT
command): who may send commands at all is the broker's decision (docs/mqtt.md "Commands").
A torn last line (a kill mid-write) is skipped when read. The log moves to ``audit.jsonl.1``
past ``MAX_BYTES`` (one older file is kept), so it is bounded on an SD card.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

AUDIT_NAME = "audit.jsonl"
MAX_BYTES = 8 << 20


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def append(state_dir: Path, record: dict) -> dict:
    """Write ``record`` (with its time, ``at``) as one line, synced; returns it as written."""
    path = Path(state_dir) / AUDIT_NAME
    line = {"at": now_iso(), **record}
    data = (json.dumps(line, allow_nan=False, default=str) + "\n").encode()
    try:
        if path.stat().st_size + len(data) > MAX_BYTES:
            path.replace(path.with_name(AUDIT_NAME + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def check_writable(state_dir: Path) -> None:
    """Raise the OSError that ``append`` would, before a change is made: a change whose
    audit line cannot be written (a full disk, a folder where the log goes) is refused
    whole, never done and then reported as refused."""
    path = Path(state_dir) / AUDIT_NAME
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    os.close(fd)
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


def find_command(state_dir: Path, machine: str, command_id: str) -> dict | None:
    """The line that recorded command ``command_id`` for ``machine`` (done or refused), if
    any: a command is carried out once, whatever the number of times it is sent."""
    for line in reversed(read(state_dir, machine)):
        if line.get("command_id") == command_id and line.get("outcome") == "ok":
            return line
    return None
