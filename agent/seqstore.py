"""``seq`` that is never handed out twice, whatever the sinks remember (docs/agent.md
"seq across restarts").

A subscriber de-duplicates scores on (node, machine, seq), so a ``seq`` used again after a
restart drops a real score. The MQTT outbox knows its last ``seq``, but a run with JSON lines
only (or an outbox moved aside) knows nothing. So each machine keeps two small files:

- ``state_dir/seq-<machine>.json``, the reservation: the first ``seq`` not yet reserved.
  Before a ``seq`` at or above it is handed out, a block of ``BLOCK`` more is reserved and
  the file replaced atomically and synced (harken.common.atomic): it survives a power cut.
  One such write per ``BLOCK`` intervals keeps an SD card's wear negligible.
- ``state_dir/seq-<machine>.next``, the mark: the next ``seq`` exactly, with the kernel's
  boot id, overwritten in place (not synced) before each ``seq`` is used. A process that
  ends, cleanly or by SIGKILL, leaves it in the page cache, which the same boot reads back
  exactly; after a reboot (a power cut may have lost the last writes) it is not trusted.

A restart within the same boot resumes at the mark, with no gap; after a reboot, above
the reservation, skipping the rest of its block. Gaps are allowed, reuse never.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from harken.common.atomic import write_atomic
from harken.common.errors import ConfigError, EnvironmentFailure, is_transient

BLOCK = 1000          # seq values reserved per write (10 000 s of 10-s intervals)
VERSION = 1

_log = logging.getLogger(__name__)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id (Linux), None where there is none: then the mark is never trusted."""
    try:
        text = BOOT_ID.read_text().strip()
    except OSError:
        return None
    return text if text and " " not in text else None


class SeqReservation:
    """One machine's durable ``seq`` reservation. ``start`` says where ``seq`` goes on;
    ``take(seq)`` is called before each ``seq`` is used and reserves ahead when needed."""

    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self.path, self.block = Path(path), block
        self.mark_path = self.path.with_suffix(".next")
        self.boot = boot_id()
        self.limit = self._read()            # first seq not reserved yet
        self.mark = self._read_mark()        # the next seq exactly (same boot), else None
        self.failed: str | None = None       # the last reservation write's error, if any
        self.failures = 0
        self._mark_fd: int | None = None

    def _read_mark(self) -> int | None:
        try:
            boot, value = self.mark_path.read_text().split()
            seq = int(value)
        except (OSError, ValueError):
            return None
        return seq if self.boot is not None and boot == self.boot and seq >= 1 else None

    def _write_mark(self, seq: int) -> None:
        """The next ``seq``, in place, fixed width (no truncation, no sync: the page cache
        carries it across a kill; a reboot is told by the boot id)."""
        if self.boot is None:
            return
        try:
            if self._mark_fd is None:
                self._mark_fd = os.open(self.mark_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                        0o644)
            os.pwrite(self._mark_fd, f"{self.boot} {seq:020d}\n".encode(), 0)
        except OSError:
            pass                 # the synced reservation alone still prevents reuse

    def close(self) -> None:
        if self._mark_fd is not None:
            fd, self._mark_fd = self._mark_fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _read(self) -> int:
        if not self.path.exists():
            return 1
        try:
            data = json.loads(self.path.read_text())
            limit = data["next_unreserved"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"next_unreserved = {limit!r}, expected an integer >= 1")
            return limit
        except OSError as exc:
            if is_transient(exc):        # an I/O error of the card, not a damaged file
                raise EnvironmentFailure(f"{self.path}: cannot read the seq reservation "
                                         f"({exc.strerror or exc})") from None
            raise self._damaged(exc.strerror) from None
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise self._damaged(exc) from None

    def _damaged(self, why) -> ConfigError:
        """A reservation that cannot be read: only a person can tell which seq numbers went
        out (restore the file, or remove it), so this one is not restarted."""
        return ConfigError(
            f"{self.path}: not a seq reservation ({why}); it records which seq numbers "
            f"were handed out: restore it, or remove it to restart seq above the "
            f"outbox's last one (subscribers may then drop repeated seq)")

    def start(self, at_least: int = 1) -> int:
        """The first ``seq`` of this run: the mark of a run of this boot, else above every
        ``seq`` reserved before; at least ``at_least`` (what the sinks remember). Its block
        is reserved now, so a run that cannot write the reservation is refused before it
        hands out anything."""
        first = max(self.mark if self.mark is not None else self.limit, at_least)
        try:
            self._write(max(first + self.block, self.limit))
        except OSError as exc:
            # a full disk clears by itself or by a cleanup: exit 75, systemd tries again
            # (docs/agent.md "Exit codes"); a folder this user may not write needs an edit
            raise (EnvironmentFailure if is_transient(exc) else ConfigError)(
                f"{self.path}: cannot write the seq reservation ({exc.strerror or exc}); "
                f"check agent.state_dir") from None
        self._write_mark(first)
        return first

    def take(self, seq: int) -> None:
        """Called before ``seq`` is used: reserve the next block once it is reached. A
        failed write (disk full) is logged once and retried at the next ``seq``; scoring
        never waits for it (docs/reliability.md)."""
        if seq >= self.limit:
            self._reserve(seq)
        self._write_mark(seq + 1)

    def _reserve(self, seq: int) -> None:
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
        self.close()
        self.limit = min(self.limit, seq)
        self._reserve(seq)
        self._write_mark(seq)

    def _write(self, limit: int) -> None:
        write_atomic(self.path, json.dumps({"version": VERSION, "next_unreserved": limit}) + "\n")
        self.limit = limit
