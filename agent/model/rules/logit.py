"""``logit``: log((1 - p) / p), p = the section's most probable class; interval = mean."""

from __future__ import annotations

import numpy as np

from harken.agent.model.rules.base import RuleError, ScoreRule, register


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def section_log_odds(probs: np.ndarray, section_classes: np.ndarray) -> np.ndarray:
    """Per window log((1 - p) / p), p = the best class among ``section_classes`` (a mask)."""
    p = probs[:, section_classes].max(axis=1).clip(1e-7, 1 - 1e-7)
    return np.log((1 - p) / p)


@register
class LogitRule(ScoreRule):
    name = "logit"
    output = "logits"
    needs = ("section_classes",)

    def validate(self) -> None:
        self.shape_of("section_classes", 1)
        if not np.asarray(self.arrays["section_classes"]).astype(bool).any():
            raise RuleError("array 'section_classes' marks no class of the section")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        n = len(self.arrays["section_classes"])
        return None if output_width == n else \
            f"{n} logits (one per entry of array 'section_classes')"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return section_log_odds(softmax(output),
                                self.arrays["section_classes"].astype(bool))[:, None]

    def combine(self, evidence: np.ndarray) -> float:
        return float(evidence.mean())
