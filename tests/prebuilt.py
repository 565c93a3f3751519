"""The pytest side of the shared test data (harken/testkit/data.py builds it): a fixture
takes the prebuilt part where ``HARKEN_TEST_DATA`` names a folder, else builds it once for
the whole run, and is skipped, naming why, where neither is possible (a device-only
install or an emulated arm64 root, scripts/arm64-check, without the folder).

    .venv/bin/python -m tests.prebuilt DIR      (the same as python -m harken.testkit.data DIR)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from harken.testkit import data
from harken.testkit.data import (AE_BUNDLE, ENV, FAN_WITH_OUTLIERS, GENERAL_BUNDLE,  # noqa: F401
                                 GENERATIVE, SMALL_FAN, TINY, generative_part)

WORKSTATION = ("needs the workstation side to build its data (scripts/setup), or "
               f"{ENV} naming a folder made by 'python -m tests.prebuilt DIR'")


def workstation_or_skip() -> None:
    """Skip, naming why, where the training and export side is not installed."""
    import pytest
    for module in ("torch", "tqdm"):
        pytest.importorskip(module, reason=WORKSTATION)


def ready_or_built(part: str, folder: Path, make: Callable[[Path], Path]) -> Path:
    """The prebuilt ``part`` if there is one, else what ``make(folder)`` made, once for the
    whole run (harken.testkit.data.built_once); skipped, naming why, where neither is
    possible."""
    ready = data.prebuilt(part)
    if ready:
        return ready
    workstation_or_skip()
    return data.built_once(folder, make)


def prebuilt_if_there(part: str) -> Path | None:
    """The prebuilt ``part`` where ``HARKEN_TEST_DATA`` names a folder holding it, else None:
    for the parts a folder made before they existed lacks (``fan_with_outliers``, a
    generative bundle), which are then built here instead of failing."""
    import os
    root = os.environ.get(ENV)
    path = Path(root) / part if root else None
    return path if path is not None and path.exists() else None


if __name__ == "__main__":
    sys.exit(data.main(sys.argv[1:]))
