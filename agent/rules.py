"""Anomaly-score rules: from model outputs per window to one score per report interval.

Every rule is split in two so that the device can stream: ``evidence`` turns one batch of
windows into a small row per window, and ``reduce`` turns the rows of an interval (a clip
in evaluation) into one score. Training, ``harken-export verify`` and the agent all score
through these functions, so a bundle scores on the device exactly as it did in evaluation.

Rules (``Rule.name``):

* ``mse``: mean squared reconstruction error (DCASE AE baseline); interval = mean.
* ``mahalanobis``: Mahalanobis distance of the residual to each domain's residual
  distribution; interval = the smaller domain mean ("selective Mahalanobis").
* ``logit``: log((1 - p) / p), p = the section's most probable class; interval = mean.
* ``embedding``: mean embedding of the interval, cosine distance to the section's normal
  bank, each distance in units of its domain's typical distance; the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RULES = ("mse", "mahalanobis", "logit", "embedding")


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Row-wise Mahalanobis distance sqrt((x - m)^T P (x - m)) for a precision matrix P."""
    d = np.asarray(x, dtype=np.float64) - mean
    return np.sqrt(np.maximum(((d @ precision) * d).sum(axis=1), 0.0))   # one BLAS product


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def section_log_odds(probs: np.ndarray, section_classes: np.ndarray) -> np.ndarray:
    """Per window log((1 - p) / p), p = the best class among ``section_classes`` (a mask)."""
    p = probs[:, section_classes].max(axis=1).clip(1e-7, 1 - 1e-7)
    return np.log((1 - p) / p)


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


@dataclass
class Rule:
    """One section's scoring rule with its arrays. ``name`` is one of RULES; ``arrays``
    holds what the rule needs (see each branch of ``evidence``/``reduce``)."""
    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown score rule {self.name!r}; known: {list(RULES)}")
        need = {"mse": (), "mahalanobis": ("means", "precisions"),
                "logit": ("section_classes",),
                "embedding": ("bank", "bank_target", "bank_scale", "embedding_mean",
                              "embedding_std")}[self.name]
        missing = [k for k in need if k not in self.arrays]
        if missing:
            raise ValueError(f"score rule {self.name!r} needs arrays {missing}")

    @staticmethod
    def output_of(name: str) -> str:
        """The model output rule ``name`` reads."""
        return {"mse": "reconstruction", "mahalanobis": "reconstruction",
                "logit": "logits", "embedding": "embedding"}[name]

    @property
    def output(self) -> str:
        return self.output_of(self.name)

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        """(windows, k) rows for a batch of windows: ``inputs`` as fed to the model
        (flattened per window; only the reconstruction rules read them), ``output`` the
        model's output named by ``self.output``."""
        if self.name in ("mse", "mahalanobis"):
            if inputs is None:
                raise ValueError(f"score rule {self.name!r} needs the model inputs")
            n = len(inputs)
            return self.residual_evidence(inputs.reshape(n, -1).astype(np.float64)
                                          - output.reshape(n, -1))
        if self.name == "logit":
            return section_log_odds(softmax(output),
                                    self.arrays["section_classes"].astype(bool))[:, None]
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def residual_evidence(self, residual: np.ndarray) -> np.ndarray:
        """Evidence rows of the reconstruction rules from (windows, dims) residuals x - x'."""
        if self.name == "mse":
            return (np.asarray(residual, dtype=np.float64) ** 2).mean(axis=1, keepdims=True)
        if self.name == "mahalanobis":
            a = self.arrays
            return np.stack([mahalanobis(residual, m, p)
                             for m, p in zip(a["means"], a["precisions"])], axis=1)
        raise ValueError(f"score rule {self.name!r} does not read residuals")

    def reduce(self, evidence: np.ndarray) -> float:
        """One score from the evidence rows of an interval."""
        if len(evidence) == 0:
            raise ValueError("no windows to score")
        if self.name in ("mse", "logit"):
            return float(evidence.mean())
        if self.name == "mahalanobis":
            return float(evidence.mean(axis=0).min())
        a = self.arrays
        unit = unit_embedding(evidence.mean(axis=0), a["embedding_mean"], a["embedding_std"])
        return bank_distance(unit[0], a["bank"], a["bank_target"].astype(bool), a["bank_scale"])
