"""What a training method is: the seam ``harken-train`` and ``harken-export`` plug into.

Every method (training/methods.py lists them) is a ``Method``; a method that can do more
says so by also satisfying one of the optional protocols, which the commands check with
``isinstance``/``issubclass`` instead of probing attribute names:

* ``Configurable``: has settings (``--set KEY=VALUE``), listed by ``default_settings``;
* ``Refittable``: ``harken-train refit`` rebuilds its score state without retraining;
* ``ScoresAllRules``: scores all its rules in one pass (``evaluate --score all``);
* ``Localisable``: draws where a clip departs from normal (``harken-train localize``).

To add a method: one module with a class satisfying ``Method`` and one line in
training/methods.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from harken.training.data.corpus import Clip


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    score_rules: ClassVar[tuple[str, ...]]

    @property
    def default_rule(self) -> str: ...

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> dict:
        """Train on one machine type's training clips; write the run dir; its run.json."""

    @classmethod
    def load(cls, run_dir: Path) -> Method:
        """A trained method back from its run dir."""

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        """One anomaly score per clip (higher = more anomalous) with ``rule``."""


@runtime_checkable
class Configurable(Protocol):
    @classmethod
    def default_settings(cls) -> dict:
        """Every setting and its default (what ``--set`` can change)."""


@runtime_checkable
class Refittable(Protocol):
    @classmethod
    def refit(cls, run_dir: Path, progress: bool = True) -> dict: ...


@runtime_checkable
class ScoresAllRules(Protocol):
    def score_all(self, clips: Sequence[Clip], progress: bool = True
                  ) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Localisable(Protocol):
    def localization_maps(self, logmel: np.ndarray) -> dict: ...
