"""``spectral-knn``: a clip's sound statistics against the section's normal clips, in two
branches, each scored two ways, the four scores fused.

Branches (from the ``spectral-knn`` feature preset: mels and the log power spectrum per
frame):

* ``mel``: mean and standard deviation over time of each mel band (the envelope and how
  much it moves: broadband faults, modulation);
* ``spectrum``: mean over time of each of the 513 linear frequency bins (tonal lines and
  narrow resonances that mel pooling averages away: bearing and gear-mesh tones, shifts).

Each branch vector is standardised with the training clips' statistics; its scores are
the Euclidean distance to the nearest normal training clip of the section (``knn``:
sharp where normal sound is dense) and the same distance in units of that clip's local
density (``density``, LDN: fair to a sparse domain, no domain label). Each score is put
on one scale with the mean and spread of the section's leave-one-out training scores,
then the weighted mean is taken (equal weights by default; the ablations zero some).

The model's part is only the moments of each window (``moments`` output: per-value mean
and standard deviation over the window's frames); the rule pools the windows of an
interval exactly (equal-size windows: variance = mean of window variances + variance of
window means), so an interval's statistics do not depend on how it was cut.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from harken.agent.model.rules.base import RuleError, ScoreRule, register
from harken.agent.model.rules.density import distances, local_densities

BRANCHES = ("mel", "spectrum")
COMPONENTS = ("mel-knn", "mel-density", "spectrum-knn", "spectrum-density")


def window_moments(windows: np.ndarray) -> np.ndarray:
    """(n, frames, values) windows -> (n, 2 * values): mean, then std over the frames.
    The numpy reference of the bundle's graph."""
    w = np.asarray(windows, dtype=np.float64)
    return np.concatenate([w.mean(axis=1), w.std(axis=1)], axis=1)


def pooled_moments(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over all frames of equal-size windows, from their (n, 2v) moments."""
    m = np.asarray(moments, dtype=np.float64)
    v = m.shape[1] // 2
    means, stds = m[:, :v], m[:, v:]
    mean = means.mean(axis=0)
    var = (stds ** 2).mean(axis=0) + means.var(axis=0)
    return mean, np.sqrt(np.maximum(var, 0.0))


def branch_vectors(mean: np.ndarray, std: np.ndarray, n_mels: int) -> dict[str, np.ndarray]:
    """A clip's (or interval's) vector per branch from its pooled statistics."""
    return {"mel": np.concatenate([mean[:n_mels], std[:n_mels]]), "spectrum": mean[n_mels:]}


def component_scores(z: np.ndarray, bank: np.ndarray, density: np.ndarray) -> np.ndarray:
    """(n, 2): distance to the nearest bank row, and the LDN distance (density.py), of
    standardised vectors ``z`` against a standardised bank."""
    d = distances(z, bank, "euclidean")
    return np.stack([d.min(axis=1), (d / density[None, :]).min(axis=1)], axis=1)


def fused_score(vectors: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray],
                weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the four standardised component scores, for (n, .) vectors
    per branch; ``arrays`` are one section's (see ``SpectralKnnRule.needs``)."""
    parts = []
    for b in BRANCHES:
        z = (np.atleast_2d(vectors[b]) - arrays[f"{b}_mean"]) / arrays[f"{b}_std"]
        raw = component_scores(z, arrays[f"{b}_bank"], arrays[f"{b}_density"])
        loc, scale = arrays[f"{b}_fusion"][:2], arrays[f"{b}_fusion"][2:]
        parts.append((raw - loc) / scale)
    standard = np.concatenate(parts, axis=1)          # columns in COMPONENTS order
    w = np.asarray(weights, dtype=np.float64)
    return standard @ w / w.sum()


def branch_statistics(vectors: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray,
                                                                             np.ndarray]]:
    """Per branch the mean and spread that standardise its vectors."""
    return {b: (v.mean(axis=0), v.std(axis=0) + 1e-6) for b, v in vectors.items()}


# a leave-one-out spread below this fraction of its mean (or of 1) is no spread: the scale
# would turn a normal interval's distance into 1e8
MIN_RELATIVE_SPREAD = 1e-6


def _check_spread(branch: str, loo: np.ndarray, density: np.ndarray) -> None:
    """Refuse a bank whose held-out scores do not vary, or some of whose references sit on
    top of others: dividing by that spread or density would make every normal interval
    score huge (docs/reliability.md "Numbers, banks and bundles")."""
    from harken.common.errors import DataError
    for j, part in enumerate(("knn", "density")):
        mean, spread = float(loo[:, j].mean()), float(loo[:, j].std())
        if not spread > MIN_RELATIVE_SPREAD * max(1.0, abs(mean)):
            raise DataError(
                f"the {len(loo)} clips or intervals give {branch}-{part} leave-one-out scores "
                f"that do not vary (spread {spread:.3g} around {mean:.6g}): each has a (near) "
                f"copy among the others, e.g. the same audio given twice; a scale from that "
                f"would make normal sound score huge. Give distinct recordings of normal "
                f"operation")
    tight = int((density <= MIN_RELATIVE_SPREAD * max(float(np.median(density)), 1e-9)).sum())
    if tight:
        raise DataError(
            f"{tight} of the {len(density)} clips or intervals of branch {branch} have their "
            f"nearest neighbours at (almost) zero distance: (near) copies of each other, e.g. "
            f"the same audio given twice; their density would make normal sound score huge. "
            f"Give distinct recordings of normal operation")


def fit_bank(vectors: Mapping[str, np.ndarray], stats: Mapping[str, tuple], density_k: int,
             weights) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One reference bank (a section's training clips, or audio enrolled on site): the
    arrays the rule needs, and the clips' leave-one-out fused scores (each clip scored
    against the others: held-out normal scores for the threshold). The device's enrollment
    and training both call this, so an enrolled bank is the bank training would build."""
    from harken.common.errors import DataError
    n = len(next(iter(vectors.values())))
    if n < 2:
        raise DataError(f"a reference bank needs at least 2 clips or intervals, got {n}")
    arrays: dict[str, np.ndarray] = {}
    parts = []
    for b in BRANCHES:
        mean, std = stats[b]
        bank = (np.asarray(vectors[b], dtype=np.float64) - mean) / std
        density = local_densities(bank, density_k, "euclidean")
        d = distances(bank, bank, "euclidean")
        np.fill_diagonal(d, np.inf)
        loo = np.stack([d.min(axis=1), (d / density[None, :]).min(axis=1)], axis=1)
        _check_spread(b, loo, density)
        fusion = np.r_[loo.mean(axis=0), loo.std(axis=0)]
        arrays |= {f"{b}_mean": mean, f"{b}_std": std, f"{b}_bank": bank,
                   f"{b}_density": density, f"{b}_fusion": fusion}
        parts.append((loo - fusion[:2]) / fusion[2:])
    w = np.asarray(weights, dtype=np.float64)
    return arrays, np.concatenate(parts, axis=1) @ w / w.sum()


@register
class SpectralKnnRule(ScoreRule):
    name = "spectral-knn"
    output = "moments"
    needs = tuple(f"{b}_{a}" for b in BRANCHES for a in ("mean", "std", "bank", "density",
                                                           "fusion")) + ("fusion_weights", "n_mels")

    def validate(self) -> None:
        n_mels = np.asarray(self.arrays["n_mels"])
        if n_mels.shape != () or n_mels.dtype.kind not in "iu" or int(n_mels) < 1:
            raise RuleError(f"array 'n_mels' = {n_mels.tolist()!r}; expected one whole number "
                            f"above 0")
        for b in BRANCHES:
            v = self.shape_of(f"{b}_mean", 1)[0]
            if b == "mel":
                self.same("mel_mean", v, 2 * int(n_mels), "values (2 x n_mels)")
            self.same(f"{b}_std", self.shape_of(f"{b}_std", 1)[0], v, f"values (as {b}_mean)")
            self.positive(f"{b}_std")
            n, width = self.shape_of(f"{b}_bank", 2)
            self.same(f"{b}_bank", width, v, f"columns (as {b}_mean)")
            self.same(f"{b}_density", self.shape_of(f"{b}_density", 1)[0], n,
                      f"entries (the rows of {b}_bank)")
            self.positive(f"{b}_density")
            self.same(f"{b}_fusion", self.shape_of(f"{b}_fusion", 1)[0], 4,
                      "values (2 means, 2 spreads)")
            self.positive(f"{b}_fusion", np.asarray(self.arrays[f"{b}_fusion"])[2:])
        w = np.asarray(self.arrays["fusion_weights"], dtype=np.float64)
        self.same("fusion_weights", self.shape_of("fusion_weights", 1)[0], len(COMPONENTS),
                  f"values (one per component {list(COMPONENTS)})")
        if (w < 0).any() or w.sum() <= 0:
            raise RuleError(f"array 'fusion_weights' = {w.tolist()}: expected weights of at "
                            f"least 0 that do not sum to 0")

    def check_model(self, input_width: int, output_width: int) -> str | None:
        n_mels = int(self.arrays["n_mels"])
        width = 2 * (n_mels + len(self.arrays["spectrum_mean"]))
        return None if output_width == width else \
            f"moments of {width} values (mean and std of {n_mels} mels and " \
            f"{len(self.arrays['spectrum_mean'])} spectrum bins)"

    def evidence(self, inputs: np.ndarray | None, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

    def combine(self, evidence: np.ndarray) -> float:
        mean, std = pooled_moments(evidence)
        vectors = branch_vectors(mean, std, int(self.arrays["n_mels"]))
        return float(fused_score(vectors, self.arrays, self.arrays["fusion_weights"])[0])
