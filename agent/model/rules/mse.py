"""``mse``: mean squared reconstruction error (DCASE AE baseline); interval = mean."""

from __future__ import annotations

import numpy as np

from harken.agent.model.rules.base import ReconstructionRule, register


@register
class MseRule(ReconstructionRule):
    name = "mse"

    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        return (np.asarray(residual, dtype=np.float64) ** 2).mean(axis=1, keepdims=True)

    def check_model(self, input_width: int, output_width: int) -> str | None:
        if output_width != input_width:
            return f"a reconstruction of {input_width} values (the model's input)"
        return None

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence.mean())
