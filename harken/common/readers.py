"""The one reader of the files the workstation tools load (run.json, metrics.json, a
run's ``.npz`` banks and ``.npy`` arrays, CSVs, corpus.json): whatever is wrong with a
file (missing, unreadable, not UTF-8, not JSON, nested too deeply, a zip cut short, a
pickled array, the wrong type, a missing field) becomes one ``FileFormatError`` line
naming the file and what was expected, never a traceback (docs/reliability.md).

Callers say what they need (``require`` the keys and their types, the arrays by name);
a caller with its own error class (a run's RunError) catches FileFormatError or passes
``error=``."""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from harken.common.arrays import ArrayFileError, read_npy, read_npz
from harken.common.errors import HarkenError
from harken.common.records import explain

M = TypeVar("M", bound=BaseModel)

MAX_JSON_BYTES = 64 * 1024 * 1024     # no metrics or run record comes near; a hostile one might


class FileFormatError(HarkenError, ValueError):
    """A file the tools cannot use as it is; the message names it."""


def _read_bytes(path: Path, what: str, limit: int, error: type[HarkenError]) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(f"{path}: {size} bytes, too large for {what} (at most {limit})")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file ({what} expected)") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def read_json(path: str | Path, what: str = "a JSON file", *, max_bytes: int = MAX_JSON_BYTES,
              error: type[HarkenError] = FileFormatError) -> Any:
    """The decoded contents of a JSON file."""
    path = Path(path)
    raw = _read_bytes(path, what, max_bytes, error)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not {what} (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not {what} (not valid JSON: {exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{path}: not {what} (JSON nested too deeply)") from None


_TYPES = {dict: "an object", list: "a list", str: "text", int: "a whole number",
          float: "a number", bool: "true or false"}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False                    # JSON true is no number here
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


def require(data: Any, fields: Mapping[str, type | tuple[type, ...]], where: str | Path,
            error: type[HarkenError] = FileFormatError) -> dict:
    """``data`` as a JSON object holding each of ``fields`` (a dotted key -> its type);
    one line naming the file and the first key that is missing or of the wrong type."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a JSON object, got {_json_type(data)}")
    for key, kind in fields.items():
        node: Any = data
        for i, part in enumerate(key.split(".")):
            if not isinstance(node, dict) or part not in node:
                raise error(f"{where}: missing field '{key}'")
            node = node[part]
        if not _is(node, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise error(f"{where}: field '{key}' should be "
                        f"{' or '.join(_TYPES.get(k, k.__name__) for k in kinds)}, got "
                        f"{_json_type(node)} {_short(node)}")
    return data


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json_object(path: str | Path, what: str, fields: Mapping[str, type | tuple[type, ...]]
                     | None = None, *, error: type[HarkenError] = FileFormatError) -> dict:
    """A JSON object with (at least) ``fields``."""
    return require(read_json(path, what, error=error), fields or {}, path, error)


def read_model(path: str | Path, model: type[M], what: str, *,
               error: type[HarkenError] = FileFormatError) -> tuple[M, Any]:
    """A JSON file checked against a pydantic ``model``: the model and the decoded data.
    The first field that does not fit is named (harken/common/records.py ``explain``)."""
    data = read_json(path, what, error=error)
    if not isinstance(data, dict):
        raise error(f"{path}: not {what} (expected a JSON object, got {_json_type(data)})")
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        raise error(f"{path}: not {what}: {explain(exc)}") from None


# a run's arrays have no size cap of their own: each header must still match the bytes the
# file holds (harken/common/arrays.py), so nothing is allocated that the file does not hold
_NO_CAP = 1 << 62


def _array_error(exc: ArrayFileError, path: Path, what: str, error: type[HarkenError]
                 ) -> HarkenError:
    """One line naming the file: the array reader's reason, after 'cannot read'."""
    reason = str(exc)
    reason = reason[len(str(path)) + 2:] if reason.startswith(f"{path}: ") else reason
    return error(f"{path}: cannot read {what} ({reason})")


def read_arrays(path: str | Path, names: Iterable[str] | None = None, what: str = "arrays",
                *, error: type[HarkenError] = FileFormatError) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (plain numbers only, each header checked before its
    data is read: harken/common/arrays.py); ``names`` that must be among them. A file cut
    short (BadZipFile, EOFError) is one line."""
    path = Path(path)
    try:
        arrays = read_npz(path, _NO_CAP)
    except FileNotFoundError:
        raise error(f"{path}: no such file ({what} expected)") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile):
        raise error(f"{path}: not a readable .npz archive of {what} (cut short or damaged)") from None
    except ArrayFileError as exc:
        raise _array_error(exc, path, what, error) from None
    except (ValueError, OSError, KeyError, NotImplementedError) as exc:
        raise error(f"{path}: cannot read {what} ({_first_line(exc)})") from None
    missing = [n for n in (names or ()) if n not in arrays]
    if missing:
        raise error(f"{path}: no array {missing[0]!r} among {sorted(arrays)[:8]}")
    return arrays


def read_array(path: str | Path, what: str = "an array", *,
               error: type[HarkenError] = FileFormatError) -> np.ndarray:
    """One ``.npy`` array (plain numbers only, its header checked before its data is read:
    harken/common/arrays.py)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file ({what} expected)")
    if zipfile.is_zipfile(path):
        raise error(f"{path}: an .npz archive where {what} (.npy) was expected")
    try:
        return read_npy(path, _NO_CAP)
    except ArrayFileError as exc:
        raise _array_error(exc, path, what, error) from None


def read_csv(path: str | Path, columns: tuple[type, ...], what: str = "a CSV file",
             header: bool = False, *, error: type[HarkenError] = FileFormatError
             ) -> list[tuple]:
    """Rows of a CSV file, each converted to ``columns`` (str, int, float: float refuses
    nan and inf); one line naming the file and the row that does not fit."""
    path = Path(path)
    raw = _read_bytes(path, what, MAX_JSON_BYTES, error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not {what} (not UTF-8 text)") from None
    rows, n, row = [], 0, []
    try:
        for n, row in enumerate(csv.reader(text.splitlines()), start=1):
            if (header and n == 1) or not row:
                continue
            if len(row) != len(columns):
                raise ValueError(f"{len(row)} column(s), {len(columns)} expected")
            converted = tuple(kind(v) for kind, v in zip(columns, row))
            if any(isinstance(v, float) and not np.isfinite(v) for v in converted):
                raise ValueError("a value that is not a finite number")
            rows.append(converted)
    except (ValueError, csv.Error) as exc:
        raise error(f"{path}: line {n} does not fit {what} ({exc}): "
                    f"{','.join(row)[:60]!r}") from None
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
