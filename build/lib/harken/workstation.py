"""Entry points of the workstation commands. A device installs the wheel without torch;
there ``harken-train`` and ``harken-export`` say which extra they need instead of
failing with an ImportError traceback."""

from __future__ import annotations

import importlib.util
import sys

_NEEDS = {"harken-train": ("train", ("torch", "sklearn")),
          "harken-export": ("export", ("torch", "onnx"))}


def _missing(command: str) -> str | None:
    extra, modules = _NEEDS[command]
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (f"{command}: this install has no {', '.join(absent)} (a device install); "
            f"the workstation side needs pip install 'harken[{extra}]' "
            "(with torch==2.13.0 first, as scripts/setup does)")


def _refuse_or(command: str) -> int | None:
    message = _missing(command)
    if message:
        print(message, file=sys.stderr)
        return 2
    return None


def train_main(argv: list[str] | None = None) -> int:
    refused = _refuse_or("harken-train")
    if refused is not None:
        return refused
    from harken.training.cli import main
    return main(argv)


def export_main(argv: list[str] | None = None) -> int:
    refused = _refuse_or("harken-export")
    if refused is not None:
        return refused
    from harken.export.cli import main
    return main(argv)
