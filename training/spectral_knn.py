"""spectral-knn: the default detector. No network to train: each section's normal clips
become a reference bank of sound statistics, and a clip is scored by how far it lies from
them (agent/model/rules/spectral_knn.py has the rule and says why each part is there).

Why this is the default (docs/results.md has the figures): it beats every trained method
on the standard corpus, the target domain included, trains in seconds on a Raspberry Pi
as well as on a workstation, has nothing to over-fit to one corpus (two settings, both
with defaults fixed in advance: the density neighbourhood and the fusion weights), and the
same bank can be learned on site from a few minutes of normal sound.

Score rules (``--score``): ``fused`` (default: all four component scores), ``plain``
(nearest-clip distances only, no density normalisation), ``density`` (LDN only), ``mel``
and ``spectrum`` (one branch only). The ablations exist so the results page can say what
each part adds; every one is computed by the agent's rule with other fusion weights.
A bundle's rule is always the agent's ``spectral-knn`` with the weights of the ``score``
setting; asked for by that name, this method scores with those weights too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harken.common.readers import read_arrays
from harken.common.errors import DataError, UsageError
from harken.agent.features import FeatureSpec, preset, windows
from harken.agent.model.rules.density import DEFAULT_K
from harken.agent.model.rules.spectral_knn import (BRANCHES, COMPONENTS, branch_statistics,
                                             branch_vectors, fit_bank, fused_score,
                                             pooled_moments, window_moments)
from harken.training.config import Caps, Count, check_settings, with_overrides
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels
from harken.training.method import DeviceGraph
from harken.training.run_checks import check_rule_arrays
from harken.training.runs import RunError, RunInfo, normal_score_stats, read_run, write_run

# The training-side score variants (what ``evaluate --score`` takes): fusion weights in
# COMPONENTS order (mel-knn, mel-density, spectrum-knn, spectrum-density). On the device each
# is the one rule DEVICE_RULE with its weights among the arrays (training/method.py: names).
VARIANT_WEIGHTS = {"fused": (1.0, 1.0, 1.0, 1.0), "plain": (1.0, 0.0, 1.0, 0.0),
                "density": (0.0, 1.0, 0.0, 1.0), "mel": (1.0, 1.0, 0.0, 0.0),
                "spectrum": (0.0, 0.0, 1.0, 1.0)}
DEVICE_RULE = "spectral-knn"          # agent/model/rules/ name
STATE = "bank.npz"


@dataclass(frozen=True)
class SpectralKnnConfig:
    density_k: Count = DEFAULT_K       # LDN neighbourhood; below the smallest domain's clip count
    score: str = "fused"             # the variant the bundle ships

    def __post_init__(self) -> None:
        check_settings(self)
        if self.score not in VARIANT_WEIGHTS:
            raise UsageError(f"score must be one of {list(VARIANT_WEIGHTS)}, got {self.score!r}")


def clip_statistics(logmels: Sequence[np.ndarray], spec: FeatureSpec, n_mels: int,
                    progress: bool = False, names: Sequence[str] | None = None
                    ) -> dict[str, np.ndarray]:
    """Branch vectors of each clip, pooled from window moments exactly as the device
    pools an interval's (so training and device see the same statistics); ``names`` name
    the clips in errors."""
    out: dict[str, list[np.ndarray]] = {b: [] for b in BRANCHES}
    for i, m in enumerate(tqdm(logmels, desc="statistics", unit="clip", disable=not progress,
                               leave=False)):
        w = windows(m, spec)
        if len(w) == 0:
            raise DataError(f"{names[i] if names else f'clip {i}'}: {len(m)} frames, shorter "
                            f"than one {spec.window_frames}-frame window "
                            f"({spec.window_seconds:.2f} s)")
        for b, v in branch_vectors(*pooled_moments(window_moments(w)), n_mels).items():
            out[b].append(v)
    return {b: np.stack(v) for b, v in out.items()}


class SpectralKnn:
    name = "spectral-knn"
    summary = "mel and spectrum statistics, nearest normal clip + local density, fused (no training)"
    score_rules = tuple(VARIANT_WEIGHTS)
    config_cls = SpectralKnnConfig

    def __init__(self, config: SpectralKnnConfig | None = None,
                 overrides: list[str] | None = None, spec: FeatureSpec | None = None) -> None:
        self.config = with_overrides(config or SpectralKnnConfig(), overrides)
        self.spec = spec or preset("spectral-knn")
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}      # branch -> mean, std
        self.banks: dict[int, dict[str, np.ndarray]] = {}              # section -> role -> array
        self.info: RunInfo | None = None
        self.caps = Caps()          # settings the data made smaller (run.json params 'capped')

    @classmethod
    def default_settings(cls) -> dict:
        return asdict(SpectralKnnConfig())

    @property
    def default_rule(self) -> str:
        return self.config.score

    # -- fitting -------------------------------------------------------------------------
    def fit(self, vectors: dict[str, np.ndarray], sections: Sequence[int]) -> np.ndarray:
        """Fit banks, densities and fusion scales; returns the training clips'
        leave-one-out scores with the default rule (their normal scores)."""
        sections = np.asarray(sections)
        self.stats = branch_statistics(vectors)     # over every section of the machine type
        self.banks = {}
        self.caps = Caps()
        loo_fused = np.empty(len(sections))
        for s in np.unique(sections):
            here = sections == s
            if here.sum() < 2:
                raise DataError(f"section {int(s):02d} needs at least 2 training clips, "
                                f"has {int(here.sum())}")
            n = int(here.sum())
            k = self.caps.cap("density_k", self.config.density_k, n - 1,
                              f"the {n - 1} other training clips of section {int(s):02d}")
            self.banks[int(s)], loo_fused[here] = fit_bank(
                {b: v[here] for b, v in vectors.items()}, self.stats, k,
                VARIANT_WEIGHTS[self.default_rule])
        return loo_fused

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        machine = clips[0].machine
        vectors = clip_statistics(clip_logmels(clips, self.spec, progress), self.spec,
                                  self.spec.n_mels, progress, [str(c.path) for c in clips])
        loo = self.fit(vectors, [c.section for c in clips])
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(run_dir / STATE, **{f"s{s:02d}__{role}": a for s, arrays in self.banks.items()
                                     for role, a in arrays.items()})
        self.info = write_run(
            run_dir, method=self.name, machine=machine, spec=self.spec,
            params={**asdict(self.config), "branches": {
                        "mel": "mean and std over time of each mel band",
                        "spectrum": f"mean over time of each of {self.spec.n_freqs} "
                                    "log power spectrum bins"},
                    "components": list(COMPONENTS), "distance": "euclidean",
                    "rule_weights": {r: list(w) for r, w in VARIANT_WEIGHTS.items()},
                    **({"capped": dict(self.caps)} if self.caps else {})},
            train_clips=clips, normal_scores=normal_score_stats(loo), held_out=(clips, loo))
        return self.info

    @classmethod
    def load(cls, run_dir: Path) -> SpectralKnn:
        info = read_run(run_dir)
        params = info.params
        try:
            config = SpectralKnnConfig(density_k=params.get("density_k", DEFAULT_K),
                                       score=params.get("score", "fused"))
        except UsageError as exc:
            raise RunError(f"{run_dir / 'run.json'}: params: {exc}") from None
        self = cls(config, spec=FeatureSpec.from_dict(info.feature_spec,
                                                      f"{run_dir}/run.json"))
        self.info = info
        for key, array in read_arrays(run_dir / STATE, what="reference banks", error=RunError).items():
            s, _, role = key.partition("__")
            if not (s[:1] == "s" and s[1:].isdigit() and role):
                raise RunError(f"{run_dir / STATE}: array {key!r} is no section's (sNN__role)")
            self.banks.setdefault(int(s[1:]), {})[role] = array
        missing = [s for s in info.sections if s not in self.banks]
        if missing:
            raise RunError(f"{run_dir / STATE}: no bank for section(s) {missing}")
        spec = self.spec
        width = 2 * (spec.n_mels + spec.n_fft // 2 + 1) if spec.spectrum else None
        check_rule_arrays(info.sections, DEVICE_RULE, self.rule_arrays,
                          lambda s: run_dir / STATE, width)
        return self

    # -- export (training/method.py's Exportable) ------------------------------------------
    def device_graph(self) -> DeviceGraph:
        from harken.training.models.window_moments import WindowMoments
        spec = self.spec
        return DeviceGraph(WindowMoments(spec.window_frames, spec.n_features).eval(),
                           (1, spec.window_frames * spec.n_features), ("moments",))

    def device_rule(self) -> str:
        return DEVICE_RULE

    # -- scoring -------------------------------------------------------------------------
    def _variant(self, score: str | None) -> str:
        """The variant a score name means: the device rule's name means the run's own."""
        score = score or self.default_rule
        return self.config.score if score == DEVICE_RULE else score

    def rule_arrays(self, section: int, variant: str | None = None) -> dict[str, np.ndarray]:
        """What agent/model/rules/spectral_knn.py needs to score ``section`` with the
        ``variant``'s weights (the run's own without one; export ships that)."""
        variant = self._variant(variant)
        if section not in self.banks:
            raise DataError(f"section {section:02d} was not in the training data "
                            f"(trained sections: {sorted(self.banks)})")
        if variant not in VARIANT_WEIGHTS:
            raise UsageError(f"spectral-knn has the score rules {list(VARIANT_WEIGHTS)} "
                             f"(asked for '{variant}')")
        return {**self.banks[section], "fusion_weights": np.asarray(VARIANT_WEIGHTS[variant]),
                "n_mels": np.asarray(self.spec.n_mels)}

    def score_vectors(self, vectors: dict[str, np.ndarray], sections: Sequence[int],
                      variant: str) -> np.ndarray:
        sections = np.asarray(sections)
        out = np.empty(len(sections))
        for s in np.unique(sections):
            here = sections == s
            arrays = self.rule_arrays(int(s), variant)
            out[here] = fused_score({b: v[here] for b, v in vectors.items()}, arrays,
                                    arrays["fusion_weights"])
        return out

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        rule = self._variant(rule)
        return self.score_all(clips, progress, [rule])[rule]

    def score_all(self, clips: Sequence[Clip], progress: bool = True,
                  rules: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every rule from one pass over the clips' features."""
        vectors = clip_statistics(clip_logmels(clips, self.spec, progress), self.spec,
                                  self.spec.n_mels, progress, [str(c.path) for c in clips])
        sections = [c.section for c in clips]
        return {r: self.score_vectors(vectors, sections, self._variant(r))
                for r in (rules or self.score_rules)}
