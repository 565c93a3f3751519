"""baseline-knn: the floor every results table shows.

A clip becomes the mean and the standard deviation of its log-mel frames (256 numbers),
standardised with the training clips' statistics; its score is the Euclidean distance to
the nearest normal training clip of the same section. No learning, no test labels.

Score rules: ``knn`` (the distance itself) and ``knn-density`` (each training clip's
distance in units of its local density, agent/rules/density.py: one threshold for a dense
source domain and a sparse target domain, with no domain label).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from harken.agent.errors import DataError, UsageError
from harken.agent.features import FeatureSpec, preset
from harken.agent.rules.density import DEFAULT_K, local_densities, normalised_min_distance
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels
from harken.training.runs import RunError, normal_score_stats, read_run, write_run


def clip_vector(logmel: np.ndarray) -> np.ndarray:
    return np.concatenate([logmel.mean(axis=0), logmel.std(axis=0)]).astype(np.float64)


class KnnBaseline:
    name = "baseline-knn"
    summary = "nearest normal clip by mean+std of log-mel frames (no learning)"
    score_rules = ("knn", "knn-density")
    default_rule = "knn"

    def __init__(self, spec: FeatureSpec | None = None, density_k: int = DEFAULT_K) -> None:
        self.spec = spec or preset("dcase2020-ae")
        self.density_k = density_k
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.bank: dict[int, np.ndarray] = {}
        self.density: dict[int, np.ndarray] = {}

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

    def _fit_densities(self) -> None:
        self.density = {s: local_densities(bank, self.density_k, "euclidean")
                        for s, bank in self.bank.items()}

    def score_vectors(self, vectors: np.ndarray, sections: Sequence[int],
                      rule: str = "knn") -> np.ndarray:
        z = (vectors - self.mean) / self.std
        out = np.empty(len(z))
        for i, (v, s) in enumerate(zip(z, sections)):
            if int(s) not in self.bank:
                raise DataError(f"section {int(s):02d} was not in the training data "
                                 f"(trained sections: {sorted(self.bank)})")
            if rule == "knn-density":
                out[i] = normalised_min_distance(v, self.bank[int(s)], self.density[int(s)],
                                                 "euclidean")[0]
            else:
                out[i] = np.sqrt(((self.bank[int(s)] - v) ** 2).sum(axis=1)).min()
        return out

    # -- run directory interface -------------------------------------------------------
    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> dict:
        machine = clips[0].machine
        loo = self.fit_vectors(self.vectors(clips, progress), [c.section for c in clips])
        run_dir.mkdir(parents=True, exist_ok=True)
        np.save(run_dir / "mean.npy", self.mean)
        np.save(run_dir / "std.npy", self.std)
        for s, bank in self.bank.items():
            np.save(run_dir / f"bank_section_{s:02d}.npy", bank)
        return write_run(run_dir, method=self.name, machine=machine, spec=self.spec,
                         params={"vector": "mean+std of log-mel frames", "distance": "euclidean",
                                 "k": 1, "density_k": self.density_k},
                         train_clips=clips, normal_scores=normal_score_stats(loo))

    @classmethod
    def load(cls, run_dir: Path) -> KnnBaseline:
        info = read_run(run_dir)
        self = cls(FeatureSpec.from_dict(info["feature_spec"], f"{run_dir}/run.json"),
                   int(info.get("params", {}).get("density_k", DEFAULT_K)))
        try:
            self.mean = np.load(run_dir / "mean.npy", allow_pickle=False)
            self.std = np.load(run_dir / "std.npy", allow_pickle=False)
            for s in info["sections"]:
                self.bank[int(s)] = np.load(run_dir / f"bank_section_{int(s):02d}.npy",
                                            allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunError(f"{run_dir}: cannot load baseline arrays ({exc})") from None
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
