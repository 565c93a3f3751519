"""AEGAN-AD's scores on the device: the rules ``aegan-<score>`` compute training/aegan.py's
score ``<score>`` from the bundle graph's outputs (docs/export.md "AEGAN-AD"), in the same
scaled space (the dB patch mapped to [-1, 1] with the run's range, then clamped).

* ``aegan-x-l1``, ``aegan-x-l2``, ``aegan-x-cos``: the scaled patch p against its
  reconstruction G(p) (output ``reconstruction``); p is rebuilt here from the model's input
  and the run's dB range (array ``db_range``), which costs less than a second output of
  16384 values. Evidence = the patch's distance; interval = the mean over its patches.
* ``aegan-z-l1``, ``aegan-z-l2``, ``aegan-z-cos``: the code E(p) against the re-encoding
  E(G(p)) (outputs ``latent`` and ``latent_aux``, joined per window); no arrays.
* ``aegan-d-maha``, ``aegan-d-knn``, ``aegan-d-lof``: the discriminator embedding (output
  ``embedding``); the interval's MEAN embedding is scored, as training scores a clip's mean
  embedding: its Mahalanobis distance to the section's mean (``location``, ``precision``:
  scikit-learn's LedoitWolf), the mean of its ``k`` smallest cosine distances to the
  section's unit bank (``unit_bank``, ``k``), or its local outlier factor among the
  section's training embeddings (``bank``, each one's k-distance ``bank_kdist`` and local
  reachability density ``bank_lrd``, ``k``: scikit-learn's LocalOutlierFactor in numpy).

numpy only (the device has no torch or scikit-learn); each interval costs one pass over a
bank of a few hundred rows at most.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harken.agent.model.rules.base import RuleError, ScoreRule, register
from harken.agent.model.rules.mahalanobis import mahalanobis

METRICS = ("l1", "l2", "cos")


def scaled(db: np.ndarray, low: float, high: float) -> np.ndarray:
    """dB values -> [-1, 1] with the run's range, clamped (training/models/aegan.py
    ``DbRange.scale``)."""
    return np.clip(2.0 * (np.asarray(db, dtype=np.float64) - low) / (high - low) - 1.0, -1.0, 1.0)


def pair_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distance of (n, d) arrays as training computes it: mean absolute or mean
    squared difference, or 1 - cosine similarity (norms floored at 1e-8, as torch's
    ``cosine_similarity``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric == "l1":
        return np.abs(a - b).mean(axis=1)
    if metric == "l2":
        return ((a - b) ** 2).mean(axis=1)
    if metric == "cos":
        na = np.maximum(np.linalg.norm(a, axis=1), 1e-8)
        nb = np.maximum(np.linalg.norm(b, axis=1), 1e-8)
        return 1.0 - (a * b).sum(axis=1) / (na * nb)
    raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")


def local_outlier_factor(points: np.ndarray, bank: np.ndarray, kdist: np.ndarray,
                         lrd: np.ndarray, k: int) -> np.ndarray:
    """Each point's local outlier factor among ``bank`` (Euclidean): the mean over its ``k``
    nearest bank rows of their local reachability density over its own, where the
    reachability distance to a row is at least that row's k-distance. What scikit-learn's
    ``LocalOutlierFactor(novelty=True).score_samples`` gives, negated."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    bank = np.asarray(bank, dtype=np.float64)
    d = np.sqrt(((pts[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2))
    nbr = np.argsort(d, axis=1, kind="stable")[:, :k]
    reach = np.maximum(np.take_along_axis(d, nbr, axis=1), np.asarray(kdist)[nbr])
    own = 1.0 / (reach.mean(axis=1) + 1e-10)
    return (np.asarray(lrd, dtype=np.float64)[nbr] / own[:, None]).mean(axis=1)


class _MeanOfWindows(ScoreRule):
    """A per-patch distance; the interval's score is its mean, as a clip's in training."""
    metric: ClassVar[str]

    def combine(self, evidence: np.ndarray) -> float:
        return float(np.mean(evidence))


class AeganXRule(_MeanOfWindows):
    output = "reconstruction"
    needs = ("db_range",)

    def validate(self) -> None:
        self.same("db_range", self.shape_of("db_range", 1)[0], 2, "values (low, high dB)")
        low, high = np.asarray(self.arrays["db_range"], dtype=np.float64)
        if not high > low:
            raise RuleError(f"array 'db_range' must be (low, high) with high above low; got "
                            f"({low:g}, {high:g})")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        if output_width != input_width:
            return f"a reconstruction of {input_width} values (the model's input)"
        return None

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        if inputs is None:
            raise ValueError(f"score rule {self.name!r} needs the model inputs")
        low, high = np.asarray(self.arrays["db_range"], dtype=np.float64)
        n = len(inputs)
        p = scaled(np.reshape(inputs, (n, -1)), low, high)
        return pair_distance(p, np.reshape(output, (n, -1)), self.metric)[:, None]


class AeganZRule(_MeanOfWindows):
    output = "latent"
    outputs = ("latent", "latent_aux")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        if output_width < 2 or output_width % 2:
            return "a latent code and its re-encoding of equal width"
        return None

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        y = np.reshape(output, (len(output), -1))
        half = y.shape[1] // 2
        return pair_distance(y[:, :half], y[:, half:], self.metric)[:, None]


@register
class AeganXL1(AeganXRule):
    name, metric = "aegan-x-l1", "l1"


@register
class AeganXL2(AeganXRule):
    name, metric = "aegan-x-l2", "l2"


@register
class AeganXCos(AeganXRule):
    name, metric = "aegan-x-cos", "cos"


@register
class AeganZL1(AeganZRule):
    name, metric = "aegan-z-l1", "l1"


@register
class AeganZL2(AeganZRule):
    name, metric = "aegan-z-l2", "l2"


@register
class AeganZCos(AeganZRule):
    name, metric = "aegan-z-cos", "cos"


class AeganEmbeddingRule(ScoreRule):
    """Evidence = the window's embedding; the interval's score = a distance of the mean
    embedding (training scores a clip's mean embedding, not the mean of patch scores)."""
    output = "embedding"
    width_from: ClassVar[str]           # the array whose last axis is the embedding width

    def check_model(self, input_width: int, output_width: int) -> str | None:
        e = np.shape(self.arrays[self.width_from])[-1]
        return None if output_width == e else \
            f"an embedding of {e} values (the width of array '{self.width_from}')"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def neighbours(self, name: str, rows: int, limit: int) -> int:
        """The one-value integer array ``name`` checked as 1 <= k <= limit."""
        self.same(name, self.shape_of(name, 1)[0], 1, "values")
        a = np.asarray(self.arrays[name])
        k = int(a[0])
        if a.dtype.kind not in "iu" or not 1 <= k <= limit:
            raise RuleError(f"array '{name}' must be one integer from 1 to {limit} (the bank "
                            f"has {rows} rows); got {a[0]!r}")
        return k


@register
class AeganDMaha(AeganEmbeddingRule):
    name = "aegan-d-maha"
    needs = ("location", "precision")
    width_from = "location"

    def validate(self) -> None:
        e = self.shape_of("location", 1)[0]
        shape = self.shape_of("precision", 2)
        if shape != (e, e):
            raise RuleError(f"array 'precision' has shape {list(shape)}; expected {[e, e]} "
                            f"(the width of array 'location')")

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        return float(mahalanobis(evidence.mean(axis=0)[None], a["location"], a["precision"])[0])


@register
class AeganDKnn(AeganEmbeddingRule):
    name = "aegan-d-knn"
    needs = ("unit_bank", "k")
    width_from = "unit_bank"

    def validate(self) -> None:
        n, _ = self.shape_of("unit_bank", 2)
        self.neighbours("k", n, n)

    def combine(self, evidence: np.ndarray) -> float:
        e = evidence.mean(axis=0)
        cos = 1.0 - np.asarray(self.arrays["unit_bank"], dtype=np.float64) @ \
            (e / max(float(np.linalg.norm(e)), 1e-12))
        k = int(np.asarray(self.arrays["k"])[0])
        return float(np.sort(cos)[:k].mean())


@register
class AeganDLof(AeganEmbeddingRule):
    name = "aegan-d-lof"
    needs = ("bank", "bank_kdist", "bank_lrd", "k")
    width_from = "bank"

    def validate(self) -> None:
        n, _ = self.shape_of("bank", 2)
        if n < 3:
            raise RuleError(f"array 'bank' has {n} rows; the local outlier factor needs at "
                            f"least 3")
        for name in ("bank_kdist", "bank_lrd"):
            self.same(name, self.shape_of(name, 1)[0], n, "entries (the bank's rows)")
        self.positive("bank_lrd")
        if (np.asarray(self.arrays["bank_kdist"]) < 0).any():
            raise RuleError("array 'bank_kdist' holds a negative distance")
        self.neighbours("k", n, n - 1)

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        return float(local_outlier_factor(evidence.mean(axis=0), a["bank"], a["bank_kdist"],
                                          a["bank_lrd"], int(np.asarray(a["k"])[0]))[0])
