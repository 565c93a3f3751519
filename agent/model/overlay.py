"""The feedback overlay: the intervals an operator marked normal, kept beside the bank they
join, in ``agent.state_dir/feedback-<machine>.npz`` (docs/agent.md "Feedback: how the bank
and threshold change").

The bundle and the enrolled bank are never modified: the overlay holds the added rows (the
raw statistics of each interval, per name, with its seq, time and the change that added
it) and a manifest with every change (who, when, how, which seqs, the threshold before and
after (the same: feedback keeps it) and the base it was kept from). ``harken run`` applies
it on top of the bank (``BankRule.with_references``); undo drops the last change. Like the enrolled
bank (agent/model/bank.py) it is one .npz without pickle, a SHA-256 over everything it says
binds it to its model and machine, and it is written atomically: a kill leaves the old
overlay or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

from harken.agent.model.bank import MAX_BANK_INTERVALS, BankError
from harken.common.arrays import ArrayFileError, read_npz
from harken.common.atomic import atomic_file
from harken.common.records import (Finite, IsoTime, NewerRecord, Record, explain,
                                   record_version)

OVERLAY_VERSION = 1
# HARKEN_FEEDBACK_PAUSE=1: the write stops once the temporary file is complete and synced,
# before the rename, after touching ``.feedback-M.npz.paused`` (a test kills it there:
# tests/agent/test_feedback.py)
PAUSE_ENV = "HARKEN_FEEDBACK_PAUSE"
AGAIN = ("move it away to run without the feedback it holds (the audit log lists what it "
         "was), or put back the copy that was there")


class OverlayError(BankError):
    """A feedback overlay that cannot be used: corrupt, changed, or another model's."""


class Base(Record):
    """The threshold a feedback kept: where it came from and its value. The kept
    threshold holds only while this is still the base (agent/build.py)."""
    kind: Literal["override", "enrollment", "bundle", "config"]
    value: Finite


class Change(Record):
    """One feedback: the intervals it added and the threshold it set."""
    id: int = Field(ge=1)
    at: IsoTime
    operator: str = Field(min_length=1, max_length=200)
    via: str = Field(min_length=1, max_length=32)
    command_id: str | None = Field(None, max_length=128)
    seqs: list[int] = Field(min_length=1)
    threshold_before: Finite
    threshold_after: Finite
    base: Base


class OverlayManifest(Record):
    version: Literal[1]
    model: str = Field(min_length=1)
    machine: str = Field(min_length=1)
    section: int = Field(ge=0)
    changes: list[Change] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Overlay:
    """The overlay's rows (per name (n, width) raw vectors; ``seq``, ``ts``, ``change`` per
    row) and its changes, oldest first."""

    def __init__(self, rows: dict[str, np.ndarray], seq: np.ndarray, ts: np.ndarray,
                 change: np.ndarray, changes: list[Change]) -> None:
        self.rows, self.seq, self.ts, self.change = rows, seq, ts, change
        self.changes = changes

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def last(self) -> Change | None:
        return self.changes[-1] if self.changes else None

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"rows_{k}": v for k, v in self.rows.items()}, "row_seq": self.seq,
                "row_ts": self.ts, "row_change": self.change}

    def added(self, rows: dict[str, np.ndarray], seq: np.ndarray, ts: np.ndarray,
              change: Change) -> Overlay:
        """This overlay with one more change and its rows."""
        n = len(seq)
        new = {k: np.concatenate([self.rows[k], np.asarray(v, np.float32)]) if k in self.rows
               else np.asarray(v, np.float32) for k, v in rows.items()}
        return Overlay(new, np.concatenate([self.seq, np.asarray(seq, np.int64)]),
                       np.concatenate([self.ts, np.asarray(ts, np.float64)]),
                       np.concatenate([self.change, np.full(n, change.id, np.int64)]),
                       [*self.changes, change])

    def without_last(self) -> Overlay:
        keep = self.change != self.changes[-1].id
        return Overlay({k: v[keep] for k, v in self.rows.items()}, self.seq[keep],
                       self.ts[keep], self.change[keep], self.changes[:-1])

    @classmethod
    def empty(cls, names: list[str], widths: list[int]) -> Overlay:
        return cls({k: np.zeros((0, w), np.float32) for k, w in zip(names, widths)},
                   np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64), [])


def overlay_file(state_dir: Path, machine: str) -> Path:
    return Path(state_dir) / f"feedback-{machine}.npz"


def digest(arrays: dict[str, np.ndarray], manifest: dict) -> str:
    """SHA-256 of the manifest (all but its sha256, canonical JSON) and every array."""
    h = hashlib.sha256()
    head = {k: v for k, v in manifest.items() if k != "sha256"}
    h.update(json.dumps(["harken-feedback", head], sort_keys=True).encode() + b"\0")
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def read_overlay(path: Path, model: str, machine: str, section: int) -> Overlay | None:
    """The overlay at ``path`` (None where there is none), checked: readable, untampered,
    of this model, machine and section. Anything wrong is one OverlayError naming the file
    and what to do."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise OverlayError(f"{path}: the feedback overlay is not a file; {AGAIN}")
    try:
        arrays = read_npz(path)
        if "manifest" not in arrays:
            raise OverlayError(f"{path}: the feedback overlay holds no manifest; {AGAIN}")
        raw = arrays.pop("manifest").tobytes()
    except OverlayError:
        raise
    except ArrayFileError as exc:
        raise OverlayError(f"{exc}; {AGAIN}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise OverlayError(f"{path}: not a readable feedback overlay ({exc}); {AGAIN}") from None
    try:
        data = json.loads(raw.decode())
        record_version(data, OVERLAY_VERSION)
        manifest = OverlayManifest.model_validate(data)
    except NewerRecord as exc:
        raise OverlayError(f"{path}: the feedback overlay: {exc}; upgrade harken, or "
                           f"{AGAIN}") from None
    except ValidationError as exc:
        raise OverlayError(f"{path}: the feedback overlay's manifest: {explain(exc)}; "
                           f"{AGAIN}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OverlayError(f"{path}: the feedback overlay's manifest is not JSON ({exc}); "
                           f"{AGAIN}") from None
    if digest(arrays, data) != manifest.sha256:
        raise OverlayError(f"{path}: the feedback overlay does not match its sha256 (file "
                           f"corrupt or changed); {AGAIN}")
    if (manifest.model, manifest.machine, manifest.section) != (model, machine, section):
        raise OverlayError(
            f"{path}: feedback given to model {manifest.model!r}, machine "
            f"{manifest.machine!r}, section {manifest.section}, but this is model {model!r}, "
            f"machine {machine!r}, section {section} (the bundle was replaced, or the file "
            f"copied from another machine); {AGAIN}")
    try:
        rows = {k[len("rows_"):]: np.asarray(v, np.float32) for k, v in arrays.items()
                if k.startswith("rows_")}
        seq, ts = np.asarray(arrays["row_seq"], np.int64), np.asarray(arrays["row_ts"])
        change = np.asarray(arrays["row_change"], np.int64)
    except KeyError as exc:
        raise OverlayError(f"{path}: the feedback overlay lacks array {exc}; {AGAIN}") from None
    n = len(seq)
    if not rows or any(v.ndim != 2 or len(v) != n for v in rows.values()) or \
            len(ts) != n or len(change) != n or \
            set(change.tolist()) != {c.id for c in manifest.changes} or n > MAX_BANK_INTERVALS:
        raise OverlayError(f"{path}: the feedback overlay's rows do not agree with its "
                           f"changes; {AGAIN}")
    return Overlay(rows, seq, ts, change, list(manifest.changes))


def write_overlay(path: Path, overlay: Overlay, model: str, machine: str, section: int) -> None:
    """The overlay, atomically (harken.common.atomic); one without changes removes the
    file (the machine is back to its bank without feedback)."""
    for old in path.parent.glob(f".{path.name}.*.tmp"):      # a killed write's leftover
        old.unlink(missing_ok=True)
    if not overlay.changes:
        if path.exists():
            path.unlink()
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    arrays = overlay.arrays()
    head = {"version": OVERLAY_VERSION, "model": model, "machine": machine, "section": section,
            "changes": [c.model_dump(mode="json") for c in overlay.changes]}
    manifest = OverlayManifest.model_validate({**head, "sha256": digest(arrays, head)})
    raw = json.dumps(manifest.model_dump(mode="json")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, manifest=np.frombuffer(raw, np.uint8), **arrays)
        if os.environ.get(PAUSE_ENV):
            f.flush()
            os.fsync(f.fileno())
            path.with_name(f".{path.name}.paused").touch()
            while True:                        # killed here by the test that asked
                time.sleep(3600)
