"""The test data that the tests share: the synthetic corpora, the agent tests' int8 AE
bundle and the general bundle.

Each is built once per test run, whatever the number of pytest-xdist workers
(``built_once``: the first process to ask builds it under a lock, the others wait and reuse
it), or taken from a folder made beforehand (``HARKEN_TEST_DATA``, ``python -m
harken.testkit.data DIR``) where the run cannot build it: a device-only install or an
emulated arm64 root (scripts/arm64-check).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ENV = "HARKEN_TEST_DATA"
# what the folder holds, relative to it
SMALL_FAN, TINY, AE_BUNDLE, GENERAL_BUNDLE = ("corpora/small_fan", "corpora/tiny",
                                              "bundles/ae", "bundles/general")


def prebuilt(part: str) -> Path | None:
    """``part`` of the folder ``HARKEN_TEST_DATA`` names, if it is set and holds it."""
    root = os.environ.get(ENV)
    if not root:
        return None
    path = Path(root) / part
    if not path.exists():
        raise FileNotFoundError(f"{ENV}={root}: no {part} there; make the folder with "
                                f"'python -m harken.testkit.data {root}'")
    return path


def built_once(folder: Path, build: Callable[[Path], Path]) -> Path:
    """What ``build(folder)`` returns, built by the first process that asks for ``folder``
    and reused by every later one: pytest-xdist workers share one copy of each costly
    fixture instead of each building its own. A build that fails marks nothing done: the
    next process to ask clears what it left and builds again (failing in its own test)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(folder.name + ".done")
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # released when the file closes
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            result = Path(build(folder))
            done.write_text(str(result))
        return Path(done.read_text())


def small_fan(out: Path) -> Path:
    """The small synthetic corpus, fan only (90 ten-second training clips)."""
    from harken.training.synth.corpus import synthesize
    return synthesize(out, "small", seed=0, machines=("fan",), progress=False)


def tiny(out: Path) -> Path:
    """The tiny synthetic corpus, every machine type."""
    from harken.training.synth.corpus import synthesize
    return synthesize(out, "tiny", seed=0, progress=False)


def trained(corpus: Path, method: str, sets: Sequence[str], out: Path,
            machine: str = "fan") -> Path:
    """``method`` with settings ``sets`` trained on ``corpus``'s ``machine`` training clips;
    returns the run folder."""
    from harken.training.data.corpus import scan
    from harken.training.methods import make_method
    make_method(method, list(sets)).train(scan(corpus, [machine], "train"), out, progress=False)
    return out


def ae_bundle(corpus: Path, out: Path) -> Path:
    """A small AE (3 epochs on the small fan corpus) exported to int8 ONNX and TFLite."""
    from harken.export.bundle import ExportOptions, write_bundle
    trained(corpus, "ae", ["epochs=3"], out / "run")
    return write_bundle(out / "run", out / "bundle", corpus, ExportOptions())


def general_bundle(out: Path) -> Path:
    """A general bundle (spectral-knn's graph, no bank: enrolled on site), float ONNX."""
    from harken.export.bundle import ExportOptions, write_general_bundle
    return write_general_bundle(out, options=ExportOptions(formats=("onnx",), precision="fp32"))


def build(root: Path) -> None:
    """Every part a device-only test run needs, under ``root`` (the ``HARKEN_TEST_DATA``
    layout)."""
    corpus = small_fan(root / SMALL_FAN)
    tiny(root / TINY)
    bundle = ae_bundle(corpus, root / "build")
    shutil.copytree(bundle, root / AE_BUNDLE)
    shutil.rmtree(root / "build")
    general_bundle(root / GENERAL_BUNDLE)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m harken.testkit.data DIR", file=sys.stderr)
        return 2
    build(Path(argv[0]))
    print(f"test data in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
