"""The calibration override: ``harken calibrate``'s threshold for one machine, kept in
``agent.state_dir/threshold-<machine>.json`` beside the bundle it never modifies (docs/agent.md
"Calibration"). Written and read only here, as a typed record with a version, so that an
override written by an earlier release still loads, and a damaged one (half a file, a
threshold that is not a finite number) stops ``harken run`` with one line saying what to do
rather than running on a wrong threshold.

Versions: 0 (no ``version`` key) is what calibrate wrote up to and including the release of
commit 61a0e3e (tests/data/records/threshold-fan-v1.json): the same keys as version 1.
Version 2 adds ``machine`` and a ``sha256`` over every other key (the version, the model
and the machine included): an override copied to another machine, or edited by hand, is
refused instead of deciding on a threshold nobody fitted there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, ValidationError, model_validator

from harken.common.atomic import write_atomic
from harken.common.errors import ConfigError
from harken.common.records import (Count, Finite, GammaParams, IsoTime, NewerRecord, Positive,
                                   Record, explain, record_version)

OVERRIDE_VERSION = 2
AGAIN = "delete it or run 'harken calibrate' again"


class CalibrationOverride(Record):
    """A calibrated threshold and what it was fitted on."""
    version: Literal[1, 2]
    threshold: Finite
    false_alarms_per_week: Positive
    interval_s: Positive
    exceedance_per_interval: float = Field(gt=0, le=1)
    intervals: int = Field(ge=1)                # scored intervals the fit saw
    skipped_intervals: Count                    # silent, clipped or invalid
    score_mean: Finite
    score_max: Finite
    gamma: GammaParams
    model: str = Field(min_length=1)            # the bundle's model id
    bundle_threshold: Finite | None             # what it replaces (None: the bundle has none)
    source: str                                 # "files", "microphone 'hw:1,0'"
    channel: int | None = Field(ge=0)           # of multi-channel audio (None: the mix)
    created: IsoTime
    machine: str | None = Field(None, min_length=1)   # version 2 on: the machine it is for
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")   # version 2 on
    # what scored the intervals the threshold was fitted on: the digest of the model file
    # and the rule arrays it scored with (agent/model/bundle.py ``Bundle.scorer_digest``);
    # absent in overrides written before it, which are checked by their model id only
    scorer: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _bound(self) -> CalibrationOverride:
        """Version 2 names its machine and carries the digest of what it says."""
        if self.version >= 2:
            missing = next((k for k in ("machine", "sha256") if getattr(self, k) is None), None)
            if missing:
                raise ValueError(f"key '{missing}' missing (version 2)")
        return self

    def fields(self) -> dict:
        """What is written: a version-1 record without the keys it did not have."""
        data = self.model_dump(mode="json")
        if self.version < 2:
            data.pop("machine"), data.pop("sha256")
        if data.get("scorer") is None:     # as written before the key existed (its digest)
            data.pop("scorer", None)
        return data

    def digest(self) -> str:
        """The SHA-256 of every key but ``sha256`` itself (canonical JSON)."""
        data = {k: v for k, v in self.fields().items() if k != "sha256"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @classmethod
    def create(cls, **fields) -> CalibrationOverride:
        """A new override of the current version, checked, with its digest."""
        draft = cls.model_validate({"version": OVERRIDE_VERSION, **fields, "sha256": "0" * 64})
        return draft.sealed()

    def sealed(self) -> CalibrationOverride:
        """This override with its digest set."""
        return self.model_copy(update={"sha256": self.digest()})


class _HasOverrideFile(Protocol):
    """A machine's config (agent/config.py sits above this module and is not imported)."""
    @property
    def override_file(self) -> Path: ...


def _migrate(data: dict, version: int) -> dict:
    """An older layout's keys as the current version's."""
    if version == 0:                       # unversioned: version 1's keys, no version
        data = {"version": 1, **data}
    return data


def load_override(path: Path) -> CalibrationOverride | None:
    """The override at ``path`` (None if there is none), migrated to the current version
    and checked; anything wrong is one ConfigError naming the file and what to do."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():               # a folder, a dangling link: never "no override"
        raise ConfigError(f"{path}: calibration override is not a file; move it away or "
                          f"run 'harken calibrate' again")
    try:
        data = json.loads(path.read_text())
        override = CalibrationOverride.model_validate(
            _migrate(data, record_version(data, OVERRIDE_VERSION)))
    except OSError as exc:
        raise ConfigError(f"{path}: calibration override unreadable "
                          f"({exc.strerror or exc}); {AGAIN}") from None
    except NewerRecord as exc:
        raise ConfigError(f"{path}: calibration override {exc}; upgrade harken, or "
                          f"{AGAIN}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: calibration override unreadable ({explain(exc)}); "
                          f"{AGAIN}") from None
    except ValueError as exc:            # not JSON (UnicodeDecodeError too), not an object
        raise ConfigError(f"{path}: calibration override unreadable ({exc}); {AGAIN}") from None
    except RecursionError:               # JSON nested deeper than the parser goes
        raise ConfigError(f"{path}: calibration override unreadable (nested too deeply to "
                          f"be one); {AGAIN}") from None
    if override.version >= 2 and override.sha256 != override.digest():
        raise ConfigError(f"{path}: calibration override changed since it was written (its "
                          f"sha256 does not match what it says); {AGAIN}")
    return override


def read_override(config: _HasOverrideFile) -> CalibrationOverride | None:
    """The calibration override for this machine, if one was written."""
    return load_override(config.override_file)


def write_override(path: Path, override: CalibrationOverride) -> None:
    """Atomically (harken.common.atomic): never a half-written override. A version-2
    override is written with its digest."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, where the calibration override goes; move "
                          f"it away and calibrate again")
    if override.version >= 2 and override.sha256 != override.digest():
        override = override.sealed()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(override.fields(), indent=2))
