"""Label-free choice of spectral-knn's branches and fusion weights for one machine type
(issue 39 item 3; docs/training.md "Choosing branches without labels").

A user has only normal recordings. So each section's training clips are split into a part
to fit on and a held-out part (by folds, source and target domain split alike so both
parts keep target clips where there are enough), spectral-knn is fitted on the fit part,
and faint pseudo-faults (training/data/fault_proxy.py) are mixed into the held-out clips'
audio. Each candidate variant (a named weight vector, two weights per branch: knn and
density, in the branch order of the vectors) then scores the held-out normals and their
faulty copies; the proxy score is the DCASE official-style harmonic mean of AUC(source),
AUC(target) and pAUC over the sections (training/metrics.py), with the clips weighted so
that source and target count equally among the normals and among the faults of a section,
as they do in DCASE test sets (training data is mostly source; the rarer domain also gets
more faulty copies). The best variant wins; variants within ``tie`` of the best count
as tied and the simplest of them (fewest branches, then the order given: put the default
first) is chosen, since a branch left out is device time saved and one less thing to fit.

Everything works on a dict of branch vectors, so it takes whatever branches the
statistics carry (mel and spectrum today, more when they are added).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from harken.agent.features import FeatureSpec, LogMelExtractor, preset
from harken.agent.model.rules.density import DEFAULT_K
from harken.agent.model.rules.spectral_knn import component_scores
from harken.common.errors import DataError, UsageError
from harken.training.data.corpus import Clip, load
from harken.training.data.fault_proxy import ANR_DB, check_levels, pseudo_faults
from harken.training.metrics import MAX_FPR, SectionResult, official_score
from harken.training.spectral_knn import (VARIANT_WEIGHTS, SpectralKnn, SpectralKnnConfig,
                                          clip_statistics)

Vectors = dict[str, np.ndarray]
MIN_FIT = 2            # a bank needs two clips (agent/model/rules/spectral_knn.py fit_bank)
DEFAULT_FOLDS = 5      # 80 % fit, 20 % held out
MAX_COPIES = 5         # faulty copies of a target clip at most per source clip's
DEFAULT_TIE = 0.01     # about the seed-to-seed spread of a gap between variants (docs/training.md)


def default_candidates(branches: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """The method's own variants that fit these branches, each branch alone, and all
    branches with equal weights: a small set, so the choice does not over-fit the proxy."""
    width = 2 * len(branches)
    out = {name: tuple(w) for name, w in VARIANT_WEIGHTS.items() if len(w) == width}
    for i, b in enumerate(branches):
        if not any(_used(w, branches) == (b,) and all(w[2 * i:2 * i + 2])
                   for w in out.values()):
            out[b] = tuple(1.0 if j // 2 == i else 0.0 for j in range(width))
    equal = tuple([1.0] * width)
    if equal not in out.values():
        out["all"] = equal
    return out


def _used(weights: Sequence[float], branches: Sequence[str]) -> tuple[str, ...]:
    """The branches a weight vector uses (a non-zero weight)."""
    return tuple(b for i, b in enumerate(branches) if any(weights[2 * i:2 * i + 2]))


def check_candidates(candidates: Mapping[str, Sequence[float]], branches: Sequence[str]
                     ) -> dict[str, np.ndarray]:
    """Each candidate as an array of 2 x branches weights of at least 0, not all 0."""
    if not candidates:
        raise UsageError("no candidate variants to choose from")
    out = {}
    for name, w in candidates.items():
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (2 * len(branches),):
            raise UsageError(f"candidate {name!r} has {w.size} weights; expected "
                             f"{2 * len(branches)} (knn and density for each of {list(branches)})")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise UsageError(f"candidate {name!r} = {w.tolist()}; expected weights of at least "
                             f"0 that do not sum to 0")
        out[name] = w
    return out


def assign_folds(sections: Sequence[int], domains: Sequence[str], folds: int = DEFAULT_FOLDS,
                 seed: int = 0) -> np.ndarray:
    """Fold of each clip: within each section and domain the clips are shuffled (seeded)
    and dealt round-robin, the rarer domain first, so every fold holds about 1/``folds`` of
    each domain and fold 0 holds target clips whenever the section has any. Refuses a
    section too small to keep ``MIN_FIT`` clips to fit on and one held out."""
    if folds < 2:
        raise UsageError(f"folds must be at least 2 (1/folds of the clips is held out), got {folds}")
    sections, domains = np.asarray(sections), np.asarray(domains)
    fold = np.empty(len(sections), dtype=int)
    for s in np.unique(sections):
        n = int((sections == s).sum())
        if n - int(np.ceil(n / folds)) < MIN_FIT:
            need = next(m for m in range(MIN_FIT + 1, 10 * folds) if m - -(-m // folds) >= MIN_FIT)
            raise DataError(f"section {int(s):02d} has {n} training clip(s); the label-free "
                            f"choice holds 1/{folds} of them out and needs at least {MIN_FIT} "
                            f"left to fit on: give at least {need} clips per section")
        offset = 0
        # the rarer domain (target) is dealt first, so even one round holds some of it out
        names, counts = np.unique(domains[sections == s], return_counts=True)
        for j, d in enumerate(names[np.lexsort((names, counts))]):
            where = np.flatnonzero((sections == s) & (domains == d))
            order = np.random.default_rng([seed, int(s), j]).permutation(len(where))
            fold[where[order]] = (np.arange(len(where)) + offset) % folds
            offset += len(where)        # the next domain starts where this one stopped
    return fold


def component_matrix(model: SpectralKnn, vectors: Mapping[str, np.ndarray],
                     sections: Sequence[int]) -> np.ndarray:
    """(n, 2 x branches): each clip's knn and density scores per branch, standardised by
    its section's leave-one-out scale, in the branch order of ``vectors``. A variant's
    score is this matrix times its weights over their sum (the agent rule's fused_score)."""
    sections = np.asarray(sections)
    branches = list(vectors)
    out = np.empty((len(sections), 2 * len(branches)))
    for s in np.unique(sections):
        here = sections == s
        arrays = model.banks[int(s)]
        for i, b in enumerate(branches):
            z = (np.atleast_2d(vectors[b][here]) - arrays[f"{b}_mean"]) / arrays[f"{b}_std"]
            raw = component_scores(z, arrays[f"{b}_bank"], arrays[f"{b}_density"])
            fusion = arrays[f"{b}_fusion"]
            out[here, 2 * i:2 * i + 2] = (raw - fusion[:2]) / fusion[2:]
    return out


@dataclass
class ProxyRow:
    variant: str
    weights: list[float]
    branches: list[str]
    proxy: float                      # official-style hmean over sections
    auc_source: float                 # means over sections
    auc_target: float
    pauc: float
    by_kind: dict[str, float] = field(default_factory=dict)    # AUC per pseudo-fault kind

    def to_dict(self) -> dict:
        """JSON-ready: rounded, NaN (a domain with no held-out clip) as None."""
        def num(v: float) -> float | None:
            return None if np.isnan(v) else round(v, 4)
        return {k: (num(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()
                } | {"by_kind": {k: num(v) for k, v in self.by_kind.items()}}


@dataclass
class ProxyChoice:
    chosen: str
    rows: list[ProxyRow]
    settings: dict

    def row(self, variant: str) -> ProxyRow:
        return next(r for r in self.rows if r.variant == variant)

    def to_dict(self) -> dict:
        """What run.json params can store."""
        return {"chosen": self.chosen, "weights": self.row(self.chosen).weights,
                "settings": self.settings, "variants": [r.to_dict() for r in self.rows]}

    def format_table(self) -> str:
        kinds = sorted({k for r in self.rows for k in r.by_kind})
        head = f"{'variant':<12} {'proxy':>6} {'AUC_s':>6} {'AUC_t':>6} {'pAUC':>6}" + \
            "".join(f" {k[:10]:>10}" for k in kinds) + "  branches"
        lines = [head]
        for r in sorted(self.rows, key=lambda r: -r.proxy):
            mark = " *" if r.variant == self.chosen else ""
            lines.append(f"{r.variant:<12} {r.proxy:6.3f} {r.auc_source:6.3f} {r.auc_target:6.3f} "
                         f"{r.pauc:6.3f}" + "".join(f" {r.by_kind.get(k, np.nan):10.3f}"
                                                    for k in kinds)
                         + f"  {'+'.join(r.branches)}{mark}")
        return "\n".join(lines)


def balance_weights(sections: np.ndarray, domains: np.ndarray, faulty: np.ndarray) -> np.ndarray:
    """Weights that give, in each section, the normals of each domain and the faulty clips
    of each domain equal totals: the DCASE test sets hold as many target clips as source
    clips (and as many anomalies as normals), while training data is mostly source. Without
    this the proxy would judge a variant almost only on source clips and miss what it
    costs or gains across domains (docs/training.md)."""
    w = np.zeros(len(sections))
    for s in np.unique(sections):
        for d in np.unique(domains[sections == s]):
            for f in (False, True):
                group = (sections == s) & (domains == d) & (faulty == f)
                w[group] = 1.0 / max(int(group.sum()), 1)
    return w


def balanced_section_result(machine: str, section: int, scores: np.ndarray, faulty: np.ndarray,
                            domains: np.ndarray, weight: np.ndarray) -> SectionResult:
    """training/metrics.py section_result with clip weights: AUC(source) over source
    normals and all faulty clips, AUC(target) likewise, pAUC (p = 0.1) over all clips."""
    def auc(mask: np.ndarray, max_fpr: float | None = None) -> float:
        if not (mask & ~faulty).any() or not (mask & faulty).any():
            return float("nan")
        return float(roc_auc_score(faulty[mask], scores[mask], max_fpr=max_fpr,
                                   sample_weight=weight[mask]))
    return SectionResult(machine, section, auc((domains == "source") | faulty),
                         auc((domains == "target") | faulty), auc(np.ones_like(faulty), MAX_FPR),
                         int((~faulty & (domains == "source")).sum()),
                         int((~faulty & (domains == "target")).sum()), int(faulty.sum()))


def _mean(values: Sequence[float]) -> float:
    """Mean over the sections that have the value (NaN: a domain without held-out clips)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _pick(rows: Sequence[ProxyRow], tie: float) -> str:
    best = max(r.proxy for r in rows)
    near = [(len(r.branches), i, r.variant) for i, r in enumerate(rows) if r.proxy >= best - tie]
    return min(near)[2]


def proxy_table(vectors: Mapping[str, np.ndarray], sections: Sequence[int],
                domains: Sequence[str], pseudo_vectors: Mapping[str, np.ndarray],
                pseudo_base: Sequence[int], candidates: Mapping[str, Sequence[float]],
                folds: int = DEFAULT_FOLDS, rounds: int = 1, seed: int = 0,
                density_k: int = DEFAULT_K, pseudo_kinds: Sequence[str] | None = None,
                tie: float = DEFAULT_TIE, machine: str = "proxy", balance: bool = True
                ) -> ProxyChoice:
    """Proxy scores of every candidate and the choice, from branch vectors of the normal
    clips and of their faulty copies (``pseudo_base[i]``: the clip copy i was made from).
    ``rounds`` of the ``folds`` are held out in turn (1: one 80/20 split; ``folds``: every
    clip held out once), each against a bank fitted on the other folds. ``balance``: weigh
    the domains equally (``balance_weights``), else every clip counts once."""
    branches = list(vectors)
    if list(pseudo_vectors) != branches:
        raise UsageError(f"pseudo-fault vectors have branches {list(pseudo_vectors)}, the clips "
                         f"{branches}")
    weights = check_candidates(candidates, branches)
    if not 1 <= rounds <= folds:
        raise UsageError(f"rounds must be 1..{folds} (the folds), got {rounds}")
    sections, domains = np.asarray(sections), np.asarray(domains)
    pseudo_base = np.asarray(pseudo_base, dtype=int)
    fold = assign_folds(sections, domains, folds, seed)
    parts, ys, secs, doms, kinds = [], [], [], [], []
    for f in range(rounds):
        held = fold == f
        if not held.any():          # tiny sections: fewer clips than folds
            continue
        # the banks do not depend on the score rule; 'fused' only names the held-out
        # scores fit() returns (the default 'auto' is what this module chooses)
        model = SpectralKnn(SpectralKnnConfig(density_k=density_k, score="fused"))
        model.fit({b: v[~held] for b, v in vectors.items()}, sections[~held])
        copies = held[pseudo_base]
        if not copies.any():
            raise DataError(f"fold {f}: no pseudo-fault copy of a held-out clip to score")
        parts += [component_matrix(model, {b: v[held] for b, v in vectors.items()},
                                   sections[held]),
                  component_matrix(model, {b: v[copies] for b, v in pseudo_vectors.items()},
                                   sections[pseudo_base[copies]])]
        ys += [np.zeros(int(held.sum()), bool), np.ones(int(copies.sum()), bool)]
        secs += [sections[held], sections[pseudo_base[copies]]]
        doms += [domains[held], domains[pseudo_base[copies]]]
        kinds += [np.full(int(held.sum()), ""), np.asarray(
            pseudo_kinds if pseudo_kinds is not None else [""] * len(pseudo_base))[copies]]
    comp, y, sec, dom, kind = (np.concatenate(a) for a in (parts, ys, secs, doms, kinds))
    weight = balance_weights(sec, dom, y) if balance else np.ones(len(y))
    rows = []
    for name, w in weights.items():
        score = comp @ w / w.sum()
        results = [balanced_section_result(machine, int(s), score[sec == s], y[sec == s],
                                           dom[sec == s], weight[sec == s])
                   for s in np.unique(sec)]
        by_kind = {k: float(roc_auc_score(y[(kind == k) | ~y], score[(kind == k) | ~y],
                                          sample_weight=weight[(kind == k) | ~y]))
                   for k in sorted(set(kind[y].tolist()) - {""})}
        rows.append(ProxyRow(name, w.tolist(), list(_used(w, branches)),
                             official_score(results),
                             _mean([r.auc_source for r in results]),
                             _mean([r.auc_target for r in results]),
                             float(np.mean([r.pauc for r in results])), by_kind))
    settings = {"folds": folds, "rounds": rounds, "seed": seed, "density_k": density_k,
                "tie": tie, "balance": balance, "held_out_normals": int((~y).sum()),
                "pseudo_faults": int(y.sum())}
    return ProxyChoice(_pick(rows, tie), rows, settings)


def copies_per_clip(sections: np.ndarray, domains: np.ndarray, per_clip: int,
                    most: int = MAX_COPIES) -> list[int]:
    """How many faulty copies of each held-out clip: ``per_clip``, times how much rarer the
    clip's domain is in its section (at most ``most``), so the rare target domain's faults
    are not judged on a handful of copies (the weights then balance exactly)."""
    out = []
    for s, d in zip(sections, domains):
        here = sections == s
        biggest = max(int((here & (domains == e)).sum()) for e in np.unique(domains[here]))
        out.append(per_clip * min(most, max(1, round(biggest / int((here & (domains == d)).sum())))))
    return out


def statistics_of(audio: Sequence[np.ndarray], spec: FeatureSpec, progress: bool = False,
                  desc: str = "statistics") -> Vectors:
    """spectral-knn's branch vectors of audio clips, through the same front end and
    pooling as training (training/spectral_knn.py clip_statistics)."""
    extract = LogMelExtractor(spec)
    logmels = [extract(x) for x in tqdm(audio, desc=desc, unit="clip", disable=not progress,
                                        leave=False)]
    return clip_statistics(logmels, spec, spec.n_mels)


def choose_variant(clips: Sequence[Clip], candidates: Mapping[str, Sequence[float]] | None = None,
                   spec: FeatureSpec | None = None, seed: int = 0, folds: int = DEFAULT_FOLDS,
                   rounds: int = DEFAULT_FOLDS, per_clip: int = 2,
                   levels: Mapping[str, tuple[float, float]] = ANR_DB,
                   density_k: int = DEFAULT_K, tie: float = DEFAULT_TIE,
                   vectorize: Callable[[Sequence[np.ndarray]], Vectors] | None = None,
                   progress: bool = False, balance: bool = True) -> ProxyChoice:
    """The label-free choice for one machine type's training ``clips`` (see the module
    docstring). ``candidates`` default to ``default_candidates`` of the branches the
    statistics carry; ``vectorize`` maps audio clips to branch vectors (default: the
    spectral-knn front end of ``spec``)."""
    if not clips:
        raise DataError("no training clips to choose a variant on")
    spec = spec or preset("spectral-knn")
    levels = check_levels(levels)
    vectorize = vectorize or (lambda audio: statistics_of(audio, spec, progress))
    audio = [load(c, spec.sample_rate) for c in clips]
    sections = np.asarray([c.section for c in clips])
    domains = np.asarray([c.domain for c in clips])
    fold = assign_folds(sections, domains, folds, seed)
    held = np.flatnonzero(fold < rounds)
    copies = copies_per_clip(sections[held], domains[held], per_clip) if balance else per_clip
    faulty, infos, base = pseudo_faults([audio[i] for i in held], spec.sample_rate, seed,
                                        copies, levels=levels)
    vectors = vectorize(audio)
    pseudo = vectorize(faulty)
    choice = proxy_table(vectors, sections, domains, pseudo, held[base],
                         candidates or default_candidates(list(vectors)), folds, rounds, seed,
                         density_k, [i.kind for i in infos], tie, clips[0].machine, balance)
    choice.settings |= {"per_clip": per_clip, "anr_db": {k: list(v) for k, v in levels.items()}}
    return choice
