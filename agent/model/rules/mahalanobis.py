"""``mahalanobis``: Mahalanobis distance of the residual to each domain's residual
distribution; interval = the smaller domain mean ("selective Mahalanobis")."""

from __future__ import annotations

import numpy as np

from harken.agent.model.rules.base import ReconstructionRule, RuleError, register


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Row-wise Mahalanobis distance sqrt((x - m)^T P (x - m)) for a precision matrix P."""
    d = np.asarray(x, dtype=np.float64) - mean
    return np.sqrt(np.maximum(((d @ precision) * d).sum(axis=1), 0.0))   # one BLAS product


@register
class MahalanobisRule(ReconstructionRule):
    name = "mahalanobis"
    needs = ("means", "precisions")

    def validate(self) -> None:
        domains, dim = self.shape_of("means", 2)
        shape = self.shape_of("precisions", 3)
        if shape != (domains, dim, dim):
            raise RuleError(f"array 'precisions' has shape {list(shape)}; expected "
                            f"{[domains, dim, dim]} (one {dim}x{dim} matrix per row of 'means')")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        dim = np.shape(self.arrays["means"])[1]
        if not input_width == output_width == dim:
            return f"a reconstruction of {dim} values (the width of array 'means') of an input as wide"
        return None

    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        a = self.arrays
        return np.stack([mahalanobis(residual, m, p)
                         for m, p in zip(a["means"], a["precisions"])], axis=1)

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence.mean(axis=0).min())
