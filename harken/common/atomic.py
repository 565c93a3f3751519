"""Files that are either wholly the old version or wholly the new one, never a mix: written
beside the target under a private name, flushed to the disk, then renamed over it (a rename
within one folder is atomic on POSIX). Every state file the agent and the tools write goes
through here: a power cut or a kill mid-write must not leave a torn override, bank or
counter that the next start would trust."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is synced and
    renamed over ``path``, on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) in one step."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def write_atomic_with(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``write(f)`` puts into a binary file (np.savez, say)."""
    with atomic_file(path, "wb") as f:
        write(f)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (the folder's entry); not every file system lets a
    folder be opened, which only costs durability, never atomicity."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
