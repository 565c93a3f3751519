"""The daemon's control socket (docs/agent.md "The control socket"): how ``harken
feedback`` and ``harken maintenance`` reach a running ``harken run``, which owns the state
folder (its lock) for its whole life.

A Unix stream socket, ``state_dir/control.sock``, served by one thread of the daemon: one
JSON request line in, one JSON reply line out (agent/operator/commands.py), requests over
64 KiB refused unread, a client that sends nothing dropped after ``READ_TIMEOUT_S``.
Connections are taken one at a time: commands are done one at a time anyway.

Who may connect is the file system's decision: the socket is mode 0660, owned by the
daemon's user, in the state folder. Under the shipped unit (``DynamicUser=yes``) the state
lives in ``/var/lib/private/harken``, which only root may enter, so the operator runs
``sudo harken feedback ...``; a user who may not connect gets one line saying so, never a
change. Any socket file found at start is a killed daemon's (one daemon per state folder,
agent/statelock.py): it is replaced; a clean stop removes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from harken.common.errors import ConfigError, HarkenError
from harken.agent.operator.commands import MAX_BYTES

_log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MODE = 0o660
READ_TIMEOUT_S = 5.0          # a request line must arrive within this
REPLY_TIMEOUT_S = 120.0       # feedback refits a threshold: seconds on a Pi, not minutes
CLOSE_WAIT_S = 2.0            # of the stop budget (agent/runner.py), for a command under way
_SUN_PATH_MAX = 107           # sockaddr_un's sun_path, less its terminating zero


class ControlError(HarkenError, OSError):
    """The running agent could not be asked (not allowed, no reply)."""


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """``path`` as a socket address: itself, or where it is longer than ``sun_path`` holds
    (a deep state folder), the same file through ``/proc/self/fd/N`` of its folder."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    """The socket and its thread; ``handle(raw, via)`` answers each request."""

    def __init__(self, state_dir: Path, handle: Callable[[bytes, str], dict],
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.path = socket_path(state_dir)
        self.handle, self.read_timeout_s = handle, read_timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> ControlServer:
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _address(self.path) as address:
                sock.bind(address)
            # the umask made it 0755 (or the unit's 0700) at bind: never wider than 0660
            os.chmod(self.path, MODE)
            sock.listen(8)
            sock.settimeout(0.25)                 # the loop looks at the stop between waits
        except OSError as exc:
            sock.close()
            raise ConfigError(f"{self.path}: cannot open the control socket "
                              f"({exc.strerror or exc})") from None
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{self.path}: is not a socket; the agent's control socket "
                              f"goes there (move it away)")
        _log.info(f"{self.path}: replacing the control socket of an agent that did not stop "
                  f"cleanly")
        self.path.unlink()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)                     # EMFILE and the like: try again
                continue
            try:
                self._answer(conn)
            except Exception:                       # noqa: BLE001 - the server goes on
                _log.exception("control socket: a request failed")
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.read_timeout_s
        data = b""
        while b"\n" not in data and len(data) <= MAX_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return                              # a silent client: dropped, no reply
            conn.settimeout(left)
            try:
                part = conn.recv(65536)
            except (socket.timeout, OSError):
                return
            if not part:
                break
            data += part
        raw = data.split(b"\n", 1)[0] if len(data) <= MAX_BYTES else data
        if not raw.strip():
            return
        reply = self.handle(raw, "socket")
        conn.settimeout(self.read_timeout_s)
        try:
            conn.sendall((json.dumps(reply, default=str) + "\n").encode())
        except OSError:
            pass                                    # the client left; the change is logged

    def close(self) -> None:
        """Stop serving and remove the socket file (a clean stop)."""
        self._stop.set()
        if self._thread is not None:       # a command under way ends with the process
            self._thread.join(CLOSE_WAIT_S)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()


def request(state_dir: Path, command: dict, timeout_s: float = REPLY_TIMEOUT_S) -> dict | None:
    """``command`` sent to the agent running on ``state_dir``; its reply, or None when no
    agent listens (no socket, or a killed agent's). ControlError when this user may not
    connect, or no reply comes."""
    path = socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        try:
            with _address(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except PermissionError:
            raise ControlError(
                f"{path}: permission denied: the running agent's control socket is for its "
                f"own user and root; run this as root (sudo harken ...) (docs/agent.md "
                f"\"The control socket\")") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                return None
            if exc.errno == errno.EACCES:
                raise ControlError(f"{path}: permission denied; run this as root "
                                   f"(sudo harken ...)") from None
            raise ControlError(f"{path}: cannot reach the running agent "
                               f"({exc.strerror or exc})") from None
        try:
            sock.sendall((json.dumps(command) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except socket.timeout:
            raise ControlError(f"{path}: no reply from the running agent within "
                               f"{timeout_s:g} s; the command may still be carried out (see "
                               f"'harken feedback --list')") from None
        except OSError as exc:
            raise ControlError(f"{path}: the running agent closed the connection "
                               f"({exc.strerror or exc})") from None
        try:
            reply = json.loads(data)
        except ValueError:
            raise ControlError(f"{path}: the running agent gave no reply (it may be "
                               f"stopping)") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool) or (
                reply["ok"] and not isinstance(reply.get("result"), dict)):
            raise ControlError(f"{path}: an unexpected reply from the running agent (another "
                               f"program's socket, or another release's?)")
        return reply
    finally:
        sock.close()


def hand_back(folder: Path) -> list[Path]:
    """Files root made in a state folder that another user owns (``sudo harken feedback``
    with the daemon stopped, under the unit's ``DynamicUser``) given to that user, so the
    daemon can write them again when it starts (systemd chowns a state folder whose top
    is already its user's no further). Returns what was changed."""
    changed: list[Path] = []
    if os.geteuid() != 0:
        return changed
    owner = os.stat(folder)
    if owner.st_uid == 0:
        return changed
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            try:
                if os.lstat(p).st_uid == 0:
                    os.lchown(p, owner.st_uid, owner.st_gid)
                    changed.append(p)
            except OSError:
                continue
    return changed
