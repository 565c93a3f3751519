"""Arrays read from files this process did not make (a bundle's ``.npy``, an enrolled
bank's ``.npz``, a training run's banks and moments: the agent and harken/common/readers.py
both read through here): the header is read and checked first, so that a header claiming 10^12 values is
refused from its few hundred bytes instead of numpy asking the system for terabytes
(docs/reliability.md "Numbers, banks and bundles"). Only plain numeric arrays (bool, int,
float) are accepted: no pickle, no objects, no structured or string dtypes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harken.common.errors import DataError

# plenty for any bundle or bank this agent makes (the largest, a week of enrolled
# intervals, is far below), far below what a Raspberry Pi could allocate
MAX_ARRAY_BYTES = 512 << 20
NUMERIC_KINDS = "biuf"


class ArrayFileError(DataError):
    """An array file that is not a plain numeric array of the size its header states."""


def _header(f: BinaryIO, stored_bytes: int, where: str, max_bytes: int
            ) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header at ``f``'s position, checked against
    the ``stored_bytes`` the container says the member has."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unknown .npy format version {version}")
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ArrayFileError(f"{where}: not a plain .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise ArrayFileError(f"{where}: holds {dtype} values; only plain numbers (bool, int, "
                             f"float) are read")
    if any(d < 0 for d in shape):
        raise ArrayFileError(f"{where}: the header's shape {shape} is not a shape")
    count = 1
    for d in shape:
        count *= int(d)
    claimed = count * dtype.itemsize
    data = stored_bytes - (f.tell() - start)
    if claimed > max_bytes:
        raise ArrayFileError(f"{where}: the header claims {shape} {dtype} values "
                             f"({claimed} bytes); an array here is at most {max_bytes} bytes")
    if claimed != data:
        raise ArrayFileError(f"{where}: the header claims {shape} {dtype} values ({claimed} "
                             f"bytes) but the file holds {data} bytes of data (truncated or "
                             f"not what it claims)")
    return tuple(int(d) for d in shape), fortran, dtype


def _body(f: BinaryIO, shape: tuple[int, ...], fortran: bool, dtype: np.dtype,
          where: str) -> np.ndarray:
    """The data, read straight into the array (no second copy of a large bank)."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    a = np.empty(count, dtype=dtype)
    view = memoryview(a).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ArrayFileError(f"{where}: ends before its data does (truncated)")
        got += n
    return a.reshape(shape[::-1]).T.copy() if fortran else a.reshape(shape)


def read_npy(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """A ``.npy`` file's array, its header checked against the file's size first."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            shape, fortran, dtype = _header(f, size, str(path), max_bytes)
            return _body(f, shape, fortran, dtype, str(path))
    except OSError as exc:
        raise ArrayFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_npz(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """A ``.npz`` file's arrays by name, each member's header checked against the size the
    zip directory gives it, and all of them together at most ``max_bytes``."""
    arrays: dict[str, np.ndarray] = {}
    total = 0
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ArrayFileError(f"{path}: member {twice[0]!r} is stored twice")
        for info in infos:
            where = f"{path}: member {info.filename!r}"
            if not info.filename.endswith(".npy"):
                raise ArrayFileError(f"{where}: not a .npy member")
            total += info.file_size
            if total > max_bytes:
                raise ArrayFileError(f"{path}: its arrays hold more than {max_bytes} bytes")
            with z.open(info) as f:
                shape, fortran, dtype = _header(f, info.file_size, where, max_bytes)
                arrays[info.filename[:-4]] = _body(f, shape, fortran, dtype, where)
    return arrays


def nonfinite(a: np.ndarray) -> bool:
    """Whether a numeric array holds NaN or an infinity."""
    return a.dtype.kind == "f" and not bool(np.isfinite(a).all())
