"""Damaged bundles for the refusal tests: a copy to spoil, a flipped byte (damage in
transfer: the sha256 no longer matches), an array rewritten with its manifest entry fixed up
(a bundle built wrong: the sha256 matches, the content must be refused by its rule), and a
tarball cut in half."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

from harken.agent.model.bundle import sha256_file


def copied(bundle: Path, where: Path) -> Path:
    """A copy of the bundle folder at ``where`` (its parents made) to spoil."""
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, where)
    return where


def flip_byte(path: Path, at: int | None = None) -> None:
    """One byte of ``path`` inverted (the middle one by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(data))


def replace_array(bundle: Path, name: str, value: np.ndarray) -> Path:
    """Array ``name`` of the manifest rewritten as ``value``, its size and sha256 updated to
    match; the array's path."""
    manifest = bundle / "manifest.json"
    m = json.loads(manifest.read_text())
    path = bundle / m["arrays"][name]["path"]
    with open(path, "wb") as f:
        np.save(f, np.asarray(value), allow_pickle=False)
    m["arrays"][name].update(size=path.stat().st_size, sha256=sha256_file(path))
    manifest.write_text(json.dumps(m))
    return path


def array_of(bundle: Path, name: str) -> np.ndarray:
    """Array ``name`` as the manifest names it."""
    m = json.loads((bundle / "manifest.json").read_text())
    return np.load(bundle / m["arrays"][name]["path"], allow_pickle=False)


def truncated_tarball(bundle: Path, where: Path) -> tuple[Path, Path]:
    """(the bundle as a whole .tar.gz, the same cut in half) under folder ``where``."""
    whole, cut = where / f"{bundle.name}.tar.gz", where / "cut.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    return whole, cut
