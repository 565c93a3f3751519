"""``embedding``: mean embedding of the interval, cosine distance to the section's normal
bank, each distance in units of its domain's typical distance; the minimum."""

from __future__ import annotations

import numpy as np

from harken.agent.model.rules.base import ScoreRule, register


def unit_embedding(emb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised with the training statistics, then scaled to unit length."""
    z = (np.atleast_2d(emb) - mean) / std
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)


def bank_distance(unit: np.ndarray, bank: np.ndarray, is_target: np.ndarray,
                  scale: np.ndarray) -> float:
    """Smallest cosine distance of one unit embedding to the bank, each entry's distance
    divided by its domain's scale (``scale`` = (source, target))."""
    d = 1.0 - bank @ unit.reshape(-1)
    return float((d / np.where(is_target, scale[1], scale[0])).min())


@register
class EmbeddingRule(ScoreRule):
    name = "embedding"
    output = "embedding"
    needs = ("bank", "bank_target", "bank_scale", "embedding_mean", "embedding_std")

    def validate(self) -> None:
        n, e = self.shape_of("bank", 2)
        for name in ("embedding_mean", "embedding_std"):
            self.same(name, self.shape_of(name, 1)[0], e, "values (the bank's width)")
        self.positive("embedding_std")
        self.same("bank_target", self.shape_of("bank_target", 1)[0], n, "entries (the bank's rows)")
        self.same("bank_scale", self.shape_of("bank_scale", 1)[0], 2, "values (source, target)")
        self.positive("bank_scale")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        e = np.shape(self.arrays["bank"])[1]
        return None if output_width == e else f"an embedding of {e} values (the bank's width)"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        unit = unit_embedding(evidence.mean(axis=0), a["embedding_mean"], a["embedding_std"])
        return bank_distance(unit[0], a["bank"], a["bank_target"].astype(bool), a["bank_scale"])
