"""Helpers shared by tests and bench scripts (fixtures stay in conftest.py, which nothing
imports)."""

import contextlib
import threading
import time

import numpy as np


def wait_for(what: str, predicate, timeout: float = 180.0, every: float = 0.2) -> None:
    """Poll ``predicate`` until it holds: tests wait on events, never on fixed sleeps."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"not seen within {timeout} s: {what}")


def collect_lines(stream) -> list[str]:
    """The lines of a child's pipe as they come (a reader thread), so a test can wait for
    one line while the child keeps running."""
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)
    threading.Thread(target=read, daemon=True).start()
    return lines


def whine(x: np.ndarray, rate: int, level: float = 0.5) -> np.ndarray:
    """``x`` plus a steady 1.2 kHz tone ``level`` x its RMS (an easy, audible fault)."""
    t = np.arange(len(x)) / rate
    return (x + level * np.sqrt(2 * np.mean(x ** 2)) * np.sin(2 * np.pi * 1200 * t)).astype(
        np.float32)


def write_channels(path, columns: list[np.ndarray], rate: int = 16000):
    """A 16-bit multi-channel WAV at ``path``, one float column in [-1, 1] per channel (as
    a multi-channel interface records a row of machines); returns the path."""
    import scipy.io.wavfile
    data = np.clip(np.stack(columns, axis=1), -1, 1)
    scipy.io.wavfile.write(path, rate, np.round(data * 32767).astype(np.int16))
    return path


def write_agent_config(path, **sections):
    """An agent TOML at ``path`` from ``section={key: value}`` dicts (strings, numbers and
    booleans, written as TOML scalars), or for ``machines`` a list of such dicts (an array
    of tables; a dict value in an entry is its sub-table); returns the path."""
    import json

    def scalars(values: dict) -> list[str]:
        return [f"{k} = {json.dumps(str(v) if hasattr(v, '__fspath__') else v)}"
                for k, v in values.items() if not isinstance(v, dict)]

    lines = []
    for name, values in sections.items():
        if isinstance(values, list):
            for entry in values:
                lines += [f"[[{name}]]", *scalars(entry)]
                for sub, table in entry.items():
                    if isinstance(table, dict):
                        lines += [f"[{name}.{sub}]", *scalars(table)]
            continue
        lines.append(f"[{name}]")
        lines += scalars(values)
    path.write_text("\n".join(lines) + "\n")
    return path


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
