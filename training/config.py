"""Training configurations: dataclasses with defaults, overridable from the command line
with ``--set key=value`` (types checked, unknown keys named)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from harken.common.errors import UsageError

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """Settings every trained method shares."""
    seed: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1        # of the training clips, per (section, domain); never test
    patience: int = 6                # epochs without a better validation loss before stopping
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise UsageError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.lr <= 0:
            raise UsageError(f"lr must be positive, got {self.lr}")


def _expected(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {list(typing.get_args(kind))}"
    if kind is bool:
        return "true or false"
    return getattr(kind, "__name__", str(kind))


def _coerce(text: str, kind: Any, key: str) -> Any:
    """The text of ``--set key=text`` as the field's type: pydantic's lax conversion (the
    config's own validator library), so "3" is an int, "yes" a bool, "0.5" a float."""
    from pydantic import TypeAdapter, ValidationError
    try:
        return TypeAdapter(kind).validate_python(text)
    except ValidationError:
        raise UsageError(f"--set {key}={text}: expected {_expected(kind)}") from None


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
