"""A general bundle's reference bank enrolled on the device (``harken enroll``): one .npz of
arrays with its manifest inside, bound to the bundle's model by a sha256 over the arrays.
Read here, by the scorer's side, so that running a machine needs nothing of the enrolling
command (docs/agent.md "Enrolling a machine")."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

from harken.common.arrays import ArrayFileError, nonfinite, read_npz
from harken.agent.model.bundle import Bundle
from harken.common.atomic import atomic_file
from harken.common.errors import DataError
from harken.common.records import (Count, Finite, GammaParams, IsoTime, NewerRecord, Positive, Record,
                                   explain, record_version)

# The manifest's layout. 1: as 'harken enroll' wrote it when it first shipped
# (tests/data/records/enrolled-fan-v1.npz): its sha256 covers the arrays only. 2: the same
# keys, its sha256 covering the version, the model and the machine too, so that a bank
# copied to another machine, or edited to name it, does not pass (docs/agent.md).
BANK_VERSION = 2
# the most intervals a bank holds: its distance matrices grow as the square (4000
# intervals: 11 hours of 10-s intervals, 128 MB per matrix)
MAX_BANK_INTERVALS = 4000


class BankError(DataError):
    """An enrolled bank that cannot be used: missing, corrupt, or for another model."""


class EnrollSession(Record):
    """One ``harken enroll`` run that added to the bank."""
    source: str                     # "3 file(s)", "microphone 'hw:1,0'"
    intervals: int = Field(ge=1)
    created: IsoTime


class BankManifest(Record):
    """What an enrolled bank says of itself: the model it was made with, the audio behind
    it, the threshold fitted to that audio, and a SHA-256 binding it to its arrays."""
    version: Literal[1, 2]
    model: str = Field(min_length=1)            # the bundle's model id
    machine: str = Field(min_length=1)
    intervals: int = Field(ge=1, le=MAX_BANK_INTERVALS)   # in the bank, all sessions
    audio_s: Positive
    skipped_intervals: Count                    # silent, clipped or invalid, all sessions
    interval_s: Positive
    sessions: list[EnrollSession] = Field(min_length=1)
    threshold: Finite
    false_alarms_per_week: Positive
    threshold_how: str
    gamma: GammaParams
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def bank_digest(arrays: dict[str, np.ndarray], version: int = BANK_VERSION, model: str = "",
                machine: str = "") -> str:
    """The SHA-256 a bank's manifest states: of its arrays, and from version 2 on of its
    version, model and machine first (what it is bound to is inside what is hashed)."""
    h = hashlib.sha256()
    if version >= 2:
        h.update(json.dumps(["harken-bank", version, model, machine]).encode() + b"\0")
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def parse_manifest(raw: bytes, path: Path) -> BankManifest:
    """A bank's manifest from its stored JSON, checked field by field; anything wrong is
    one line naming the file and the key."""
    try:
        data = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BankError(f"{path}: the bank's manifest is not JSON ({exc}); enroll again") from None
    except RecursionError:
        raise BankError(f"{path}: the bank's manifest is nested too deeply to be one; "
                        f"enroll again") from None
    try:
        record_version(data, BANK_VERSION)
    except NewerRecord as exc:
        raise BankError(f"{path}: the bank's manifest: {exc}; upgrade harken, or enroll "
                        f"again") from None
    except ValueError as exc:
        raise BankError(f"{path}: the bank's manifest: {exc}; enroll again") from None
    try:
        return BankManifest.model_validate(data)
    except ValidationError as exc:
        raise BankError(f"{path}: the bank's manifest: {explain(exc)}; enroll again") from None


def load_bank(path: Path) -> tuple[dict[str, np.ndarray], BankManifest]:
    """The arrays and manifest of the bank file at ``path``, checked: readable, a valid
    manifest, untampered. Which model it belongs to is ``read_bank``'s check."""
    if not path.is_file():
        raise BankError(f"{path}: not a file; move it away and enroll again")
    try:
        arrays = read_npz(path)          # each member's header checked before it is read
        if "manifest" not in arrays:
            raise BankError(f"{path}: the bank holds no manifest (arrays "
                            f"{sorted(arrays)[:4]}...); enroll again")
        raw = arrays.pop("manifest").tobytes()
    except BankError:
        raise
    except ArrayFileError as exc:
        raise BankError(f"{exc}; enroll again") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BankError(f"{path}: not a readable enrolled bank ({exc}); enroll again") from None
    manifest = parse_manifest(raw, path)
    if bank_digest(arrays, manifest.version, manifest.model, manifest.machine) != manifest.sha256:
        raise BankError(f"{path}: the arrays do not match the bank's sha256 (file corrupt or "
                        f"changed); enroll again")
    return arrays, manifest


def read_bank(path: Path, bundle: Bundle, machine: str
              ) -> tuple[dict[str, np.ndarray], BankManifest]:
    """The arrays and manifest of an enrolled bank, checked: readable, untampered, made
    with this bundle's model for this machine."""
    if not path.exists() and not path.is_symlink():
        raise BankError(f"{path}: no enrolled bank; the bundle {bundle.model_id} is a general "
                        f"one: run 'harken enroll --config CONFIG' first")
    arrays, manifest = load_bank(path)
    if manifest.model != bundle.model_id:
        raise BankError(f"{path}: enrolled with model {manifest.model!r}, but the "
                        f"bundle is {bundle.model_id!r}; enroll again with this bundle")
    if manifest.machine != machine:
        raise BankError(f"{path}: enrolled for machine {manifest.machine!r}, but this is "
                        f"machine {machine!r} (a bank copied from another machine?); enroll "
                        f"this machine")
    return arrays, manifest


def write_bank(path: Path, arrays: dict[str, np.ndarray], manifest: BankManifest) -> None:
    """The bank as one .npz (no pickle), atomically: the old bank stays whole until the
    rename, so a failed write never leaves a bank that is neither."""
    if manifest.sha256 != bank_digest(arrays, manifest.version, manifest.model, manifest.machine):
        raise ValueError("write_bank: the manifest's sha256 is not that of the arrays")
    bad = next((k for k, a in arrays.items() if nonfinite(np.asarray(a))), None)
    if bad is not None:
        raise ValueError(f"write_bank: array '{bad}' holds NaN or infinite values")
    raw = json.dumps(manifest.model_dump(mode="json")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, manifest=np.frombuffer(raw, np.uint8), **arrays)


def rule_arrays(bank: dict[str, np.ndarray], bundle: Bundle) -> dict[str, np.ndarray]:
    """The spectral-knn rule's arrays from an enrolled bank."""
    e = bundle.manifest.enrollment
    return {**{k: v for k, v in bank.items() if not k.startswith("raw_")},
            "fusion_weights": np.asarray(e.weights), "n_mels": np.asarray(bundle.spec.n_mels)}


def without_copies(new: dict[str, np.ndarray], old: dict[str, np.ndarray] | None
                   ) -> tuple[dict[str, np.ndarray], int]:
    """The new intervals (a vector per interval for each name) without exact copies of
    each other or of a bank's (``old``, holding them as ``raw_<name>``): the same audio
    enrolled twice would score 0 held out and collapse the threshold. Returns them and how
    many were left out."""
    names = list(new)

    def key(i: int, arrays: dict[str, np.ndarray], prefix: str = "") -> bytes:
        return b"".join(np.ascontiguousarray(arrays[f"{prefix}{b}"][i]).tobytes()
                        for b in names)
    seen = set() if old is None else {key(i, old, "raw_")
                                      for i in range(len(old[f"raw_{names[0]}"]))}
    keep = []
    for i in range(len(new[names[0]])):
        k = key(i, new)
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return {b: v[keep] for b, v in new.items()}, len(new[names[0]]) - len(keep)
