"""What every score rule is: the seam a new rule plugs into.

A rule is split in two so that the device can stream: ``evidence`` turns one batch of
windows into a small row per window, and ``reduce`` turns the rows of an interval (a clip
in evaluation) into one score. Training, ``harken-export verify`` and the agent all score
through rules, so a bundle scores on the device exactly as it did in evaluation.

To add a rule: one module in this package with a ``ScoreRule`` subclass decorated with
``@register``, and its module name in the import line of ``__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from harken.common.errors import DataError, UsageError
from harken.common.registry import Registry

REGISTRY = Registry("score rule")
register = REGISTRY.register

# The most rows a bank a rule scores against may hold (docs/export.md "Refusals when a
# generative bundle opens"). A section's training data gives about a thousand clips
# (DCASE: 990 source + 10 target), so a clip-level bank has about 1 000 rows, and OEVAE's
# segment bank (2-s segments, 1-s hop over 10-s clips) about 9 000: 20 000 leaves twice
# that room, while one interval against it stays a (20 000 x width) product. A bank far
# larger was not made by an export of a section's clips, and would cost the device
# hundreds of MB per interval.
MAX_BANK_ROWS = 20_000


class RuleError(UsageError):
    """An unknown rule name, or a rule without the arrays it needs (a bundle or run that
    does not match its rule)."""


class ScoreRule(ABC):
    """One section's score rule with the arrays it needs (from the bundle or the run)."""
    name: ClassVar[str]
    output: ClassVar[str]                 # the model output it reads (bundle ``outputs``)
    # several outputs, joined per window in this order into the one ``output`` array that
    # ``evidence`` receives (agent/model/scorer.py); empty: just ``(output,)``
    outputs: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()  # array roles it needs

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self.arrays = dict(arrays or {})
        missing = [k for k in self.needs if k not in self.arrays]
        if missing:
            raise RuleError(f"score rule {self.name!r} needs arrays {missing}")
        for k in self.needs:
            a = np.asarray(self.arrays[k])
            if a.dtype.kind not in "biuf":
                raise RuleError(f"array '{k}' holds {a.dtype} values, not numbers")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise RuleError(f"array '{k}' holds NaN or infinite values")
        self.validate()

    @classmethod
    def model_outputs(cls) -> tuple[str, ...]:
        """The model outputs the rule reads, in the order they are joined."""
        return cls.outputs or (cls.output,)

    def validate(self) -> None:
        """The rule's own checks of its arrays (shapes that agree, a std or density above
        0): a bundle or bank that breaks them would score NaN, or raise at the first
        interval, so it is refused when loaded (docs/reliability.md)."""

    def check_model(self, input_width: int, output_width: int) -> str | None:
        """What is wrong, if anything, with a model whose input window has
        ``input_width`` values and whose ``output`` has ``output_width`` values per window
        (a rule with several ``outputs``: their total), for these arrays (None: they fit)."""
        return None

    def check_model_outputs(self, input_width: int, widths: tuple[int, ...]) -> str | None:
        """``check_model`` with each of the rule's ``model_outputs`` widths (values per
        window, in order). The default checks their total; a rule that splits the joined
        outputs overrides this to check each one (agent/model/scorer.py ``check_outputs``)."""
        return self.check_model(input_width, sum(widths))

    def overflowing_array(self) -> str | None:
        """The first needed array holding a value so large or so small (beyond 1e150 or,
        not zero, below 1e-150 in magnitude) that the rule's arithmetic overflows on it: the
        hint of a refusal for a non-finite probe score (agent/model/scorer.py)."""
        for k in self.needs:
            a = np.abs(np.asarray(self.arrays[k], dtype=np.float64))
            if a.size and (a.max() > 1e150 or ((a > 0) & (a < 1e-150)).any()):
                return k
        return None

    # helpers for ``validate``: each refusal names the array and what was expected
    def shape_of(self, name: str, ndim: int) -> tuple[int, ...]:
        shape = np.shape(self.arrays[name])
        if len(shape) != ndim or 0 in shape:
            raise RuleError(f"array '{name}' has shape {list(shape)}; expected {ndim} "
                            f"non-empty dimension(s)")
        return shape

    def bank_shape(self, name: str, limit: int = MAX_BANK_ROWS) -> tuple[int, int]:
        """(rows, width) of the 2-D bank array ``name``, refused above ``limit`` rows."""
        n, e = self.shape_of(name, 2)
        if n > limit:
            raise RuleError(f"array '{name}' has {n} rows; score rule {self.name!r} reads at "
                            f"most {limit} (a section's training clips give far fewer)")
        return n, e

    def same(self, name: str, got: int, expected: int, of: str) -> None:
        if got != expected:
            raise RuleError(f"array '{name}' has {got} {of}; expected {expected}")

    def positive(self, name: str, values: np.ndarray | None = None) -> None:
        v = np.asarray(self.arrays[name] if values is None else values)
        if not (v > 0).all():
            raise RuleError(f"array '{name}' must be above 0 everywhere; its smallest value "
                            f"is {float(v.min()):g}")

    @abstractmethod
    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        """(windows, k) rows for a batch of windows: ``inputs`` as fed to the model
        (flattened per window; only the reconstruction rules read them), ``output`` the
        model's output named by ``self.output`` (a rule with several ``outputs``: those
        outputs flattened and joined per window, in order)."""

    @abstractmethod
    def combine(self, evidence: np.ndarray) -> float:
        """One score from the (non-empty) evidence rows of an interval."""

    def reduce(self, evidence: np.ndarray) -> float:
        """One score from the evidence rows of an interval; an empty one is refused."""
        if len(evidence) == 0:
            raise DataError("no windows to score")
        return self.combine(evidence)

    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        raise ValueError(f"score rule {self.name!r} does not read residuals")


class ReconstructionRule(ScoreRule):
    """A rule on the residual x - x' of an autoencoder (``reconstruction`` output)."""
    output = "reconstruction"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        if inputs is None:
            raise ValueError(f"score rule {self.name!r} needs the model inputs")
        n = len(inputs)
        return self.residual_evidence(inputs.reshape(n, -1).astype(np.float64)
                                      - output.reshape(n, -1))

    @abstractmethod
    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        """Evidence rows from (windows, dims) residuals x - x'."""


class BankRule(ScoreRule):
    """A rule that scores an interval against a reference bank of normal intervals (clips
    in training, intervals enrolled on site): the capability feedback needs. An operator's
    "that alarm was normal" adds the alarm's intervals to the bank (docs/agent.md
    "Feedback: how the bank and threshold change"), so the rule must say what an interval
    adds (``statistics``), take rows in (``with_references``) and score its own bank held
    out (``held_out_scores``, which the threshold is refitted on)."""

    @abstractmethod
    def statistics(self, evidence: np.ndarray) -> dict[str, np.ndarray]:
        """One interval's raw vectors from its evidence rows: per name the same vector
        enrollment keeps as ``raw_<name>`` (unstandardised)."""

    @abstractmethod
    def with_references(self, rows: Mapping[str, np.ndarray], density_k: int) -> BankRule:
        """A new rule whose bank is this one's plus ``rows`` ((n, width) raw vectors per
        name, as ``statistics`` gives them), standardised with this rule's own mean and
        spread; the local densities are recomputed over the union. The fusion scales are
        kept, so the score stays on the scale the threshold was set on."""

    @abstractmethod
    def held_out_scores(self) -> np.ndarray:
        """Each bank row scored against the others (leave-one-out; the densities are the
        whole bank's), as enrollment scores its intervals to fit the threshold."""

    @abstractmethod
    def score_statistics(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        """The scores of (n, width) raw vectors per name (stored intervals rescored
        without the model: ``harken`` recalibrating from the feedback store)."""

    @property
    @abstractmethod
    def bank_rows(self) -> int:
        """The rows in the bank."""

    def check_rows(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``rows`` as float64 arrays with the names and widths of this rule's statistics;
        a DataError naming what differs (statistics stored by another bundle)."""
        want = self.statistics_widths()
        if set(rows) != set(want):
            raise DataError(f"statistics of {sorted(rows)}; score rule {self.name!r} with "
                            f"this bank keeps {sorted(want)}")
        out = {}
        for name, width in want.items():
            a = np.asarray(rows[name], dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != width:
                raise DataError(f"statistics '{name}' of shape {list(a.shape)}; expected "
                                f"(rows, {width})")
            if not np.isfinite(a).all():
                raise DataError(f"statistics '{name}' hold NaN or infinite values")
            out[name] = a
        return out

    @abstractmethod
    def statistics_widths(self) -> dict[str, int]:
        """Per name, the values of one interval's statistics vector."""
