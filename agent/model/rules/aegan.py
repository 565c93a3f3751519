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
bank of at most ``MAX_BANK_ROWS`` rows (``MAX_LOF_ROWS`` for the local outlier factor,
whose bank's densities are recomputed when the bundle opens).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harken.agent.model.rules.base import RuleError, ScoreRule, register
from harken.agent.model.rules.density import distances
from harken.agent.model.rules.mahalanobis import mahalanobis

METRICS = ("l1", "l2", "cos")

# aegan-d-lof's bank holds one row per training clip of the section (about a thousand in a
# DCASE section); its k-distances and densities are recomputed from it when the bundle
# opens, an n x n distance matrix in blocks of rows: 5 000 rows bound that work (25 million
# distances) and each interval's (rows x width) difference, five times a DCASE section.
MAX_LOF_ROWS = 5_000


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
    # one point at a time: a (bank, width) difference, never (points, bank, width); the
    # exact differences (not dot products) keep ties and duplicates as scikit-learn has them
    d = np.stack([np.sqrt(((bank - p) ** 2).sum(axis=1)) for p in pts])
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

    def check_model_outputs(self, input_width: int, widths: tuple[int, ...]) -> str | None:
        # evidence splits the joined outputs at half: the two must be equally wide
        if len(widths) != 2 or widths[0] < 1 or widths[0] != widths[1]:
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
                            f"has {rows} rows); got {a[0].item()!r} ({a.dtype})")
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
        # a precision that is not a covariance's inverse makes the squared distance
        # negative or zero for every embedding (clamped to 0: a bundle that never alarms)
        p = np.asarray(self.arrays["precision"], dtype=np.float64)
        top = float(np.abs(p).max())
        if top == 0.0:
            raise RuleError("array 'precision' is all zeros; expected the inverse of the "
                            "section's embedding covariance")
        if not np.allclose(p, p.T, rtol=1e-6, atol=1e-9 * top):
            raise RuleError("array 'precision' is not symmetric; expected the inverse of the "
                            "section's embedding covariance")
        low = float(np.linalg.eigvalsh((p + p.T) / 2).min())
        if low < -1e-6 * top:
            raise RuleError(f"array 'precision' is not positive semi-definite (an eigenvalue "
                            f"of {low:g}); expected the inverse of the section's embedding "
                            f"covariance")

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        return float(mahalanobis(evidence.mean(axis=0)[None], a["location"], a["precision"])[0])


@register
class AeganDKnn(AeganEmbeddingRule):
    name = "aegan-d-knn"
    needs = ("unit_bank", "k")
    width_from = "unit_bank"

    def validate(self) -> None:
        n, _ = self.bank_shape("unit_bank")
        self.neighbours("k", n, n)
        # cosine distances to rows that are not unit length are not distances: a zero bank
        # scores every interval 1.0, a huge one always "normal" (oevae.py checks the same)
        with np.errstate(over="ignore"):
            norms = np.linalg.norm(np.asarray(self.arrays["unit_bank"], dtype=np.float64),
                                   axis=1)
        if np.abs(norms - 1.0).max() > 1e-3:
            raise RuleError(f"array 'unit_bank' holds rows that are not of unit length (norms "
                            f"from {norms.min():g} to {norms.max():g}; the training clips' unit "
                            f"embeddings are expected)")

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
        n, _ = self.bank_shape("bank", MAX_LOF_ROWS)
        if n < 3:
            raise RuleError(f"array 'bank' has {n} rows; the local outlier factor needs at "
                            f"least 3")
        for name in ("bank_kdist", "bank_lrd"):
            self.same(name, self.shape_of(name, 1)[0], n, "entries (the bank's rows)")
        self.positive("bank_lrd")
        if (np.asarray(self.arrays["bank_kdist"]) < 0).any():
            raise RuleError("array 'bank_kdist' holds a negative distance")
        k = self.neighbours("k", n, n - 1)
        with np.errstate(all="ignore"):          # an overflowing bank is refused below
            self.check_densities(k)

    def check_densities(self, k: int) -> None:
        """Recompute each bank row's k-distance and reachability from the bank (as
        training/aegan.py does with scikit-learn) and refuse arrays that disagree: a bank
        replaced without its densities scores quietly wrong. Distances by dot products in
        blocks of rows (an n x n matrix would not fit a Pi's memory at ``MAX_LOF_ROWS``),
        so compared with a tolerance of a millionth of the bank's largest norm; a row whose
        k-th and (k+1)-th neighbours tie within it has its reachability left unchecked
        (which of the tied rows counts is scikit-learn's choice)."""
        a = self.arrays
        bank = np.asarray(a["bank"], dtype=np.float64)
        n = len(bank)
        kdist = np.asarray(a["bank_kdist"], dtype=np.float64)
        top = float(np.linalg.norm(bank, axis=1).max())
        if not np.isfinite(top) or top > 1e150:
            raise RuleError(f"array 'bank' holds rows of norm {top:g}; distances between them "
                            f"overflow (the section's training embeddings are expected)")
        tol = 1e-6 * max(top, 1e-12)
        nearest = np.empty((n, min(k + 1, n - 1)))
        nbr = np.empty((n, k), dtype=np.int64)
        for start in range(0, n, 512):
            d = distances(bank[start:start + 512], bank, "euclidean")
            d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf
            part = np.argpartition(d, nearest.shape[1] - 1, axis=1)[:, :nearest.shape[1]]
            order = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, axis=1),
                                                        axis=1, kind="stable"), axis=1)
            nearest[start:start + len(d)] = np.take_along_axis(d, order, axis=1)
            nbr[start:start + len(d)] = order[:, :k]
        if not np.allclose(nearest[:, k - 1], kdist, rtol=1e-5, atol=tol):
            worst = int(np.argmax(np.abs(nearest[:, k - 1] - kdist)))
            raise RuleError(f"array 'bank_kdist' does not match array 'bank': row {worst}'s "
                            f"distance to its {k}th nearest other row is "
                            f"{nearest[worst, k - 1]:g}, the array says {kdist[worst]:g}")
        reach = np.maximum(nearest[:, :k], kdist[nbr]).mean(axis=1)
        said = 1.0 / np.asarray(a["bank_lrd"], dtype=np.float64) - 1e-10
        clear = (nearest[:, -1] - nearest[:, k - 1] > tol) if nearest.shape[1] > k \
            else np.ones(n, dtype=bool)
        off = clear & ~np.isclose(reach, said, rtol=1e-5, atol=tol)
        if off.any():
            worst = int(np.flatnonzero(off)[0])
            raise RuleError(f"array 'bank_lrd' does not match array 'bank': row {worst}'s "
                            f"local reachability density is {1.0 / (reach[worst] + 1e-10):g}, "
                            f"the array says {float(a['bank_lrd'][worst]):g}")

    def combine(self, evidence: np.ndarray) -> float:
        a = self.arrays
        return float(local_outlier_factor(evidence.mean(axis=0), a["bank"], a["bank_kdist"],
                                          a["bank_lrd"], int(np.asarray(a["k"])[0]))[0])
