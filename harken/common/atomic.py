"""Files that are either wholly the old version or wholly the new one, never a mix: written
beside the target under a private name, flushed to the disk, then renamed over it (a rename
within one folder is atomic on POSIX). Every state file the agent and the tools write goes
through here: a power cut or a kill mid-write must not leave a torn override, bank or
counter that the next start would trust. Whole artifacts of several files (a run folder,
an evaluation, a bundle) go through ``building``, the one commit helper of the workstation
commands."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from harken.common.errors import HarkenError


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


def aside_name(path: str | Path, label: str) -> Path:
    """Where ``path`` goes when it is set aside: ``<name>.<label>-<UTC time>`` beside it
    (``-2``, ``-3``... when one of that second exists: nothing set aside is ever replaced)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.{label}-{stamp}"), 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
    return aside


def set_aside(path: str | Path, label: str) -> Path:
    """Rename ``path`` (a damaged or stale state file) out of the way, kept, never deleted,
    and return its new path (``aside_name``); an OSError if it cannot be renamed."""
    aside = aside_name(path, label)
    Path(path).rename(aside)
    _sync_folder(aside.parent)
    return aside


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (the folder's entry); not every file system lets a
    folder be opened, which only costs durability, never atomicity."""
    _sync_file(folder)


# -- whole artifacts (a run folder, an evaluation, a bundle, a tarball) ---------------------
#
# Built under a private name beside the target, then renamed into place (docs/architecture.md,
# "Artifacts: all old or all new"). Replacing an existing target (``--force``) is a swap:
# the old one renamed aside, the new one renamed in, the old one removed. A kill between
# the two renames leaves the target missing and its aside copy present: ``repair`` (run at
# the start of every command that writes or reads the target) puts the old one back; a kill
# after them leaves the aside copy, which ``repair`` removes. A lock beside the target keeps
# two commands from building the same target at once.

# The steps of a commit, in order; ``FAULT`` (tests) is called with each name as it is
# reached, after the step is done: "built" (the new artifact complete and synced, nothing
# renamed yet), "aside" (the old target renamed aside), "placed" (the new one renamed in),
# "removed" (the old one deleted).
STEPS = ("built", "aside", "placed", "removed")
FAULT: Callable[[str], None] | None = None
# HARKEN_COMMIT_PAUSE=STEP: at STEP, make the file ``.NAME.paused-STEP`` beside the target
# and wait there forever (a test kills the command at that point: tests/training/test_runs_atomic.py).
PAUSE_ENV = "HARKEN_COMMIT_PAUSE"


class ArtifactError(HarkenError, OSError):
    """A target that is there and not to be replaced, or that another command is writing."""


def aside_path(target: Path) -> Path:
    """Where the old target waits while a replacement is renamed in."""
    return target.with_name(f".{target.name}.old")


def _building_paths(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.new-*"))


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree (a link is removed, never followed); a read-only
    folder inside it (a bundle made read-only to guard it) is made writable to empty it."""
    if path.is_dir() and not path.is_symlink():
        def writable_then_again(func, name, _exc) -> None:
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            func(name)
        os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=writable_then_again)   # onexc from 3.12
    elif os.path.lexists(path):
        path.unlink()


def _step(name: str, target: Path) -> None:
    if FAULT is not None:
        FAULT(name)
    if os.environ.get(PAUSE_ENV) == name:
        target.with_name(f".{target.name}.paused-{name}").touch()
        while True:                       # killed here by the test that asked for the pause
            time.sleep(3600)


def _sync_tree(path: Path) -> None:
    """Every file of a new artifact on the disk before it is renamed into place: a power
    cut after the rename must not leave a folder of empty files."""
    if path.is_file():
        _sync_file(path)
        return
    for folder, _dirs, files in os.walk(path):
        for name in files:
            _sync_file(Path(folder) / name)
        _sync_folder(Path(folder))


def _sync_file(path: Path) -> None:
    """fsync a file or folder by path; one that cannot be opened or synced costs
    durability only."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _take_lock(target: Path) -> int:
    """An exclusive lock beside ``target`` (flock: released by the kernel when the process
    dies, so a killed command never leaves a stale lock)."""
    path = _lock_path(target)
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise ArtifactError(f"{target}: cannot write beside it in {target.parent} "
                            f"({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ArtifactError(f"{target}: another harken command is writing it now; "
                                f"wait for it to finish (or stop it)") from None
        raise
    return fd


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _repair_locked(target: Path) -> str | None:
    aside = aside_path(target)
    done = None
    if os.path.lexists(aside):
        if os.path.lexists(target):       # the new one was in place: finish the swap
            _remove(aside)
            done = "removed the old copy an interrupted replacement left"
        else:                             # killed between the renames: the old one back
            os.rename(aside, target)
            _sync_folder(target.parent)
            done = "restored the old copy an interrupted replacement had set aside"
    for leftover in _building_paths(target):
        _remove(leftover)
        done = done or "removed what an interrupted command had half built"
    for paused in target.parent.glob(f".{target.name}.paused-*"):
        paused.unlink(missing_ok=True)
    return done


def repair(target: str | Path) -> str | None:
    """Finish or undo a commit of ``target`` that a kill interrupted (see above); what was
    done, or None. Skipped (None) while another command holds the target's lock: that one
    repairs it when it starts and is not interrupted now."""
    target = Path(os.path.abspath(target))
    if not target.parent.is_dir() or not (
            os.path.lexists(aside_path(target)) or _building_paths(target)
            or any(target.parent.glob(f".{target.name}.paused-*"))):
        return None
    try:
        fd = _take_lock(target)
    except ArtifactError:
        return None
    try:
        return _repair_locked(target)
    finally:
        _release(fd)


# what a commit leaves beside its target ``NAME`` when it is killed: the old copy set aside,
# the half-built new one (with the builder's process id), a test's pause marker
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:old|new-\d+|paused-\w+)$")


def repair_folder(folder: str | Path) -> list[str]:
    """Repair every target in ``folder`` that an interrupted commit left something beside
    (``repair``): what a listing of the folder (a folder of runs) must do before it trusts
    its entries, so that a half-built ``.fan.new-PID`` is removed, never read as a run. A
    target whose builder is alive holds its lock and is left alone. What was done."""
    folder = Path(folder)
    try:
        names = sorted({m["name"] for p in folder.iterdir() if (m := _LEFTOVER.match(p.name))})
    except OSError:
        return []
    return [f"{folder / n}: {done}" for n in names if (done := repair(folder / n))]


def resolve_target(target: str | Path) -> Path:
    """The absolute path the artifact goes to: a link named as the target is followed (the
    artifact goes where it points, on that file system), its parent folders are kept."""
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        target = target.resolve()
    return target


def _refuse_overlap(target: Path, keep: tuple[str | Path, ...], what: str) -> None:
    """A target that is, or holds, something the command reads (the run it evaluates, the
    corpus it trains on) or the current folder (``--out .``) would be deleted by its
    replacement: refused whatever ``force``."""
    here = os.getcwd()
    for path in (*keep, here):
        real = Path(os.path.realpath(path))
        if real == Path(os.path.realpath(target)) or Path(os.path.realpath(target)) in real.parents:
            named = "the current folder" if path is here else f"{path}, which this command reads"
            raise ArtifactError(f"{target}: the {what} would replace {named}; give another "
                                f"{what}")


def check_target(target: str | Path, force: bool, what: str,
                 keep: tuple[str | Path, ...] = ()) -> Path:
    """The target (``resolve_target``), refused in one line when it is there already and
    ``force`` is not given, or when it is or holds one of ``keep``; an interrupted commit
    there is repaired first. For commands that check every target before any work."""
    target = resolve_target(target)
    _refuse_overlap(target, keep, what)
    repair(target)
    if os.path.lexists(target) and not force:
        kind = "a folder" if target.is_dir() else "a file"
        raise ArtifactError(f"{target}: already exists ({kind}); give a new {what} or "
                            f"--force to replace it")
    return target


@contextmanager
def building(target: str | Path, *, force: bool = False, what: str = "folder",
             folder: bool = True, keep: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Build an artifact (a folder, or a file with ``folder=False``) under a private name
    beside ``target`` and, when the block ends cleanly, put it in place in one rename (or
    a swap, with ``force``, where one is there). On an exception or Ctrl-C the half-built
    one is removed and the target is left as it was. ``keep``: what the command reads,
    which the target must not be or hold."""
    target = resolve_target(target)
    _refuse_overlap(target, keep, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = _take_lock(target)
    try:
        _repair_locked(target)
        if os.path.lexists(target) and not force:
            kind = "a folder" if target.is_dir() else "a file"
            raise ArtifactError(f"{target}: already exists ({kind}); give a new {what} or "
                                f"--force to replace it")
        new = target.with_name(f".{target.name}.new-{os.getpid()}")
        _remove(new)
        if folder:
            new.mkdir()
        try:
            yield new
            _sync_tree(new)
            _step("built", target)
            _commit(new, target)
        finally:
            if os.path.lexists(new):
                _remove(new)
    finally:
        _release(fd)


def _commit(new: Path, target: Path) -> None:
    aside = aside_path(target)
    swapped = False
    try:
        if os.path.lexists(target):
            _remove(aside)
            os.rename(target, aside)
            swapped = True
            _step("aside", target)
        os.rename(new, target)
        _sync_folder(target.parent)
        _step("placed", target)
    except BaseException:
        # not placed: the old one back where it was (a kill instead: ``repair`` does it)
        if swapped and not os.path.lexists(target) and os.path.lexists(aside):
            os.rename(aside, target)
        raise
    if swapped:
        _remove(aside)
        _step("removed", target)
