"""What every stored record shares: a frozen pydantic model that refuses unknown keys,
wrong types and nan/inf, a ``version`` read before anything else, and one line naming the
first bad key when a file does not fit. The device keeps such records across upgrades (the
enrolled bank's manifest, the calibration override), so a record written by an older or a
newer release must be recognised as such, not met with a KeyError (docs/agent.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class Record(BaseModel):
    """A stored record: strict (an int is a number, a string is not), frozen, no extras."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _iso_time(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    return value


# kept as the text that was written (an ISO 8601 time), so that it is shown as it was
IsoTime = Annotated[str, AfterValidator(_iso_time)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class GammaParams(Record):
    """The gamma distribution a threshold was set on (agent/decision/thresholds.py GammaFit)."""
    shape: Positive
    loc: Finite
    scale: Positive


def explain(exc: ValidationError) -> str:
    """The first thing wrong with a record, as ``key 'a.b' = value: what was expected``."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(the whole record)"
    if err["type"] == "missing":
        return f"key '{key}' missing"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    value = repr(err.get("input"))
    if len(value) > 60:
        value = value[:57] + "..."
    return f"key '{key}' = {value}: {err['msg']}"


class NewerRecord(ValueError):
    """A record written by a later release than this one, in a layout it cannot know."""


def record_version(data: Any, current: int) -> int:
    """The version a record says it has (0: none written). ValueError: not a JSON object,
    or a version that is not a whole number; NewerRecord: newer than ``current``."""
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"key 'version' = {version!r}: not a version number")
    if version > current:
        raise NewerRecord(f"version {version} is newer than this harken reads ({current})")
    return version
