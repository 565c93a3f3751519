"""Training configurations: dataclasses with defaults, overridable from the command line
with ``--set key=value`` (types checked, unknown keys named)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from harken.agent.errors import UsageError

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


def _coerce(text: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        for option in options:
            try:
                return _coerce(text, option, key)
            except ValueError:
                continue
        names = [getattr(o, "__name__", str(o)) for o in options]
        raise UsageError(f"--set {key}={text}: expected one of {names}")
    if origin is typing.Literal:
        allowed = typing.get_args(kind)
        if text not in allowed:
            raise UsageError(f"--set {key}={text}: expected one of {list(allowed)}")
        return text
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--set {key}={text}: expected true or false")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected {kind.__name__}") from None
    raise UsageError(f"--set {key}: cannot set a field of type {kind}")


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
