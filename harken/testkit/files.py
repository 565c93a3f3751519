"""Input files for the agent as tests and benchmarks write them: its TOML config and
WAV recordings (docs/configuration.md describes the config)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_agent_config(path: Path, **sections) -> Path:
    """An agent TOML at ``path`` from ``section={key: value}`` dicts (strings, numbers and
    booleans, written as TOML scalars), or for ``machines`` a list of such dicts (an array
    of tables; a dict value in an entry is its sub-table); returns the path."""

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


def write_channels(path: Path, columns: list[np.ndarray], rate: int = 16000) -> Path:
    """A 16-bit multi-channel WAV at ``path``, one float column in [-1, 1] per channel (as
    a multi-channel interface records a row of machines); returns the path."""
    import scipy.io.wavfile
    data = np.clip(np.stack(columns, axis=1), -1, 1)
    scipy.io.wavfile.write(path, rate, np.round(data * 32767).astype(np.int16))
    return path


def whine(x: np.ndarray, rate: int, level: float = 0.5) -> np.ndarray:
    """``x`` plus a steady 1.2 kHz tone ``level`` x its RMS (an easy, audible fault)."""
    t = np.arange(len(x)) / rate
    return (x + level * np.sqrt(2 * np.mean(x ** 2)) * np.sin(2 * np.pi * 1200 * t)).astype(
        np.float32)
