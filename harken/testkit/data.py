"""The test data that the tests share: the synthetic corpora, the agent tests' int8 AE
bundle, the general bundle and, for each generative detector that exports, its bundle
(``GENERATIVE``: the tiny settings and corpus each is trained on).

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
from typing import NamedTuple

ENV = "HARKEN_TEST_DATA"
# what the folder holds, relative to it
SMALL_FAN, TINY, AE_BUNDLE, GENERAL_BUNDLE = ("corpora/small_fan", "corpora/tiny",
                                              "bundles/ae", "bundles/general")
# the small corpus's fan beside the tiny corpus's gearbox and valve (links, not copies)
FAN_WITH_OUTLIERS = "corpora/fan_with_outliers"
OUTLIER_TYPES = ("gearbox", "valve")


class Generative(NamedTuple):
    """How the tests train a generative detector: the fewest settings that give a working
    run in seconds on two cores, and the corpus (a part above) it trains on."""
    settings: tuple[str, ...]
    corpus: str


# the generative detectors (issue 42): OEVAE's outlier exposure needs other machine types
GENERATIVE: dict[str, Generative] = {
    # the rule pinned: `auto` picks on pseudo-anomaly AUCs that a one-epoch GAN's float noise
    # can reorder from one machine (or thread count) to the next; d-lof is the rule whose
    # arrays the device tests check (tests/export/test_aegan_export.py tests `auto` itself)
    "aegan-ad": Generative(("epochs=1", "score=d-lof"), SMALL_FAN),
    "gmgan": Generative(("epochs=1", "mixtures=3"), SMALL_FAN),
    "oevae": Generative(("epochs=1", "segments_per_epoch=64"), FAN_WITH_OUTLIERS),
}


def generative_part(name: str) -> str:
    """Where ``name``'s bundle is in the folder (``bundles/<name>``)."""
    return f"bundles/{name}"


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


def fan_with_outliers(out: Path, small: Path, tiny_root: Path) -> Path:
    """A corpus of ``small``'s fan and ``tiny_root``'s gearbox and valve, as relative links
    (the folder moves with the corpora beside it: scripts/arm64-check copies it)."""
    out.mkdir(parents=True, exist_ok=True)
    for machine, root in [("fan", small), *[(t, tiny_root) for t in OUTLIER_TYPES]]:
        link = out / machine
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(Path(root).absolute() / machine, out.absolute()),
                        target_is_directory=True)
    return out


def exportable(name: str) -> bool:
    """Whether method ``name`` has a device graph yet (training/method.py ``Exportable``):
    a generative detector's bundle is built, and its tests run, only once it has."""
    from harken.training.method import Exportable
    from harken.training.methods import METHODS
    return name in METHODS and issubclass(METHODS[name], Exportable)


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


def generative_bundle(name: str, corpus: Path, out: Path) -> Path:
    """Generative detector ``name`` trained with its ``GENERATIVE`` settings on ``corpus``
    and exported to fp32 and int8 ONNX and TFLite (the fp32 artifacts are what the agent's
    tests hold to torch's scores); the run stays in ``out/run`` (verify reads it), the
    bundle is ``out/bundle``. Refused for a method that does not export yet."""
    from harken.export.bundle import ExportOptions, write_bundle
    if not exportable(name):
        raise ValueError(f"method {name!r} does not export yet (no device graph)")
    trained(corpus, name, GENERATIVE[name].settings, out / "run")
    # the small corpus's 40 clips hold 240 windows of 128 frames: the fewest int8 calibration takes
    return write_bundle(out / "run", out / "bundle", corpus,
                        ExportOptions(precision="both", calibration_windows=200))


def general_bundle(out: Path) -> Path:
    """A general bundle (spectral-knn's graph, no bank: enrolled on site), float ONNX."""
    from harken.export.bundle import ExportOptions, write_general_bundle
    return write_general_bundle(out, options=ExportOptions(formats=("onnx",), precision="fp32"))


def build(root: Path) -> None:
    """Every part a device-only test run needs, under ``root`` (the ``HARKEN_TEST_DATA``
    layout)."""
    corpus = small_fan(root / SMALL_FAN)
    tiny(root / TINY)
    fan_with_outliers(root / FAN_WITH_OUTLIERS, root / SMALL_FAN, root / TINY)
    bundle = ae_bundle(corpus, root / "build")
    shutil.copytree(bundle, root / AE_BUNDLE)
    shutil.rmtree(root / "build")
    general_bundle(root / GENERAL_BUNDLE)
    for name, how in GENERATIVE.items():
        if exportable(name):       # main stays buildable while a method does not export yet
            bundle = generative_bundle(name, root / how.corpus, root / "build")
            shutil.copytree(bundle, root / generative_part(name))
            shutil.rmtree(root / "build")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m harken.testkit.data DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # parts of an older layout would be mixed with new ones (a test data folder made
        # before a method exported lacks its bundle): build into an empty or new folder
        print(f"harken.testkit.data: {root} exists and is not an empty folder: remove it or "
              f"give a new one", file=sys.stderr)
        return 2
    build(root)
    print(f"test data in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
