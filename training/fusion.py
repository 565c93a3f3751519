"""fusion: several methods scoring the same clip, each score standardised on its own
held-out normal training clips of the clip's section, then a weighted mean.

Why: the methods catch different faults (docs/results.md, "Which faults each method
catches": the autoencoder hears bearing and gear faults the clip statistics miss, and
the reverse for a sticking valve), and their scores live on unrelated scales (a squared
distance, a Mahalanobis distance, a cosine distance). Standardising each per section on
normal clips the member never trained on puts them in common units, "how unusual for a
normal clip of this section", without any label or anomaly.

Each member trains into its own sub-folder of the fusion run (``<run>/<member>/``) with
its default settings and keeps its held-out normal scores per clip (training/runs.py,
``held_out_scores.csv``); the fused threshold comes from the clips every member held out.
The device computes the same thing (agent/model/fused.py), from one bundle that holds each
member's bundle.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harken.common.errors import DataError, UsageError
from harken.agent.features import FeatureSpec, FeatureSpecError, shared_front_end
from harken.training.config import check_settings, with_overrides
from harken.training.data.corpus import Clip
from harken.training.runs import (RunError, RunInfo, corpus_fingerprint, normal_score_stats,
                                  read_held_out, read_run, write_run)

MIN_PER_SECTION = 5         # held-out clips a member needs per section to standardise on


@dataclass(frozen=True)
class FusionConfig:
    members: str = "spectral-knn,ae-mahalanobis"   # comma-separated methods
    weights: str = ""                              # comma-separated, one per member; "" = equal
    trained: str = ""        # folder of runs already trained (<folder>/<member>/<machine>):
                             # copied into the fusion run instead of training the members

    def __post_init__(self) -> None:
        check_settings(self)
        names = self.member_names
        from harken.training.methods import METHODS
        unknown = [m for m in names if m not in METHODS or m == Fusion.name]
        if unknown:
            raise UsageError(f"members: {unknown[0]!r} is not a method to fuse; choose from "
                             f"{sorted(set(METHODS) - {Fusion.name})}")
        if len(names) < 2 or len(set(names)) != len(names):
            raise UsageError(f"members: give at least two different methods, got {names}")
        w = self.member_weights
        if len(w) != len(names):
            raise UsageError(f"weights: {len(w)} given for {len(names)} members")
        if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise UsageError(f"weights must be non-negative with a positive sum, got {w}")

    @property
    def member_names(self) -> list[str]:
        return [m.strip() for m in self.members.split(",") if m.strip()]

    @property
    def member_weights(self) -> list[float]:
        if not self.weights.strip():
            return [1.0] * len(self.member_names)
        try:
            return [float(x) for x in self.weights.split(",")]
        except ValueError:
            raise UsageError(f"weights: expected numbers separated by commas, got "
                             f"{self.weights!r}") from None


def standardisation(held_out: dict[str, tuple[int, float]], sections: Sequence[int],
                    where: str) -> dict[int, tuple[float, float]]:
    """(mean, std) of a member's held-out normal scores per section."""
    out = {}
    for s in sections:
        v = np.array([score for sec, score in held_out.values() if sec == s])
        if len(v) < MIN_PER_SECTION:
            raise DataError(f"{where}: {len(v)} held-out normal clips of section {s:02d}; "
                            f"fusion needs at least {MIN_PER_SECTION} to standardise on")
        sd = float(v.std())
        if not np.isfinite(sd) or sd <= 0:
            raise DataError(f"{where}: held-out scores of section {s:02d} are all equal; "
                            f"they give no scale to standardise on")
        out[int(s)] = (float(v.mean()), sd)
    return out


def fuse(member_scores: Sequence[np.ndarray], sections: Sequence[int],
         scales: Sequence[dict[int, tuple[float, float]]], weights: Sequence[float]) -> np.ndarray:
    """sum_m w_m (s_m - mean_m[section]) / std_m[section] / sum_m w_m."""
    sections = np.asarray(sections)
    total = np.zeros(len(sections))
    for scores, scale, w in zip(member_scores, scales, weights):
        mean = np.array([scale[int(s)][0] for s in sections])
        std = np.array([scale[int(s)][1] for s in sections])
        total += w * (np.asarray(scores, dtype=np.float64) - mean) / std
    return total / float(sum(weights))


class Fusion:
    name = "fusion"
    summary = ("several methods' scores, each standardised on its held-out normal clips "
               "per section, averaged")
    score_rules = ("fused",)
    config_cls = FusionConfig
    serial_reason = ("trains its members one after another in one process (train a network "
                     "member with --nproc on its own and fuse it with --set trained=RUNS)")

    def __init__(self, config: FusionConfig | None = None,
                 overrides: list[str] | None = None, check_front_end: bool = True) -> None:
        """``overrides``: the fusion's own settings, and ``MEMBER.KEY=VALUE`` for a member's
        (``--set ae.epochs=5``), checked here so a typo fails before any training.
        ``check_front_end=False``: a trained run's members (their runs hold their specs,
        which member settings such as aegan-ad's ``frames`` may have changed)."""
        own = [o for o in overrides or [] if "." not in o.partition("=")[0]]
        self.config = with_overrides(config or FusionConfig(), own)
        self.member_settings: dict[str, list[str]] = {}
        for o in overrides or []:
            key, sep, value = o.partition("=")
            if "." in key:
                member, _, setting = key.partition(".")
                if member not in self.config.member_names:
                    raise UsageError(f"--set {o}: '{member}' is not a member "
                                     f"({self.config.members})")
                self.member_settings.setdefault(member, []).append(f"{setting}{sep}{value}")
        # every member built once with its settings, and their front ends checked to be
        # one, so a typo or an impossible pair fails before any training
        from harken.training.methods import make_method
        self._untrained = [make_method(m, self.member_settings.get(m))
                           for m in self.config.member_names]
        try:
            if check_front_end:
                shared_front_end([m.spec for m in self._untrained])
        except FeatureSpecError as exc:
            raise UsageError(f"members: {exc}") from None
        self.members: list = []
        self.run_dirs: list[Path] = []
        self.scales: list[dict[int, tuple[float, float]]] = []
        self.info: RunInfo | None = None
        self.spec: FeatureSpec | None = None

    @classmethod
    def default_settings(cls) -> dict:
        return asdict(FusionConfig())

    @property
    def default_rule(self) -> str:
        return "fused"

    @property
    def weights(self) -> list[float]:
        return self.config.member_weights

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        run_dir = Path(run_dir)
        infos = []
        for name, member in zip(self.config.member_names, self._untrained):
            if self.config.trained:
                infos.append(self._copy_trained(name, clips, run_dir / name))
            else:
                infos.append(member.train(clips, run_dir / name, progress))
            self.run_dirs.append(run_dir / name)
        specs = [FeatureSpec.from_dict(i.feature_spec, f"{d}/run.json")
                 for i, d in zip(infos, self.run_dirs)]
        self.spec = shared_front_end(specs)
        sections = sorted({c.section for c in clips})
        held = [read_held_out(d) for d in self.run_dirs]
        self.scales = [standardisation(h, sections, str(d)) for h, d in zip(held, self.run_dirs)]
        # the fused threshold: the clips every member held out, fused as the device fuses
        common = sorted(set.intersection(*(set(h) for h in held)))
        if len(common) < MIN_PER_SECTION:
            raise DataError(f"{run_dir}: only {len(common)} training clips were held out by "
                            f"every member; the fused threshold needs at least "
                            f"{MIN_PER_SECTION}")
        by_name = {c.name: c for c in clips}
        fused = fuse([np.array([h[n][1] for n in common]) for h in held],
                     [held[0][n][0] for n in common], self.scales, self.weights)
        self.info = write_run(
            run_dir, method=self.name, machine=clips[0].machine, spec=self.spec,
            params={**asdict(self.config), "score": "fused",
                    "member_settings": self.member_settings},
            train_clips=clips, normal_scores=normal_score_stats(fused),
            held_out=([by_name[n] for n in common], fused),
            extra={"members": [{"method": n, "run": n, "weight": w}
                               for n, w in zip(self.config.member_names, self.weights)],
                   "standardise": {f"{s:02d}": {n: list(scale[s]) for n, scale in
                                                zip(self.config.member_names, self.scales)}
                                   for s in sections},
                   "normal_scores_from": f"{len(common)} training clips every member held out"})
        from harken.training.methods import method_class
        self.members = [method_class(i.method).load(d) for i, d in zip(infos, self.run_dirs)]
        return self.info

    def _copy_trained(self, name: str, clips: Sequence[Clip], into: Path) -> RunInfo:
        """A member's run trained before, checked to be that method on these very clips."""
        source = Path(self.config.trained) / name / clips[0].machine
        info = read_run(source)
        if info.method != name:
            raise RunError(f"{source}: a run of '{info.method}', not of member '{name}'")
        if info.corpus.fingerprint != corpus_fingerprint(clips, info.corpus.fingerprint_kind):
            raise RunError(f"{source}: trained on other clips than these (corpus fingerprint "
                           f"differs); train it again or leave 'trained' empty")
        if self.member_settings.get(name):
            raise UsageError(f"--set {name}.*: member '{name}' is copied from {source}, "
                             f"not trained; its settings are the ones it was trained with")
        if into.exists():
            shutil.rmtree(into)
        shutil.copytree(source, into, ignore=shutil.ignore_patterns("eval*"))
        return info

    @classmethod
    def load(cls, run_dir: Path) -> Fusion:
        from harken.training.methods import method_class
        run_dir = Path(run_dir)
        info = read_run(run_dir)
        params = info.params
        entries, standardise = info.members, info.standardise
        try:
            if entries is None or standardise is None:
                raise KeyError("members" if entries is None else "standardise")
            # the members' settings too (oevae's and aegan-ad's ``frames``, gmgan's ``patch``);
            # their runs fix their front ends, which those settings may have changed
            settings = [f"{m}.{o}" for m, os_ in (params.get("member_settings") or {}).items()
                        for o in os_]
            self = cls(FusionConfig(members=params["members"], weights=params.get("weights", "")),
                       settings, check_front_end=False)
            self.scales = [{int(s): tuple(v[e.method]) for s, v in standardise.items()}
                           for e in entries]
        except KeyError as exc:
            raise RunError(f"{run_dir}/run.json: not a fusion run ({exc} missing)") from None
        self.info = info
        self.spec = FeatureSpec.from_dict(info.feature_spec, f"{run_dir}/run.json")
        self.run_dirs = [run_dir / e.run for e in entries]
        self.members = [method_class(read_run(d).method).load(d) for d in self.run_dirs]
        return self

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        if (rule or "fused") != "fused":
            raise UsageError(f"fusion has the score rule 'fused' (asked for {rule!r}); "
                             f"evaluate a member's own run for its other rules")
        sections = [c.section for c in clips]
        missing = sorted(set(sections) - set(self.scales[0]))
        if missing:
            raise DataError(f"section(s) {missing} were not in the training data "
                            f"(trained sections: {sorted(self.scales[0])})")
        return fuse([m.score(clips, progress) for m in self.members], sections, self.scales,
                    self.weights)
