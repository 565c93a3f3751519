"""``mse``: mean squared reconstruction error (DCASE AE baseline); interval = mean."""

from __future__ import annotations

import numpy as np

from harken.agent.model.rules.base import ReconstructionRule, register


@register
class MseRule(ReconstructionRule):
    name = "mse"

    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        return (np.asarray(residual, dtype=np.float64) ** 2).mean(axis=1, keepdims=True)

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence.mean())
