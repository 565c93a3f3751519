"""Training configurations: dataclasses with defaults, overridable from the command line
with ``--set key=value`` (types checked, unknown keys named).

Every method's settings model (a frozen dataclass) is checked by one validator,
``check_settings``, from its fields' annotations: the type (a float must be finite), and
the range and unit a field declares with ``Annotated[..., Bound(...)]``. A method (or a
plugin) still owns its settings and declares their ranges; what a value out of range
means is said in one line naming the key (docs/reliability.md). A value that a method
silently caps to what the data allows (a kNN k above the clips there are) is warned about
and recorded as used (``Caps``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np

from harken.common.errors import UsageError

C = TypeVar("C")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bound:
    """A setting's range (each end optional, open or closed) and what it measures."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def holds(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self) -> str:
        """``at least 1``, ``above 0 and below 0.5``, with the unit in brackets."""
        parts = []
        if self.lo is not None:
            parts.append(f"above {_num(self.lo)}" if self.lo_open else f"at least {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"below {_num(self.hi)}" if self.hi_open else f"at most {_num(self.hi)}")
        return " and ".join(parts) + (f" ({self.unit})" if self.unit else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def at_least(lo: float, unit: str = "") -> Bound:
    return Bound(lo=lo, unit=unit)


def above(lo: float, unit: str = "") -> Bound:
    return Bound(lo=lo, lo_open=True, unit=unit)


def between(lo: float, hi: float, unit: str = "", hi_open: bool = False) -> Bound:
    return Bound(lo=lo, hi=hi, hi_open=hi_open, unit=unit)


# The shapes most settings take (a method may declare its own Bound)
Count = Annotated[int, at_least(1)]                    # epochs, widths, neighbours
Size = Annotated[int, at_least(0)]                     # 0 = off / all / default
Rate = Annotated[float, above(0)]
Weight = Annotated[float, at_least(0)]                 # a loss weight; 0 = off
Probability = Annotated[float, between(0, 1, "a probability")]
Fraction = Annotated[float, between(0, 1, "a probability", hi_open=True)]
Decibels = Annotated[float, between(-120, 120, "dB")]
Seed = Annotated[int, between(0, 2**32 - 1, "random seed")]


def _kind_of(hint: Any) -> tuple[Any, list[Bound]]:
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, [m for m in meta if isinstance(m, Bound)]
    return hint, []


def _type_ok(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return (isinstance(value, (int, float, np.integer, np.floating))
                and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))
    if kind is str:
        return isinstance(value, str)
    return True                 # a type this checker does not know: the method checks it


def _expected(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {list(typing.get_args(kind))}"
    return {bool: "true or false", int: "a whole number", float: "a finite number",
            str: "text"}.get(kind, getattr(kind, "__name__", str(kind)))


def check_settings(config: Any) -> None:
    """Every field of a settings dataclass against its annotation: the type (floats
    finite) and its ``Bound``; UsageError naming the key, the value and what was expected."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, bounds = _kind_of(hints.get(f.name, Any))
        where = "".join(f" {b.describe()}" for b in bounds)
        if not _type_ok(value, kind):
            raise UsageError(f"{f.name} must be {_expected(kind)}{where}, got {value!r}")
        for b in bounds:
            if not b.holds(value):
                raise UsageError(f"{f.name} must be {b.describe()}, got {value!r}")


class Caps(dict):
    """Settings a method used at a lower value than asked, because the data allows no more
    (a kNN k above the clips in a section): key -> {"asked", "used"}. Each is warned about
    once while training (``warn``; a loaded run is not warned about again) and goes into
    run.json's params as ``capped``."""

    def __init__(self, warn: bool = True) -> None:
        super().__init__()
        self.warn = warn

    def cap(self, key: str, asked: int, limit: int, why: str) -> int:
        """``min(asked, limit)``, noted (and warned about) when it is below ``asked``."""
        used = max(1, min(asked, limit))
        if used < asked:
            if key not in self and self.warn:
                log.warning(f"WARNING: setting {key}={asked} is more than {why}; {used} used "
                            "(recorded in run.json's params as 'capped')")
            self[key] = {"asked": asked, "used": min(used, self.get(key, {}).get("used", used))}
        return used


@dataclass(frozen=True)
class TrainConfig:
    """Settings every trained method shares."""
    seed: Seed = 0
    epochs: Count = 30
    batch_size: Count = 256
    lr: Annotated[float, above(0, "the optimiser's learning rate")] = 1e-3
    weight_decay: Annotated[float, at_least(0, "L2 penalty on the weights")] = 0.0
    # of the training clips, per (section, domain); never test
    val_fraction: Annotated[float, between(0, 0.5, "fraction of the training clips",
                                           hi_open=True)] = 0.1
    # epochs without a better validation loss before stopping
    patience: Annotated[int, at_least(1, "epochs")] = 6
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    # torch CPU threads; 0 = torch's default
    threads: Annotated[int, between(0, 4096, "CPU threads; 0 = torch's default")] = 0

    def __post_init__(self) -> None:
        check_settings(self)


def _coerce(text: str, kind: Any, key: str) -> Any:
    """The text of ``--set key=text`` as the field's type: pydantic's lax conversion (the
    config's own validator library), so "3" is an int, "yes" a bool, "0.5" a float."""
    from pydantic import TypeAdapter, ValidationError
    try:
        return TypeAdapter(kind).validate_python(text)
    except ValidationError:
        expected = (_expected(kind) if typing.get_origin(kind) is typing.Literal or kind is bool
                    else getattr(kind, "__name__", str(kind)))
        raise UsageError(f"--set {key}={text}: expected {expected}") from None


def with_overrides(config: C, items: list[str] | None) -> C:
    """``["epochs=5", "width=0.35"]`` applied to a config dataclass."""
    if not items:
        return config
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"--set {item}: expected KEY=VALUE")
        if key not in hints:
            raise UsageError(f"--set {key}: no such setting for this method; "
                             f"settings: {', '.join(sorted(hints))}")
        changes[key] = _coerce(value.strip(), hints[key], key)
    return dataclasses.replace(config, **changes)


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
