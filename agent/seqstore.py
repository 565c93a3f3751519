"""``seq`` that is never handed out twice, whatever the sinks remember (docs/agent.md
"seq across restarts").

A subscriber de-duplicates scores on (node, machine, seq), so a ``seq`` used again after a
restart drops a real score. The MQTT outbox knows its last ``seq``, but a run with JSON lines
only (or an outbox moved aside) knows nothing. So each machine keeps a reservation in
``state_dir/seq-<machine>.json``: the first ``seq`` not yet reserved. Before a ``seq`` at or
above it is handed out, a block of ``BLOCK`` more is reserved and the file replaced
atomically (harken.common.atomic). A restart, a kill or a power cut resumes above every
``seq`` ever handed out; the rest of the last block is skipped (gaps are allowed, reuse
never). One write per ``BLOCK`` intervals keeps an SD card's wear negligible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from harken.common.atomic import write_atomic
from harken.common.errors import ConfigError

BLOCK = 1000          # seq values reserved per write (10 000 s of 10-s intervals)
VERSION = 1

_log = logging.getLogger(__name__)


class SeqReservation:
    """One machine's durable ``seq`` reservation. ``start`` says where ``seq`` goes on;
    ``take(seq)`` is called before each ``seq`` is used and reserves ahead when needed."""

    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self.path, self.block = Path(path), block
        self.limit = self._read()            # first seq not reserved yet
        self.failed: str | None = None       # the last reservation write's error, if any
        self.failures = 0

    def _read(self) -> int:
        if not self.path.exists():
            return 1
        try:
            data = json.loads(self.path.read_text())
            limit = data["next_unreserved"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"next_unreserved = {limit!r}, expected an integer >= 1")
            return limit
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else exc
            raise ConfigError(
                f"{self.path}: not a seq reservation ({why}); it records which seq numbers "
                f"were handed out: restore it, or remove it to restart seq above the "
                f"outbox's last one (subscribers may then drop repeated seq)") from None

    def start(self, at_least: int = 1) -> int:
        """The first ``seq`` of this run: above every one reserved before and at least
        ``at_least`` (what the sinks remember); its block is reserved now, so a run that
        cannot write the reservation is refused before it hands out anything."""
        first = max(self.limit, at_least)
        try:
            self._write(first + self.block)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write the seq reservation "
                              f"({exc.strerror or exc}); check agent.state_dir") from None
        return first

    def take(self, seq: int) -> None:
        """Called before ``seq`` is used: reserve the next block once it is reached. A
        failed write (disk full) is logged once and retried at the next ``seq``; scoring
        never waits for it (docs/reliability.md)."""
        if seq < self.limit:
            return
        try:
            self._write(seq + self.block)
        except OSError as exc:
            self.failures += 1
            if self.failed is None:
                _log.warning(f"{self.path}: cannot reserve seq above {seq} "
                             f"({exc.strerror or exc}); retried at each interval")
            self.failed = str(exc.strerror or exc)
            return
        if self.failed is not None:
            _log.info(f"{self.path}: seq reserved again after {self.failures} failed try(s)")
            self.failed = None

    def renew(self, seq: int) -> None:
        """Write the reservation again from ``seq`` on (its file was removed with the state
        folder while running): a restart must still resume above what was handed out."""
        self.limit = min(self.limit, seq)
        self.take(seq)

    def _write(self, limit: int) -> None:
        write_atomic(self.path, json.dumps({"version": VERSION, "next_unreserved": limit}) + "\n")
        self.limit = limit
