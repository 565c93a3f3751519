"""What a training method is: the seam ``harken-train`` and ``harken-export`` plug into.

Every method (training/methods.py lists them) is a ``Method``; a method that can do more
says so by also satisfying one of the optional protocols, which the commands check with
``isinstance``/``issubclass`` instead of probing attribute names:

* ``Configurable``: has settings (``--set KEY=VALUE``), listed by ``default_settings``;
* ``Refittable``: ``harken-train refit`` rebuilds its score state without retraining;
* ``ScoresAllRules``: scores all its rules in one pass (``evaluate --score all``);
* ``Localisable``: draws where a clip departs from normal (``harken-train localize``);
* ``Exportable``: has a device graph, a device rule and that rule's arrays
  (``harken-export`` builds bundles from them);
* ``RefitsRuleArrays``: fits its device rule's arrays again on what an exported artifact
  computes for the training clips (each int8 artifact of a bundle gets its own).

Names: a method's ``score_rules`` are the scores ``evaluate --score`` computes. A *rule* in
the agent's sense (agent/model/rules/) is what a device runs; an exportable method names its
own with ``device_rule()``. A score that is not an agent rule is a training-side *variant*
(spectral-knn's weightings of its four distances are one device rule, ``spectral-knn``, with
other ``fusion_weights``).

To add a method: one module with a class satisfying ``Method`` and one line in
training/methods.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from harken.training.data.corpus import Clip
from harken.training.runs import RunInfo

if TYPE_CHECKING:
    from torch import nn


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    score_rules: ClassVar[tuple[str, ...]]

    @property
    def default_rule(self) -> str: ...

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
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
    def refit(cls, run_dir: Path, progress: bool = True) -> RunInfo: ...


@runtime_checkable
class ScoresAllRules(Protocol):
    def score_all(self, clips: Sequence[Clip], progress: bool = True
                  ) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Localisable(Protocol):
    def localization_maps(self, logmel: np.ndarray) -> dict: ...


@dataclass(frozen=True)
class DeviceGraph:
    """The network a device runs for a method: the module (training-only parts left out;
    export folds its batch norm), the input shape of one feature window with batch 1 (torch
    layout) and the meaning of each output, in the module's output order (one of
    agent/model/manifest.py's OUTPUTS)."""
    module: nn.Module
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    # let the int8 TFLite keep float builtins where int8-only kernels would not stay
    # accurate (a GAN's GroupNorm; docs/export.md "int8 TFLite and float fallback")
    tflite_float_fallback: bool = False


@runtime_checkable
class Exportable(Protocol):
    """What ``harken-export`` needs of a trained method (export/graphs.py, export/bundle.py)."""

    def device_graph(self) -> DeviceGraph:
        """The inference network, as the bundle's model files carry it."""

    def device_rule(self) -> str:
        """The agent's score rule (a name in agent/model/rules/) the bundle ships."""

    def rule_arrays(self, section: int) -> dict[str, np.ndarray]:
        """The device rule's arrays for ``section`` (name -> array), as the agent's rule
        takes them (``make_rule(device_rule(), arrays)``)."""


# What ``RefitsRuleArrays`` is given per training clip: each output the artifact gives
# (manifest semantics: "embedding", "latent", ...) and "input", the model's input, each as
# a (windows, values) array.
WindowOutputs = dict[str, np.ndarray]


def clip_means(outputs: Sequence[WindowOutputs], name: str) -> np.ndarray:
    """(clips, values): each clip's mean of output ``name`` over its windows, in float64
    (how the methods reduce a clip's windows to the one row their banks hold)."""
    return np.stack([np.asarray(o[name], dtype=np.float64).reshape(len(o[name]), -1).mean(0)
                     for o in outputs])


@runtime_checkable
class RefitsRuleArrays(Protocol):
    """A method whose device rule holds statistics of the network's outputs (a bank of
    training embeddings, their moments): an int8 artifact's outputs carry its own rounding,
    so statistics fitted on the float network's put every device query a little off them;
    fitted on the artifact's own outputs for the same training clips, the int8 scores stay
    closer to the float model's order (docs/export.md "Rule arrays per artifact")."""

    def refit_rule_arrays(self, clips: Sequence[Clip], outputs: Sequence[WindowOutputs]
                          ) -> dict[int, dict[str, np.ndarray]] | None:
        """Per section, the device rule's arrays fitted with the method's own recipe on
        ``outputs`` (one per clip of ``clips``, the run's training clips); None when the
        run's rule holds no such statistics (nothing to refit)."""
