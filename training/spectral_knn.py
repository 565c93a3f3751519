"""spectral-knn: the default detector. No network to train: each section's normal clips
become a reference bank of sound statistics, and a clip is scored by how far it lies from
them (agent/model/rules/spectral_knn.py has the rule and says why each part is there).

Why this is the default (docs/results.md has the figures): it beats every trained method
on the standard corpus, the target domain included, trains in well under a minute on a
workstation, has nothing to over-fit to one corpus (the density neighbourhood is fixed in
advance; the fusion weights are chosen per machine type from its own training clips, with
no labels), and the same bank can be learned on site from a few minutes of normal sound.

Score rules (``--score``): ``auto`` (default: the weights of a named variant, chosen per
machine type by a label-free pseudo-fault proxy, training/branch_choice.py; chosen as the
default on the validation types, docs/generalisation.md), ``fused`` (the mel and spectrum
branches, both component scores each: the default before), ``plain`` (nearest-clip
distances only, no density normalisation), ``density`` (LDN only), ``mel``, ``spectrum``,
``modulation``, ``temporal`` and ``cepstrum`` (one branch only), ``all`` (all five branches,
equal weights), ``stats`` (all but the 513-bin spectrum) and ``custom`` (the ``weights``
setting: ten numbers, knn and density of each branch in the order mel, spectrum,
modulation, temporal, cepstrum). A run keeps the banks of every branch, so one training
scores every variant; every one is computed by the agent's rule with other fusion weights.
A bundle's rule is always the agent's ``spectral-knn`` with the weights of the ``score``
setting and the arrays of only the branches those weights count; asked for by that name,
this method scores with those weights too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harken.common.readers import read_arrays
from harken.common.errors import DataError, UsageError
from harken.agent.features import FeatureSpec, preset, windows
from harken.agent.model.rules.density import DEFAULT_K
from harken.agent.model.rules.spectral_knn import (ALL_BRANCHES, ALL_COMPONENTS,
                                                   branch_statistics, fit_branches,
                                                   fused_score, interval_vectors, present,
                                                   window_evidence, window_moments)
from harken.training.config import Caps, Count, check_settings, with_overrides
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels
from harken.training.method import DeviceGraph
from harken.agent.model.rules import make_rule
from harken.training.run_checks import check_rule_arrays
from harken.training.runs import RunError, RunInfo, normal_score_stats, read_run, write_run

log = logging.getLogger(__name__)

# The training-side score variants (what ``evaluate --score`` takes): fusion weights in
# ALL_COMPONENTS order (mel-knn, mel-density, spectrum-knn, spectrum-density, modulation-knn,
# ... cepstrum-density). On the device each is the one rule DEVICE_RULE with the arrays of the
# branches it weighs and their weights (training/method.py: names).
def _w(**branches: tuple[float, float]) -> tuple[float, ...]:
    return tuple(x for b in ALL_BRANCHES for x in branches.get(b, (0.0, 0.0)))


BOTH = (1.0, 1.0)
VARIANT_WEIGHTS = {"fused": _w(mel=BOTH, spectrum=BOTH),
                   "plain": _w(mel=(1.0, 0.0), spectrum=(1.0, 0.0)),
                   "density": _w(mel=(0.0, 1.0), spectrum=(0.0, 1.0)),
                   **{b: _w(**{b: BOTH}) for b in ALL_BRANCHES},
                   "all": _w(**{b: BOTH for b in ALL_BRANCHES}),
                   "stats": _w(**{b: BOTH for b in ALL_BRANCHES if b != "spectrum"})}
CUSTOM = "custom"                     # the variant of the ``weights`` setting
# ``score=auto``: the weights are chosen per machine type at training, without labels, by
# training/branch_choice.py's pseudo-fault proxy among the named variants; the run keeps the
# chosen variant (``chosen``), its weights (``chosen_weights``) and the proxy's table (``proxy``
AUTO = "auto"
FALLBACK = "fused"            # auto's weights where the training clips are too few to choose
DEVICE_RULE = "spectral-knn"          # agent/model/rules/ name
STATE = "bank.npz"


def parse_weights(text: str) -> tuple[float, ...]:
    """The ``weights`` setting: ten numbers >= 0 (comma- or space-separated), not all 0."""
    try:
        w = tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        w = ()
    if (len(w) != len(ALL_COMPONENTS) or not all(np.isfinite(w)) or min(w) < 0
            or not 0 < sum(w) < np.inf):
        raise UsageError(f"weights must be {len(ALL_COMPONENTS)} numbers >= 0, not all 0, with a "
                         f"finite sum, one "
                         f"per component {list(ALL_COMPONENTS)}, got {text!r}")
    return w


def weighed(weights: Sequence[float]) -> tuple[tuple[str, ...], np.ndarray]:
    """The branches that ``weights`` (ALL_COMPONENTS order) count, and their weights."""
    w = np.asarray(weights, dtype=np.float64).reshape(len(ALL_BRANCHES), 2)
    keep = [i for i in range(len(ALL_BRANCHES)) if w[i].sum() > 0]
    return tuple(ALL_BRANCHES[i] for i in keep), w[keep].reshape(-1)


@dataclass(frozen=True)
class SpectralKnnConfig:
    density_k: Count = DEFAULT_K       # LDN neighbourhood; below the smallest domain's clip count
    # the variant the bundle ships; 'auto' (the default, chosen on the validation types:
    # docs/generalisation.md) picks it per machine type from training clips alone
    score: str = "auto"
    weights: str = ""                # the 'custom' variant's ten weights (ALL_COMPONENTS)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.weights:
            parse_weights(self.weights)
        if self.score not in (*VARIANT_WEIGHTS, CUSTOM, AUTO):
            raise UsageError(f"score must be one of {[*VARIANT_WEIGHTS, CUSTOM, AUTO]}, got "
                             f"{self.score!r}")
        if self.score == CUSTOM and not self.weights:
            raise UsageError("score=custom needs the weights setting (--set weights=W1,...,W10: "
                             f"one per component {list(ALL_COMPONENTS)})")

    def variants(self) -> dict[str, tuple[float, ...]]:
        """Every named variant's weights (``custom`` when ``weights`` is set)."""
        return {**VARIANT_WEIGHTS, **({CUSTOM: parse_weights(self.weights)} if self.weights
                                      else {})}


def clip_statistics(logmels: Sequence[np.ndarray], spec: FeatureSpec, n_mels: int,
                    progress: bool = False, names: Sequence[str] | None = None,
                    branches: Sequence[str] = ALL_BRANCHES) -> dict[str, np.ndarray]:
    """Branch vectors of each clip, pooled from its windows by the functions the device
    pools an interval's with (agent/model/rules/spectral_knn.py ``window_evidence`` and
    ``interval_vectors``), so training and device see the same statistics; ``names`` name
    the clips in errors."""
    branches = present(branches)
    out: dict[str, list[np.ndarray]] = {b: [] for b in branches}
    for i, m in enumerate(tqdm(logmels, desc="statistics", unit="clip", disable=not progress,
                               leave=False)):
        w = windows(m, spec)
        if len(w) == 0:
            raise DataError(f"{names[i] if names else f'clip {i}'}: {len(m)} frames, shorter "
                            f"than one {spec.window_frames}-frame window "
                            f"({spec.window_seconds:.2f} s)")
        evidence = window_evidence(window_moments(w), w, n_mels, branches)
        for b, v in interval_vectors(evidence, n_mels, spec.n_features, branches).items():
            out[b].append(v)
    return {b: np.stack(v) for b, v in out.items()}


class _ScoreRules:
    """``score_rules``: of the class, the named variants; of a method, also ``custom`` when
    its ``weights`` setting is set."""

    def __get__(self, obj: SpectralKnn | None, cls: type) -> tuple[str, ...]:
        return tuple(VARIANT_WEIGHTS) if obj is None else tuple(obj.variants())


class SpectralKnn:
    name = "spectral-knn"
    score_rules = _ScoreRules()
    summary = ("mel, spectrum, modulation, temporal and cepstrum statistics, nearest normal "
               "clip + local density, fused (no training)")
    config_cls = SpectralKnnConfig

    def __init__(self, config: SpectralKnnConfig | None = None,
                 overrides: list[str] | None = None, spec: FeatureSpec | None = None) -> None:
        self.config = with_overrides(config or SpectralKnnConfig(), overrides)
        self.spec = spec or preset("spectral-knn")
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}      # branch -> mean, std
        self.banks: dict[int, dict[str, np.ndarray]] = {}              # section -> role -> array
        self.info: RunInfo | None = None
        self.caps = Caps()          # settings the data made smaller (run.json params 'capped')
        self.chosen: tuple[float, ...] | None = None     # score=auto's weights, once chosen

    @classmethod
    def default_settings(cls) -> dict:
        return asdict(SpectralKnnConfig())

    @property
    def default_rule(self) -> str:
        return self.config.score

    def variants(self) -> dict[str, tuple[float, ...]]:
        """Every variant this model can score with: the named ones, ``custom`` when its
        ``weights`` setting is set, ``auto`` once its weights are chosen."""
        return {**self.config.variants(), **({AUTO: self.chosen} if self.chosen else {})}

    def weights_of(self, variant: str | Sequence[float]) -> tuple[float, ...]:
        """A variant's ten weights (ALL_COMPONENTS order); a sequence of ten is taken as
        it is (a per-machine choice of weights)."""
        if not isinstance(variant, str):
            return parse_weights(" ".join(str(float(x)) for x in variant))
        variants = self.variants()
        if variant == AUTO and variant not in variants:
            raise UsageError("score 'auto' has no weights yet: they are chosen when the method "
                             "trains (train()), from the training clips")
        if variant not in variants:
            raise UsageError(f"spectral-knn has the score rules {list(variants)} "
                             f"(asked for '{variant}')")
        return variants[variant]

    # -- fitting -------------------------------------------------------------------------
    def fit(self, vectors: dict[str, np.ndarray], sections: Sequence[int]) -> np.ndarray:
        """Fit banks, densities and fusion scales of every branch in ``vectors`` (a dict
        per branch, as ``clip_statistics`` gives); returns the training clips'
        leave-one-out scores with the default rule (their normal scores)."""
        sections = np.asarray(sections)
        self.stats = branch_statistics(vectors)     # over every section of the machine type
        self.banks = {}
        self.caps = Caps()
        branches, w = weighed(self.weights_of(self.default_rule))
        missing = [b for b in branches if b not in vectors]
        if missing:
            raise DataError(f"score {self.default_rule!r} weighs branches {missing}, which "
                            f"the vectors lack (they have {list(vectors)})")
        loo_fused = np.empty(len(sections))
        for s in np.unique(sections):
            here = sections == s
            if here.sum() < 2:
                raise DataError(f"section {int(s):02d} needs at least 2 training clips, "
                                f"has {int(here.sum())}")
            n = int(here.sum())
            k = self.caps.cap("density_k", self.config.density_k, n - 1,
                              f"the {n - 1} other training clips of section {int(s):02d}")
            self.banks[int(s)], parts = fit_branches(
                {b: v[here] for b, v in vectors.items()}, self.stats, k)
            loo_fused[here] = np.concatenate([parts[b] for b in branches], axis=1) @ w / w.sum()
        return loo_fused

    def choose(self, clips: Sequence[Clip], progress: bool = True) -> dict:
        """``score=auto``: the label-free choice among the named variants on these training
        clips (training/branch_choice.py; docs/training.md "Choosing branches without
        labels"); the chosen weights become this run's ``weights`` setting."""
        from harken.training.branch_choice import choose_variant
        try:
            choice = choose_variant(clips, dict(VARIANT_WEIGHTS), spec=self.spec,
                                    density_k=self.config.density_k, progress=progress)
        except (DataError, UsageError) as exc:
            # too few (or too alike) clips to hold some out: the weights of before, said so
            log.warning(f"WARNING: {clips[0].machine}: score=auto could not choose the weights "
                        f"from these training clips ({exc}); using {FALLBACK!r} (more distinct "
                        f"normal clips let it choose)")
            self.chosen = VARIANT_WEIGHTS[FALLBACK]
            return {"chosen": FALLBACK, "fallback": str(exc), "variants": []}
        self.chosen = tuple(float(x) for x in choice.row(choice.chosen).weights)
        if progress:
            print(f"{clips[0].machine}: score=auto chose {choice.chosen!r} (label-free proxy)\n"
                  f"{choice.format_table()}")
        return choice.to_dict()

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        machine = clips[0].machine
        # the statistics first: a clip they cannot use is refused naming its file
        vectors = clip_statistics(clip_logmels(clips, self.spec, progress), self.spec,
                                  self.spec.n_mels, progress, [str(c.path) for c in clips])
        proxy = self.choose(clips, progress) if self.config.score == AUTO else None
        loo = self.fit(vectors, [c.section for c in clips])
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(run_dir / STATE, **{f"s{s:02d}__{role}": a for s, arrays in self.banks.items()
                                     for role, a in arrays.items()})
        self.info = write_run(
            run_dir, method=self.name, machine=machine, spec=self.spec,
            params={**asdict(self.config), "branches": {
                        "mel": "mean and std over time of each mel band",
                        "spectrum": f"mean over time of each of {self.spec.n_freqs} "
                                    "log power spectrum bins",
                        "modulation": "modulation depth of each band group's envelope, "
                                      "1-15.6 Hz (agent/features/modulation.py)",
                        "temporal": "kurtosis, crest factor, p90 and p99 above the median "
                                    "of each band group's frame power "
                                    "(agent/features/temporal.py)",
                        "cepstrum": "mean and std over frames of the real cepstrum, 0.5-8 ms "
                                    "(agent/features/cepstrum.py)"},
                    "components": list(ALL_COMPONENTS), "distance": "euclidean",
                    "rule_weights": {r: list(w) for r, w in self.variants().items()},
                    **({"chosen": proxy["chosen"], "chosen_weights": list(self.chosen),
                        "proxy": proxy} if proxy else {}),
                    **({"capped": dict(self.caps)} if self.caps else {})},
            train_clips=clips, normal_scores=normal_score_stats(loo), held_out=(clips, loo))
        return self.info

    @classmethod
    def load(cls, run_dir: Path) -> SpectralKnn:
        info = read_run(run_dir)
        params = info.params
        try:
            config = SpectralKnnConfig(density_k=params.get("density_k", DEFAULT_K),
                                       score=params.get("score", "fused"),
                                       weights=params.get("weights", ""))
        except UsageError as exc:
            raise RunError(f"{run_dir / 'run.json'}: params: {exc}") from None
        self = cls(config, spec=FeatureSpec.from_dict(info.feature_spec,
                                                      f"{run_dir}/run.json"))
        self.info = info
        if config.score == AUTO:
            try:
                chosen = params["chosen_weights"]
                if not isinstance(chosen, list) or any(
                        isinstance(x, bool) or not isinstance(x, (int, float)) for x in chosen):
                    raise TypeError(f"got {chosen!r}, not a list of numbers")
                self.chosen = parse_weights(" ".join(str(float(x)) for x in chosen))
            except (KeyError, TypeError, ValueError, UsageError) as exc:
                raise RunError(f"{run_dir / 'run.json'}: params: score 'auto' needs its chosen "
                               f"weights in 'chosen_weights' (ten numbers >= 0): {exc}") from None
        for key, array in read_arrays(run_dir / STATE, what="reference banks", error=RunError).items():
            s, _, role = key.partition("__")
            if not (s[:1] == "s" and s[1:].isdigit() and role):
                raise RunError(f"{run_dir / STATE}: array {key!r} is no section's (sNN__role)")
            self.banks.setdefault(int(s[1:]), {})[role] = array
        missing = [s for s in info.sections if s not in self.banks]
        if missing:
            raise RunError(f"{run_dir / STATE}: no bank for section(s) {missing}")
        spec = self.spec
        # every branch the run holds is checked, not only those of its own rule: any
        # variant (evaluate --score all) may read them
        check_rule_arrays(info.sections, DEVICE_RULE,
                          lambda s: self.rule_arrays(s, self._held(s)), lambda s: run_dir / STATE)
        for s in info.sections:              # the arrays fit the spec's windows
            problem = make_rule(DEVICE_RULE, self.rule_arrays(s, self._held(s))).check_model(
                spec.window_frames * spec.n_features, 2 * spec.n_features)
            if problem:
                raise RunError(f"{run_dir / STATE}: section {s:02d}: the feature settings give "
                               f"{spec.window_frames} frames of {spec.n_features} values, the "
                               f"arrays expect {problem}")
        return self

    def _held(self, section: int) -> tuple[float, ...]:
        """Weights that count every branch this section's bank holds any array of."""
        bank = self.banks.get(section, {})
        return tuple(1.0 if any(k.startswith(f"{b}_") for k in bank) else 0.0
                     for b in ALL_BRANCHES for _ in range(2))

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

    def rule_arrays(self, section: int, variant: str | Sequence[float] | None = None
                    ) -> dict[str, np.ndarray]:
        """What agent/model/rules/spectral_knn.py needs to score ``section`` with the
        ``variant``'s weights (the run's own without one; export ships that): the arrays
        of only the branches those weights count (a ``fused`` bundle is as before the
        other branches existed)."""
        variant = self._variant(variant) if isinstance(variant, str) or variant is None \
            else variant
        if section not in self.banks:
            raise DataError(f"section {section:02d} was not in the training data "
                            f"(trained sections: {sorted(self.banks)})")
        branches, w = weighed(self.weights_of(variant))
        bank = self.banks[section]
        roles = ("mean", "std", "bank", "density", "fusion")
        missing = [f"{b}_{r}" for b in branches for r in roles if f"{b}_{r}" not in bank]
        if missing:
            absent = [b for b in branches if not any(f"{b}_{r}" in bank for r in roles)]
            raise DataError(f"no array(s) {missing} for score {variant!r}" + (
                f" (branch(es) {absent}: a run trained before they existed)" if absent else ""))
        return {**{f"{b}_{r}": bank[f"{b}_{r}"] for b in branches for r in roles},
                "fusion_weights": w, "n_mels": np.asarray(self.spec.n_mels)}

    def score_vectors(self, vectors: dict[str, np.ndarray], sections: Sequence[int],
                      variant: str | Sequence[float]) -> np.ndarray:
        """Scores of clips' branch vectors (``clip_statistics``) with a variant's name or
        any ten weights (ALL_COMPONENTS order): what a per-machine chooser calls."""
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
        rules = list(rules or self.score_rules)
        needed = {b for r in rules for b in weighed(self.weights_of(self._variant(r)))[0]}
        vectors = clip_statistics(clip_logmels(clips, self.spec, progress), self.spec,
                                  self.spec.n_mels, progress, [str(c.path) for c in clips],
                                  branches=[b for b in ALL_BRANCHES if b in needed])
        sections = [c.section for c in clips]
        return {r: self.score_vectors(vectors, sections, self._variant(r)) for r in rules}
