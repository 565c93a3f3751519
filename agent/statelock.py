"""One process per state folder (docs/agent.md "One agent per state").

Everything the agent keeps between runs lives under ``agent.state_dir``: the MQTT outbox,
the enrolled banks, the calibration override, the ``seq`` reservation, Sparkplug's bdSeq.
Two processes on one state publish each other's outbox rows and hand out one ``seq`` twice,
so ``harken run`` holds an exclusive ``flock(2)`` on ``state_dir/harken.lock`` for its whole
life, and ``calibrate``/``enroll`` take it for theirs: a second one is refused in one line
naming the process that holds it. The lock belongs to the open file, not to the file on
disk: when its holder dies (even by SIGKILL) the kernel releases it, so a lock file left
behind is no obstacle. The holder's PID and command are written into the file only so that
the refusal can name them.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from harken.common.errors import ConfigError, EnvironmentFailure, is_transient

LOCK_NAME = "harken.lock"


class StateBusy(ConfigError):
    """Another process holds the state folder; its PID and command are in the message."""

    def __init__(self, message: str, pid: int | None, command: str) -> None:
        super().__init__(message)
        self.pid, self.command = pid, command


def _holder(fd: int) -> tuple[int | None, str]:
    """The PID and command the lock file names (None, '' if it names none yet)."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
        return int(text[0]), " ".join(text[1:])
    except (OSError, ValueError, IndexError):
        return None, ""


class StateLock:
    """An exclusive lock on one state folder, held until ``release`` (or the process ends).

    ``command`` ("harken run", "harken calibrate") is written beside the PID so a refused
    command can say what holds the state. ``refusal`` builds that one line from the holder's
    PID and command; the default suits a second ``harken run``."""

    def __init__(self, folder: Path, command: str = "harken run") -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, refusal=None) -> StateLock:
        """Take the lock without waiting; StateBusy if another process has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # a lock file this user may not write (left by root, say): flock works on a
            # read-only descriptor too; only the PID cannot be written
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise ConfigError(f"{self.path}: cannot open the state lock "
                                  f"({exc.strerror or exc})") from None
        except OSError as exc:
            # a full or failing disk is the device's, restarted by systemd; the rest an edit
            # fixes (docs/agent.md "Exit codes")
            raise (EnvironmentFailure if is_transient(exc) else ConfigError)(
                f"{self.path}: cannot open the state lock ({exc.strerror or exc}); key "
                f"'agent.state_dir' names {self.folder}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid, command = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise (EnvironmentFailure if is_transient(exc) else ConfigError)(
                    f"{self.path}: cannot lock the state folder ({exc.strerror or exc})"
                ) from None
            message = (refusal or _run_refusal)(pid, command or "another harken", self.folder)
            raise StateBusy(message, pid, command) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.command}\n".encode(), 0)
        except OSError:
            pass                     # read-only lock file: the lock holds, the PID is unsaid
        self._fd = fd
        return self

    def still_ours(self) -> bool:
        """Whether the lock file on disk is still the one locked (a state folder removed
        or replaced while running leaves the lock on a file nobody else will open)."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)          # closing the last descriptor releases the flock
            except OSError:
                pass

    def __enter__(self) -> StateLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


def _who(pid: int | None, command: str) -> str:
    return f"{command} (PID {pid})" if pid is not None else f"{command} (PID unknown)"


def _run_refusal(pid: int | None, command: str, folder: Path) -> str:
    return (f"{_who(pid, command)} is running on the state folder {folder} (outbox, banks, "
            f"override, seq); one agent per state: stop it first, or give this agent its "
            f"own agent.state_dir")


def change_refusal(verb: str):
    """The refusal of a command that changes the state (calibrate, enroll) while another
    process holds it: stop the daemon, do it, start it again (docs/agent.md)."""
    def refusal(pid: int | None, command: str, folder: Path) -> str:
        return (f"{_who(pid, command)} is running on this state ({folder}); stop it, "
                f"{verb}, start it again")
    return refusal


def lock_state(folder: Path, command: str, verb: str | None = None) -> StateLock:
    """The state folder's lock for ``command``, taken now; a command that changes the state
    (``verb``: "calibrate", "enroll") is refused with the stop-change-start line."""
    return StateLock(folder, command).acquire(None if verb is None else change_refusal(verb))
