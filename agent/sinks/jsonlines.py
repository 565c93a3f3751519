"""The embedded default sink: one JSON line per report interval (the score payload of
docs/mqtt.md, docs/schemas/score.schema.json, plus health) and one per anomaly event, on
stdout and/or a file.

The file never takes the agent down (docs/reliability.md "One agent per state, sinks and
stopping"): a line is built whole and written in one call; a failed or short write (a full
disk, EIO) is cut back to the last complete line, the lines are held (up to
``PENDING_MAX``, then the oldest are dropped and counted) and written again after a back-off
of 1 s doubling to 60 s. The failure is said once (``failure``, which the runner turns into
a ``sink_failed`` status for the other sinks) and counted in the stats record.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TextIO


from harken.common.settings import PathText, Seconds

from harken.common.errors import ConfigError
from harken.agent.decision.records import IntervalResult, StatusEvent
from harken.agent.sinks.base import Sink, SinkSettings, register


# machines on different inputs write from their own threads to one stdout (or one file):
# a line is written whole under this lock, never interleaved with another's
_LINE_LOCK = threading.Lock()
PENDING_MAX = 10_000            # lines held for a failing file (a few MB), then the oldest go
BACKOFF_S = (1.0, 60.0)         # first retry of a failing file, and the longest wait

_log = logging.getLogger(__name__)


class OutputSection(SinkSettings):
    """``[output]``: where the JSON lines go, and how often the health record comes."""
    stdout: bool = True
    file: PathText | None = None      # also append JSON lines here
    stats_s: Seconds(1, 3600) = 60.0  # health record every this many seconds


class LineFile:
    """An append-only file of whole lines that a full or failing disk cannot tear.

    Each batch is written with ``os.write`` on an O_APPEND descriptor; if a write fails
    part way the file is truncated back to where the batch began, and if even that fails
    the next batch starts on a new line. The file is reopened when its path no longer names
    the open file (moved away by logrotate, its folder removed)."""

    def __init__(self, path: Path, pending_max: int = PENDING_MAX,
                 clock=time.monotonic) -> None:
        self.path, self.clock = Path(path), clock
        self.pending: deque[bytes] = deque()
        self.pending_max = pending_max
        self.failed: str | None = None      # why the last write failed; None while it works
        self.errors = 0                     # failed write attempts
        self.dropped = 0                    # lines lost for good (the held ones overflowed)
        self._torn = False                  # a failed write may have left half a line
        self._retry_at = 0.0
        self._backoff = BACKOFF_S[0]
        self._fd = self._open()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_RDWR, 0o644)
        except PermissionError:                      # write-only: the last byte is unreadable
            self._torn = True
            return os.open(self.path, flags | os.O_WRONLY, 0o644)

    def _reopen_if_moved(self) -> None:
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same = False
        if not same:
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def write(self, line: bytes, force: bool = False) -> None:
        """Append one whole line (ending in a newline); never raises OSError. While the
        file fails, lines are held and tried again once the back-off has passed."""
        self.pending.append(line)
        if len(self.pending) > self.pending_max:
            self.pending.popleft()
            self.dropped += 1
        if self.failed is not None and not force and self.clock() < self._retry_at:
            return
        self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        data, end = b"".join(self.pending), None
        try:
            self._reopen_if_moved()
            end = os.fstat(self._fd).st_size
            if self._torn and end and not self._ends_with_newline(end):
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._fail(exc, end)
            return
        self.pending.clear()
        self._torn = False
        if self.failed is not None:
            _log.info(f"output.file {self.path}: writable again ({self.errors} failed "
                      f"write(s), {self.dropped} line(s) dropped)")
        self.failed, self._backoff = None, BACKOFF_S[0]

    def _ends_with_newline(self, end: int) -> bool:
        try:
            return os.pread(self._fd, 1, end - 1) == b"\n"
        except OSError:
            return False

    def _fail(self, exc: OSError, end: int | None) -> None:
        self.errors += 1
        if end is not None:
            try:
                os.ftruncate(self._fd, end)          # back to the last complete line
            except OSError:
                self._torn = True
        else:
            self._torn = True
        why = exc.strerror or str(exc)
        if self.failed is None:
            _log.warning(f"output.file {self.path}: cannot write ({why}); lines are held "
                         f"and tried again with back-off, stdout and MQTT go on")
        self.failed = why
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_S[1])

    def close(self) -> None:
        """One last try for the held lines, then the descriptor goes."""
        if self.pending:
            self._flush()
        try:
            os.close(self._fd)
        except OSError:
            pass


@register
class JsonLinesSink(Sink):
    name = "jsonlines"
    table = "output"
    Settings = OutputSection

    @classmethod
    def enabled(cls, config) -> bool:
        return True            # the embedded default: stdout and/or output.file

    @classmethod
    def from_config(cls, config) -> JsonLinesSink:
        out = config.output
        try:
            return cls(out.stdout, config.path(out.file) if out.file else None,
                       node=config.agent.node, machine=config.agent.machine)
        except OSError as exc:
            raise ConfigError(f"{config.source_file}: key 'output.file' = {out.file!r}: cannot "
                              f"open it for appending ({exc.strerror or exc})") from None

    def __init__(self, stdout: bool = True, file: Path | None = None,
                 stream: TextIO | None = None, node: str = "", machine: str = "") -> None:
        self.streams: list[TextIO] = []
        if stdout:
            self.streams.append(stream or sys.stdout)
        self.file = LineFile(file) if file is not None else None
        self.node, self.machine = node, machine
        self.stream_failed: str | None = None
        self.stream_dropped = 0

    def _write(self, record: dict) -> None:
        line = json.dumps(record, allow_nan=False) + "\n"
        with _LINE_LOCK:
            for s in self.streams:
                try:
                    s.write(line)
                    s.flush()
                    self.stream_failed = None
                except (OSError, ValueError) as exc:     # closed pipe, EIO, closed file
                    self.stream_dropped += 1
                    self.stream_failed = f"stdout: {getattr(exc, 'strerror', None) or exc}"
            if self.file is not None:
                self.file.write(line.encode())

    @property
    def failure(self) -> str | None:
        if self.file is not None and self.file.failed is not None:
            return f"output.file {self.file.path}: {self.file.failed}"
        return self.stream_failed

    def interval(self, result: IntervalResult) -> None:
        self._write({"kind": "score", "node": self.node, "machine": self.machine,
                     **result.payload()})
        if result.event is not None:
            self._write({"kind": "event", "node": self.node, "machine": self.machine,
                         "seq": result.seq, **result.event.to_dict()})

    def status(self, event: StatusEvent) -> None:
        """Every status event, as its record."""
        self._write({"kind": "status", "node": self.node, "machine": self.machine,
                     **event.to_dict()})

    def health(self) -> dict:
        """The file's figures when one is written (docs/agent.md "Stats")."""
        figures = {}
        if self.file is not None:
            figures.update(file_errors=self.file.errors, file_pending=len(self.file.pending),
                           file_dropped=self.file.dropped)
        if self.stream_dropped:
            figures["stdout_dropped"] = self.stream_dropped
        return figures

    def close(self, flush_s: float = 0.0) -> None:
        if self.file is not None:
            with _LINE_LOCK:
                self.file.close()
