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

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        unit = unit_embedding(evidence.mean(axis=0), a["embedding_mean"], a["embedding_std"])
        return bank_distance(unit[0], a["bank"], a["bank_target"].astype(bool), a["bank_scale"])
