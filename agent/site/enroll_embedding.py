"""``harken enroll`` for a general EMBEDDING bundle (the general mobilenetv2-dual model,
docs/general-model.md): every report interval of the machine's normal audio goes through
the same front end, health check and network as ``harken run``; the interval's mean
embedding joins the bank of the ``embedding-density`` rule
(agent/model/rules/embedding_density.py: cosine kNN with local density normalisation).

The bank is fitted here from the site's audio alone: each embedding dimension is
standardised with the intervals' own mean and spread (a dimension that barely varies on
this machine is floored at a tenth of the median spread, as training/classifier.py does,
so rounding noise cannot dominate), the unit-length rows are the bank, and each row's
local density (mean distance to its ``density_k`` nearest other rows) its unit. The
threshold comes from the intervals' leave-one-out scores (each scored against the bank
without itself), gamma-fitted for the tolerated false-alarm rate, as for spectral-knn
(agent/site/enroll.py). ``--append`` keeps the raw embeddings (``raw_embedding``) and
refits everything with the new ones.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from harken.agent.config import Config, ConfigError
from harken.agent.decision import Decision
from harken.agent.decision.thresholds import exceedance, false_alarm_threshold, outliers
from harken.agent.features import windows
from harken.agent.model.bank import (BANK_VERSION, MAX_BANK_INTERVALS, BankManifest,
                                     EnrollSession, bank_digest, read_bank, rule_arrays,
                                     without_copies, write_bank)
from harken.agent.model.bundle import Bundle, BundleError
from harken.agent.model.rules import RuleError, make_rule, unit_embedding
from harken.agent.model.rules.density import local_densities
from harken.agent.model.scorer import model_input, probe
from harken.agent.pipeline import Pipeline
from harken.agent.site.calibrate import score_files, score_source
from harken.common.errors import DataError, UsageError
from harken.common.records import GammaParams

RULE = "embedding-density"
MIN_INTERVALS = 6          # the LDN neighbourhood (4) plus room to hold one out
STD_FLOOR = 0.1            # of the median spread (training/classifier.py ``_fit_bank``)


def fit_embedding_bank(embeddings: np.ndarray, density_k: int
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ``embedding-density`` rule's arrays from (n, e) interval embeddings, and each
    interval's leave-one-out score (against the others; the densities are those of the
    whole bank, one interval's own neighbourhood included)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise DataError(f"an embedding bank needs at least 2 intervals, got {len(emb)}")
    mean, std = emb.mean(axis=0), emb.std(axis=0)
    std = np.maximum(std, max(STD_FLOOR * float(np.median(std)), 1e-9))
    unit = unit_embedding(emb, mean, std)
    density = local_densities(unit, density_k)
    d = (1.0 - unit @ unit.T) / density[None, :]
    np.fill_diagonal(d, np.inf)
    arrays = {"bank": unit, "bank_density": density, "embedding_mean": mean,
              "embedding_std": std}
    return arrays, d.min(axis=1)


def held_out_scores(arrays: dict[str, np.ndarray], embeddings: np.ndarray) -> np.ndarray:
    """Scores of intervals the bank has not seen (their mean embeddings), through the
    device's own rule."""
    rule = make_rule(RULE, arrays)
    return np.array([rule.reduce(np.asarray(e, np.float64)[None]) for e in embeddings])


class IntervalEmbeddings:
    """Stands in for the scorer in the pipeline: runs the bundle's network over each
    report interval's windows and keeps the interval's mean embedding instead of scoring."""

    def __init__(self, bundle: Bundle, artifact: str | None, threads: int) -> None:
        from harken.agent.model.backends import open_backend
        self.bundle = bundle
        self.artifact = bundle.artifact(artifact)
        self.backend = open_backend(self.artifact, threads)
        self.width = probe(self.backend, self.artifact, "embedding")
        self.vectors: list[np.ndarray] = []

    def evidence(self, feature_windows: np.ndarray) -> np.ndarray:
        shape = self.artifact.input_shape
        return np.concatenate([self.backend.run(model_input(w, shape))["embedding"].reshape(1, -1)
                               for w in feature_windows]).astype(np.float64)

    def reduce(self, evidence: np.ndarray) -> float:
        self.vectors.append(evidence.mean(axis=0))
        return 0.0

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def score_frames(self, frames: np.ndarray) -> tuple[float, int]:
        """The pipeline's call (agent/model/scorer.py ``Scorer``): keeps the embedding, scores 0."""
        w = windows(frames, self.bundle.spec)
        return self.reduce(self.evidence(w)), len(w)

    @property
    def count(self) -> int:
        return len(self.vectors)


def enroll_embedding(config: Config, bundle: Bundle, paths: list[Path], seconds: float,
                     minutes: float, append: bool, false_alarms_per_week: float,
                     progress: bool) -> dict:
    """Enroll one machine with an embedding general bundle; ``paths`` are the distinct
    recordings (agent/site/enroll.py has checked them), else ``minutes`` of the configured
    source. Returns what enroll reports (the bank's manifest, its file and size)."""
    if bundle.rule_name != RULE:
        raise BundleError(f"{bundle.root}: rule {bundle.rule_name!r}; an embedding general "
                          f"bundle scores with {RULE!r}")
    interval_s = config.decision.interval_s
    out = config.bank_file
    old: dict[str, np.ndarray] = {}
    old_manifest: BankManifest | None = None
    if append:
        old, old_manifest = read_bank(out, bundle, config.agent.machine)
        if not math.isclose(old_manifest.interval_s, interval_s, rel_tol=1e-6):
            raise ConfigError(f"{out}: enrolled at {old_manifest.interval_s:g}-s intervals, but "
                              f"{config.source_file}: decision.interval_s = {interval_s:g}; "
                              f"embeddings of intervals of two lengths do not mix: enroll "
                              f"again without --append, or set decision.interval_s = "
                              f"{old_manifest.interval_s:g}")
        if "raw_embedding" not in old:
            raise DataError(f"{out}: the bank holds no raw_embedding (not an embedding "
                            f"bank); enroll again without --append")
    planned = (seconds if paths else minutes * 60) / interval_s
    have = len(old.get("raw_embedding", ()))
    if math.isfinite(planned) and planned + have > MAX_BANK_INTERVALS:
        raise UsageError(f"enrollment: {planned:.0f} new interval(s) of {interval_s:g} s and "
                         f"{have} in the bank are more than a bank holds "
                         f"({MAX_BANK_INTERVALS}); enroll less audio. Nothing was written.")
    stats = IntervalEmbeddings(bundle, config.model.artifact, config.model.threads)
    pipeline = Pipeline(stats, Decision(float("inf")), interval_s)
    if paths:
        [(_, skipped)] = score_files([pipeline], config, paths, progress)
        source = f"{len(paths)} file(s)"
    else:
        [(_, skipped)] = score_source([pipeline], config, minutes, progress)
        source = config.audio.describe()
    new = np.stack(stats.vectors) if stats.vectors else np.zeros((0, stats.width))
    kept, duplicates = without_copies({"embedding": new}, old or None)
    new = kept["embedding"]
    if len(new) < (1 if append else MIN_INTERVALS):
        raise DataError(f"enrollment: only {len(new)} usable new interval(s) of "
                        f"{interval_s:g} s ({skipped} silent, dropout, clipped or invalid; "
                        f"{duplicates} exact copies); need at least {MIN_INTERVALS}: record "
                        f"longer or give more files. Nothing was written.")
    vectors = np.concatenate([old["raw_embedding"], new]) if append else new
    e = bundle.manifest.enrollment
    arrays, loo = fit_embedding_bank(vectors, e.density_k)
    threshold, p, fit = false_alarm_threshold(loo, false_alarms_per_week, interval_s)
    exceeded = exceedance(loo, threshold, p, "enrollment")
    exceeded |= outliers(loo, threshold, false_alarms_per_week, interval_s, "enrollment")
    arrays["raw_embedding"] = vectors
    try:                  # checked as 'harken run' will read it, before it is written
        make_rule(bundle.rule_name, rule_arrays(arrays, bundle))
    except RuleError as exc:
        raise DataError(f"enrollment: the bank would not score ({exc}); nothing was "
                        f"written") from None
    session = EnrollSession(source=source, intervals=len(new), created=dt.datetime.now(
        dt.timezone.utc).isoformat(timespec="seconds"))
    prior_s, prior_skipped, prior_sessions = ((
        old_manifest.audio_s, old_manifest.skipped_intervals, old_manifest.sessions)
        if old_manifest is not None else (0.0, 0, []))
    manifest = BankManifest(
        version=BANK_VERSION, model=bundle.model_id, machine=config.agent.machine,
        intervals=int(len(loo)), audio_s=len(new) * interval_s + prior_s,
        skipped_intervals=skipped + prior_skipped, interval_s=interval_s,
        sessions=[*prior_sessions, session], threshold=threshold,
        false_alarms_per_week=false_alarms_per_week,
        threshold_how="gamma fit of the intervals' leave-one-out embedding-density scores",
        gamma=GammaParams(**fit.to_dict()),
        sha256=bank_digest(arrays, BANK_VERSION, bundle.model_id, config.agent.machine))
    write_bank(out, arrays, manifest)          # the old bank stays whole until the rename
    return {**manifest.model_dump(mode="json", exclude={"gamma", "sha256"}),
            "bank": str(out), "bank_bytes": out.stat().st_size, "new_intervals": len(new),
            "duplicate_intervals": duplicates, **exceeded}
