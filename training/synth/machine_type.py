"""What a synthetic machine type is: its geometry per section, its operating points per
domain, its renderer and its faults. Kept apart from the machine models themselves so that
machines.py (the six tuning types) and plant_machines.py (the types set apart for
validation and test, docs/corpus.md) can both use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Rendered:
    normal: np.ndarray                 # the machine, including any parametric fault
    added: np.ndarray | None = None    # an additive fault's own sound (unit-free)


@dataclass(frozen=True)
class MachineType:
    name: str
    faults: tuple[str, ...]
    # section -> geometry (a dict of physical constants of that unit)
    geometry: Callable[[int], dict]
    # (section, domain) -> operating points, each an ordered dict of file-name attributes
    operating_points: Callable[[int, str], list[dict]]
    render: Callable[[np.random.Generator, dict, dict, int, str | None, float], Rendered]
    notes: str = field(default="")
    # Per-fault shift of the anomaly-to-normal ratio (dB): broadband faults in bands where
    # the machine itself is quiet are heard at much lower levels, so they are set lower.
    anr_offset_db: dict = field(default_factory=dict)
