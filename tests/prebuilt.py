"""Test data built once on a workstation, for test runs that cannot build it: a device-only
install (no torch, no TensorFlow, no synthesizer) or an emulated arm64 root
(scripts/arm64-check). The fixtures in tests/conftest.py use a folder made here when
``HARKEN_TEST_DATA`` names it, and otherwise build the same things themselves.

    .venv/bin/python -m tests.prebuilt DIR
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

ENV = "HARKEN_TEST_DATA"
# what the folder holds, relative to it
SMALL_FAN, TINY, AE_BUNDLE, GENERAL_BUNDLE = ("corpora/small_fan", "corpora/tiny",
                                              "bundles/ae", "bundles/general")
WORKSTATION = ("needs the workstation side to build its data (scripts/setup), or "
               f"{ENV} naming a folder made by 'python -m tests.prebuilt DIR'")


def prebuilt(part: str) -> Path | None:
    """``part`` of the folder ``HARKEN_TEST_DATA`` names, if it is set and holds it."""
    root = os.environ.get(ENV)
    if not root:
        return None
    path = Path(root) / part
    if not path.exists():
        raise FileNotFoundError(f"{ENV}={root}: no {part} there; make the folder with "
                                f"'python -m tests.prebuilt {root}'")
    return path


def workstation_or_skip() -> None:
    """Skip, naming why, where the training and export side is not installed."""
    import pytest
    for module in ("torch", "tqdm"):
        pytest.importorskip(module, reason=WORKSTATION)


def ready_or_built(part: str, build: Callable[[], Path]) -> Path:
    """The prebuilt ``part`` if there is one, else ``build()``; skipped, naming why, where
    neither is possible."""
    ready = prebuilt(part)
    if ready:
        return ready
    workstation_or_skip()
    return build()


def small_fan(out: Path) -> Path:
    from harken.training.synth.corpus import synthesize
    return synthesize(out, "small", seed=0, machines=("fan",), progress=False)


def tiny(out: Path) -> Path:
    from harken.training.synth.corpus import synthesize
    return synthesize(out, "tiny", seed=0, progress=False)


def ae_bundle(corpus: Path, out: Path) -> Path:
    """A small AE (3 epochs on the small fan corpus) exported to int8 ONNX and TFLite."""
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.training.data.corpus import scan
    from harken.training.methods import make_method
    make_method("ae", ["epochs=3"]).train(scan(corpus, ["fan"], "train"), out / "run",
                                          progress=False)
    return write_bundle(out / "run", out / "bundle", corpus, ExportOptions())


def general_bundle(out: Path) -> Path:
    from harken.export.bundle import ExportOptions, write_general_bundle
    return write_general_bundle(out, options=ExportOptions(formats=("onnx",), precision="fp32"))


def build(root: Path) -> None:
    import shutil
    corpus = small_fan(root / SMALL_FAN)
    tiny(root / TINY)
    bundle = ae_bundle(corpus, root / "build")
    shutil.copytree(bundle, root / AE_BUNDLE)
    shutil.rmtree(root / "build")
    general_bundle(root / GENERAL_BUNDLE)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    build(Path(sys.argv[1]))
    print(f"test data in {sys.argv[1]}")
