"""One check of a run's arrays against its run.json, made when the run is loaded (so
evaluate, export, verify and refit all see it): every array the run needs is there, the
shapes agree with the feature settings and with each other, and every value is a finite
number. A tampered or mixed-up file is then one line naming it, not a traceback or a
score of NaN later (docs/reliability.md, workstation: corpora, settings and files).

The shape rules are the device's own (agent/model/rules/): what a bundle would refuse, a
run refuses when it is loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from harken.agent.model.rules import make_rule
from harken.agent.model.rules.base import RuleError
from harken.common.errors import DataError
from harken.training.runs import RunError

AGAIN = "the run's files do not fit its run.json: train it again"


def check_finite(path: Path | str, arrays: Mapping[str, np.ndarray]) -> None:
    """Every float array of ``path`` holds only finite numbers."""
    for name, a in arrays.items():
        if np.asarray(a).dtype.kind in "fc" and not np.isfinite(a).all():
            where = f"array {name!r}" if len(arrays) > 1 else "the array"
            raise RunError(f"{path}: {where} holds NaN or infinite values ({AGAIN})")


def check_shape(path: Path | str, array: np.ndarray, expected: tuple[int | None, ...],
                meaning: str) -> None:
    """``array`` has ``expected`` shape (None: any length on that axis)."""
    shape = np.shape(array)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        want = "x".join("any" if e is None else str(e) for e in expected) or "a single value"
        raise RunError(f"{path}: shape {'x'.join(map(str, shape)) or 'a single value'}, "
                       f"expected {want} ({meaning}; {AGAIN})")


def check_rule_arrays(sections: Iterable[int], rule: str,
                      arrays_of: Callable[[int], Mapping[str, np.ndarray]],
                      file_of: Callable[[int], Path | str], width: int | None = None) -> None:
    """Each section's arrays as the device's ``rule`` checks them (names, shapes, finite
    values); ``width``: the model window the arrays must fit (None: not checked)."""
    for s in sections:
        try:
            arrays = arrays_of(int(s))
            scorer = make_rule(rule, arrays)
            problem = None if width is None else scorer.check_model(width, width)
            if problem:
                raise RuleError(f"the feature settings give {width} values, the arrays expect "
                                f"{problem}")
        except (RuleError, DataError, KeyError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{file_of(int(s))}: section {int(s):02d}: {text} ({AGAIN})") from None
