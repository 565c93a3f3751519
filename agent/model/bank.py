"""A general bundle's reference bank enrolled on the device (``harken enroll``): one .npz of
arrays with its manifest inside, bound to the bundle's model by a sha256 over the arrays.
Read here, by the scorer's side, so that running a machine needs nothing of the enrolling
command (docs/agent.md "Enrolling a machine")."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from harken.agent.model.bundle import Bundle
from harken.common.errors import DataError

BANK_VERSION = 1


class BankError(DataError):
    """An enrolled bank that cannot be used: missing, corrupt, or for another model."""


def bank_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def read_bank(path: Path, bundle: Bundle) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and manifest of an enrolled bank, checked: readable, untampered, made
    with this bundle's model."""
    if not path.is_file():
        raise BankError(f"{path}: no enrolled bank; the bundle {bundle.model_id} is a general "
                        f"one: run 'harken enroll --config CONFIG' first")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        manifest = json.loads(arrays.pop("manifest").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError,
            zipfile.BadZipFile) as exc:
        raise BankError(f"{path}: not a readable enrolled bank ({exc}); enroll again") from None
    if bank_digest(arrays) != manifest.get("sha256"):
        raise BankError(f"{path}: the arrays do not match the bank's sha256 (file corrupt or "
                        f"changed); enroll again")
    if manifest.get("model") != bundle.model_id:
        raise BankError(f"{path}: enrolled with model {manifest.get('model')!r}, but the "
                        f"bundle is {bundle.model_id!r}; enroll again with this bundle")
    return arrays, manifest


def rule_arrays(bank: dict[str, np.ndarray], bundle: Bundle) -> dict[str, np.ndarray]:
    """The spectral-knn rule's arrays from an enrolled bank."""
    e = bundle.manifest.enrollment
    return {**{k: v for k, v in bank.items() if not k.startswith("raw_")},
            "fusion_weights": np.asarray(e.weights), "n_mels": np.asarray(bundle.spec.n_mels)}
