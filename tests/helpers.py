"""Helpers of the tests only (fixtures stay in conftest.py, which nothing imports); what the
benchmarks use too (the broker, agent configs, WAVs, test data) is in harken/testkit/."""

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path


def wait_for(what, predicate, timeout: float = 180.0, every: float = 0.2) -> None:
    """Poll ``predicate`` until it holds: tests wait on events, never on fixed sleeps.
    ``what`` may be a callable, called at a failure to say what was seen instead."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"not seen within {timeout} s: {what() if callable(what) else what}")


def gone(pid: int) -> bool:
    """No process with this pid (a kit that reaps what it kills leaves no zombie holding it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def collect_lines(stream) -> list[str]:
    """The lines of a child's pipe as they come (a reader thread), so a test can wait for
    one line while the child keeps running."""
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)
    threading.Thread(target=read, daemon=True).start()
    return lines


@contextlib.contextmanager
def tmpfs(folder, size: str, options: str = ""):
    """A small tmpfs mounted at ``folder`` for the duration (a disk that fills up, or a
    read-only one); the test is skipped where mounting is not allowed (not root)."""
    import subprocess

    import pytest
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"{options},size={size}" if options else f"size={size}"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root; CI runs as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256): 'unchanged' made exact."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """What a command's building and swapping left beside its artifacts (harken/common/
    atomic.py: hidden ``.NAME.new-PID`` / ``.NAME.old``), its lock files aside."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".") and not p.name.endswith(".lock"))
