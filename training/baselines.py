"""baseline-knn: the floor every results table shows.

A clip becomes the mean and the standard deviation of its log-mel frames (256 numbers),
standardised with the training clips' statistics; its score is the Euclidean distance to
the nearest normal training clip of the same section. No learning, no test labels.

Score rules: ``knn`` (the distance itself) and ``knn-density`` (each training clip's
distance in units of its local density, agent/model/rules/density.py: one threshold for a dense
source domain and a sparse target domain, with no domain label). The density's
neighbourhood k is chosen on the training clips alone (``choose_density_k``): cross-fitted
held-out normal clips against pseudo-anomalous copies of them, each domain on its own.
``knn-fused`` is the score fusion of the two: each standardised with its section's
leave-one-out scores of the training clips, then averaged with equal weights (the plain
distance is sharp where normal sound is dense, the density one fair to sparse domains).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from harken.common.readers import read_array
from harken.common.errors import DataError, UsageError
from harken.agent.features import FeatureSpec, preset
from harken.agent.model.rules.density import DEFAULT_K, local_densities, normalised_min_distance
from harken.training.metrics import hmean
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels
from harken.training.run_checks import check_finite, check_shape
from harken.training.runs import RunError, RunInfo, normal_score_stats, read_run, write_run


DENSITY_K_CHOICES = (1, 2, 4, 8)
CHOICE_FOLDS = 5


def clip_vector(logmel: np.ndarray) -> np.ndarray:
    return np.concatenate([logmel.mean(axis=0), logmel.std(axis=0)]).astype(np.float64)


def folds_by_group(sections: Sequence[int], domains: Sequence[str], folds: int,
                   seed: int = 0) -> np.ndarray:
    """A fold index per clip, dealt round-robin within each (section, domain) group in a
    seeded order, so every fold holds out some clips of every group."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(sections), dtype=int)
    keys = list(zip(sections, domains))
    for key in sorted(set(keys)):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % folds
    return out


def domain_balanced_auc(normal: np.ndarray, pseudo: np.ndarray, sections: np.ndarray,
                        domains: np.ndarray, pseudo_sections: np.ndarray) -> float:
    """Harmonic mean over sections of AUC(source normals vs the section's pseudo-anomalies)
    and AUC(target normals vs them): the official score's domain balance, on training data."""
    from sklearn.metrics import roc_auc_score
    values = []
    for s in np.unique(sections):
        bad = pseudo[pseudo_sections == s]
        for d in ("source", "target"):
            good = normal[(sections == s) & (domains == d)]
            if len(good) and len(bad):
                y = np.r_[np.zeros(len(good)), np.ones(len(bad))]
                values.append(float(roc_auc_score(y, np.r_[good, bad])))
    return hmean(values)


class KnnBaseline:
    name = "baseline-knn"
    summary = "nearest normal clip by mean+std of log-mel frames (no learning)"
    score_rules = ("knn", "knn-density", "knn-fused")
    default_rule = "knn"

    def __init__(self, spec: FeatureSpec | None = None, density_k: int = DEFAULT_K) -> None:
        self.spec = spec or preset("dcase2020-ae")
        self.density_k = density_k
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.bank: dict[int, np.ndarray] = {}
        self.density: dict[int, np.ndarray] = {}
        self.loo_stats: dict[int, dict[str, tuple[float, float]]] = {}   # fusion scales

    def vectors(self, clips: Sequence[Clip], progress: bool = True) -> np.ndarray:
        return np.stack([clip_vector(m) for m in clip_logmels(clips, self.spec, progress)])

    def fit_vectors(self, vectors: np.ndarray, sections: Sequence[int]) -> np.ndarray:
        """Fit on training vectors; returns their leave-one-out scores (normal scores)."""
        self.mean = vectors.mean(axis=0)
        self.std = vectors.std(axis=0) + 1e-8
        z = (vectors - self.mean) / self.std
        sections = np.asarray(sections)
        self.bank = {int(s): z[sections == s] for s in np.unique(sections)}
        loo = np.empty(len(z))
        for s, bank in self.bank.items():
            if len(bank) < 2:
                raise DataError(f"section {s:02d} needs at least 2 training clips, has {len(bank)}")
            d = cdist(bank, bank)
            np.fill_diagonal(d, np.inf)
            loo[sections == s] = d.min(axis=1)
        self._fit_densities()
        return loo

    def choose_density_k(self, clips: Sequence[Clip], logmels: Sequence[np.ndarray],
                         seed: int = 0, progress: bool = True) -> tuple[int, dict[str, float]]:
        """The k of knn-density that best separates held-out normal training clips from
        pseudo-anomalous copies of them (another machine type or pink noise mixed in at
        -20..0 dB), each domain on its own (``domain_balanced_auc``); the bank of each fold
        is the other folds' clips. No test clip is involved."""
        from harken.training.data.pseudo_anomalies import pseudo_anomalous, pseudo_anomaly_pool
        pool, _ = pseudo_anomaly_pool(list(clips), self.spec, seed, progress=progress)
        sections = np.array([c.section for c in clips])
        domains = np.array([c.domain for c in clips])
        z = (np.stack([clip_vector(m) for m in logmels]) - self.mean) / self.std
        fake = pseudo_anomalous(logmels, pool, self.spec, seed)
        zf = (np.stack([clip_vector(m) for m in fake]) - self.mean) / self.std
        fold = folds_by_group(sections, domains, CHOICE_FOLDS, seed)
        normal = {k: np.empty(len(z)) for k in DENSITY_K_CHOICES}
        pseudo = {k: np.empty(len(z)) for k in DENSITY_K_CHOICES}
        for f in range(CHOICE_FOLDS):
            held = np.flatnonzero(fold == f)
            for s in np.unique(sections[held]):
                bank = z[(fold != f) & (sections == s)]
                here = held[sections[held] == s]
                for k in DENSITY_K_CHOICES:
                    dens = local_densities(bank, k, "euclidean")
                    normal[k][here] = normalised_min_distance(z[here], bank, dens, "euclidean")
                    pseudo[k][here] = normalised_min_distance(zf[here], bank, dens, "euclidean")
        aucs = {str(k): domain_balanced_auc(normal[k], pseudo[k], sections, domains, sections)
                for k in DENSITY_K_CHOICES}
        best = max(DENSITY_K_CHOICES, key=lambda k: aucs[str(k)])
        return best, aucs

    def _fit_densities(self) -> None:
        """Each training clip's local density, and each rule's leave-one-out score mean
        and spread per section (the fusion's standardisation)."""
        self.density = {s: local_densities(bank, self.density_k, "euclidean")
                        for s, bank in self.bank.items()}
        self.loo_stats = {}
        for s, bank in self.bank.items():
            d = cdist(bank, bank)
            np.fill_diagonal(d, np.inf)
            loo = {"knn": d.min(axis=1), "knn-density": (d / self.density[s][None, :]).min(axis=1)}
            self.loo_stats[s] = {r: (float(v.mean()), float(max(v.std(), 1e-12)))
                                 for r, v in loo.items()}

    def score_vectors(self, vectors: np.ndarray, sections: Sequence[int],
                      rule: str = "knn") -> np.ndarray:
        z = (vectors - self.mean) / self.std
        out = np.empty(len(z))
        for i, (v, s) in enumerate(zip(z, sections)):
            if int(s) not in self.bank:
                raise DataError(f"section {int(s):02d} was not in the training data "
                                 f"(trained sections: {sorted(self.bank)})")
            plain = float(np.sqrt(((self.bank[int(s)] - v) ** 2).sum(axis=1)).min())
            if rule == "knn":
                out[i] = plain
                continue
            dense = float(normalised_min_distance(v, self.bank[int(s)], self.density[int(s)],
                                                  "euclidean")[0])
            if rule == "knn-density":
                out[i] = dense
            else:                                             # knn-fused
                (ma, sa), (mb, sb) = (self.loo_stats[int(s)][r] for r in ("knn", "knn-density"))
                out[i] = 0.5 * ((plain - ma) / sa + (dense - mb) / sb)
        return out

    # -- run directory interface -------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        machine = clips[0].machine
        logmels = clip_logmels(clips, self.spec, progress)
        loo = self.fit_vectors(np.stack([clip_vector(m) for m in logmels]),
                               [c.section for c in clips])
        self.density_k, self.density_choice = self.choose_density_k(clips, logmels,
                                                                    progress=progress)
        self._fit_densities()
        run_dir.mkdir(parents=True, exist_ok=True)
        np.save(run_dir / "mean.npy", self.mean)
        np.save(run_dir / "std.npy", self.std)
        for s, bank in self.bank.items():
            np.save(run_dir / f"bank_section_{s:02d}.npy", bank)
        return write_run(run_dir, method=self.name, machine=machine, spec=self.spec,
                         params={"vector": "mean+std of log-mel frames", "distance": "euclidean",
                                 "k": 1, "density_k": self.density_k,
                                 "density_k_choice": {
                                     "rule": "held-out training clips vs pseudo-anomalous "
                                             "copies, AUC per domain (harmonic mean)",
                                     "auc": self.density_choice}},
                         train_clips=clips, normal_scores=normal_score_stats(loo),
                         held_out=(clips, loo))

    @classmethod
    def load(cls, run_dir: Path) -> KnnBaseline:
        info = read_run(run_dir)
        k = info.params.get("density_k", DEFAULT_K)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RunError(f"{run_dir}/run.json: params: density_k must be a whole number at "
                           f"least 1, got {k!r}")
        self = cls(FeatureSpec.from_dict(info.feature_spec, f"{run_dir}/run.json"), k)
        width = 2 * self.spec.n_mels          # clip_vector: mean and spread per mel band
        arrays = {"mean.npy": (width,), "std.npy": (width,),
                  **{f"bank_section_{int(s):02d}.npy": (None, width) for s in info.sections}}
        for name, shape in arrays.items():
            arrays[name] = read_array(run_dir / name, error=RunError)
            check_shape(run_dir / name, arrays[name], shape, f"clip vectors of 2 x n_mels = {width} "
                        f"values (run.json's feature_spec)")
            check_finite(run_dir / name, {name: arrays[name]})
        self.mean, self.std = arrays["mean.npy"], arrays["std.npy"]
        for s in info.sections:
            self.bank[int(s)] = arrays[f"bank_section_{int(s):02d}.npy"]
        self._fit_densities()
        return self

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        rule = rule or self.default_rule
        if rule not in self.score_rules:
            raise UsageError(f"baseline-knn has the score rules {list(self.score_rules)} "
                             f"(asked for '{rule}')")
        return self.score_vectors(self.vectors(clips, progress), [c.section for c in clips],
                                  rule)
