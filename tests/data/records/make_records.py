"""How the records in this folder were written: by the release of commit 61a0e3e (bank
manifest version 1, unversioned calibration override), with its own commands.

    PYTHONPATH=. .venv/bin/python tests/data/records/make_records.py OUT

enrolls the general bundle (harken/testkit/data.py) on 60 s of a synthetic fan, appends 20 s
more (a second session), then calibrates on 110 s; ``OUT/state`` then holds
``enrolled-fan.npz`` and ``threshold-fan.json``, committed here as ``*-v1``. Run with a
later release it writes that release's records: the committed files are the old ones that
tests/agent/test_records.py keeps loading."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from harken.agent.sources.wavio import write_wav
from harken.testkit import data as prebuilt
from harken.testkit.files import write_agent_config

RATE = 16000


def fan(seconds: int, seed: int) -> np.ndarray:
    """A steady synthetic fan: noise, a 120 Hz hum and a 1630 Hz blade tone."""
    n = RATE * seconds
    t = np.arange(n) / RATE
    x = (0.1 * np.random.default_rng(seed).standard_normal(n) + 0.2 * np.sin(2 * np.pi * 120 * t)
         + 0.05 * np.sin(2 * np.pi * 1630 * t))
    return (x * 0.5).astype(np.float32)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "general"
    if not bundle.exists():
        prebuilt.general_bundle(bundle)
    rec = out / "recordings"
    rec.mkdir(exist_ok=True)
    for name, seconds, seed in (("fan-a", 60, 1), ("fan-b", 110, 2), ("fan-c", 20, 3)):
        write_wav(rec / f"{name}.wav", fan(seconds, seed), RATE)
    cfg = write_agent_config(
        out / "agent.toml", agent={"node": "site", "machine": "fan", "state_dir": out / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": rec / "fan-c.wav"},
        decision={"interval_s": 10})
    for args in (["enroll", "--files", "recordings/fan-a.wav", "--json"],
                 ["enroll", "--files", "recordings/fan-c.wav", "--append", "--json"],
                 ["calibrate", "--files", "recordings/fan-b.wav", "--quiet"]):
        subprocess.run([sys.executable, "-m", "harken.agent.cli", args[0], "--config", str(cfg),
                        *args[1:]], check=True, cwd=out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
