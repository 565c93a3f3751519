"""``harken enroll``: learn a machine's reference bank on site, with a general bundle.

A technician records the machine's normal sound for a few minutes (or gives recordings);
every report interval goes through the same front end, health check and model as
``harken run``, and its statistics (agent/model/rules/spectral_knn.py) join the bank. The bank is
what training would build from the same audio (``fit_bank``): standardisation, local
densities, fusion scales. No torch, no GPU, no workstation.

The threshold comes from the enrollment audio itself: each interval is scored against the
bank of all the others (leave-one-out: held-out normal scores, no audio is set aside), a
gamma distribution is fitted to those scores and the threshold set for the tolerated
false-alarm rate, as ``harken calibrate`` does; calibrate can re-set it later from fresh
audio. ``--append`` adds audio of a new operating condition (a new target domain) to the
bank without forgetting the old: the raw statistics are kept, and everything is refitted.

The bank is one ``.npz`` file in the state folder (plain arrays, no pickle) holding its own
manifest (model id, audio seconds, time, a SHA-256 of the arrays), written to a temporary
file and renamed over the old one: a failed or refused enrollment never touches the bank
that was there.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np

from harken.agent.model.bank import (BANK_VERSION, MAX_BANK_INTERVALS, BankManifest,
                                     EnrollSession, bank_digest, read_bank, rule_arrays,
                                     without_copies, write_bank)
from harken.agent.model.rules import RuleError, make_rule
from harken.agent.model.rules.base import REGISTRY, BankRule
from harken.agent.model.bundle import Bundle, BundleError, open_bundle, sha256_file
from harken.agent.site.calibrate import score_files, score_source
from harken.agent.site.enroll_embedding import RULE as EMBEDDING_RULE
from harken.agent.site.enroll_embedding import enroll_embedding
from harken.agent.config import Config, ConfigError
from harken.agent.decision import Decision
from harken.common.errors import DataError, UsageError
from harken.common.atomic import set_aside
from harken.agent.sources.wavio import read_pcm
from harken.agent.features import windows
from harken.agent.pipeline import Pipeline
from harken.agent.model.rules.spectral_knn import (branch_statistics, fit_bank,
                                                   interval_vectors, window_evidence)
from harken.agent.model.scorer import model_input, probe
from harken.agent.decision.thresholds import (check_false_alarm_rate, exceedance,
                                              false_alarm_threshold, outliers)
from harken.common.records import GammaParams

MIN_INTERVALS = 6          # the LDN neighbourhood (4) plus room to hold one out
log = logging.getLogger(__name__)


class IntervalStatistics:
    """Stands in for the scorer in the pipeline: runs the bundle's model over each report
    interval's windows and keeps the interval's pooled statistics instead of scoring."""

    def __init__(self, bundle: Bundle, artifact: str | None, threads: int) -> None:
        from harken.agent.model.backends import open_backend
        self.bundle = bundle
        self.artifact = bundle.artifact(artifact)
        self.backend = open_backend(self.artifact, threads)
        width, wanted = probe(self.backend, self.artifact, "moments"), 2 * bundle.spec.n_features
        if width != wanted:
            raise BundleError(f"{self.artifact.path}: output 'moments' has {width} values per "
                              f"window; the feature spec's {bundle.spec.n_features} values per "
                              f"frame need {wanted} (mean and std of each)")
        # the branches the general bundle's enrollment names (mel and spectrum before the
        # others existed); each interval's vectors by the functions training pools with
        self.branches = tuple(bundle.manifest.enrollment.branches)
        self.vectors: dict[str, list[np.ndarray]] = {b: [] for b in self.branches}

    def evidence(self, feature_windows: np.ndarray) -> np.ndarray:
        shape = self.artifact.input_shape
        moments = np.concatenate([self.backend.run(model_input(w, shape))["moments"].reshape(
            1, -1) for w in feature_windows]).astype(np.float64)
        return window_evidence(moments, feature_windows, self.bundle.spec.n_mels, self.branches)

    def reduce(self, evidence: np.ndarray) -> float:
        spec = self.bundle.spec
        for b, v in interval_vectors(evidence, spec.n_mels, spec.n_features,
                                     self.branches).items():
            self.vectors[b].append(v)
        return 0.0

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def score_frames(self, frames: np.ndarray) -> tuple[float, int]:
        """The pipeline's call (agent/model/scorer.py ``Scorer``): keeps the statistics, scores 0."""
        w = windows(frames, self.bundle.spec)
        return self.reduce(self.evidence(w)), len(w)

    @property
    def count(self) -> int:
        return len(self.vectors[self.branches[0]])


def _trained_on(bundle: Bundle) -> str:
    """What a bundle that needs no enrollment brings instead: a reference bank (a bank
    rule, which feedback grows), or a trained score rule (the AE's reconstruction error,
    GMGAN's re-encoding error: no bank at all), so the refusal never promises a bank the
    bundle does not hold (docs/agent.md "Enrolling a machine on site")."""
    cls = REGISTRY.get(bundle.rule_name)
    if cls is not None and issubclass(cls, BankRule):
        return f"carries its own reference bank (score rule {bundle.rule_name!r})"
    return f"is trained with its own score rule {bundle.rule_name!r} and needs no enrollment"


def enroll(config: Config, files: list[str] | None = None, minutes: float = 10.0,
           append: bool = False, false_alarms_per_week: float = 1.0,
           progress: bool = True, machine: str | None = None) -> dict:
    """Learn one machine's bank: the config's machine, or of a config watching several,
    the one ``machine`` names (a technician enrolls one machine at a time)."""
    check_false_alarm_rate(false_alarms_per_week, config.decision.interval_s)
    views = config.select(machine)
    if len(views) > 1:
        raise ConfigError(f"{config.source_file} watches {len(views)} machines "
                          f"({', '.join(v.agent.machine for v in views)}); enroll one at a "
                          f"time: --machine NAME")
    config = views[0]
    bundle = open_bundle(config.path(config.model.bundle))
    if not bundle.needs_enrollment:
        raise ConfigError(f"{bundle.root}: bundle {bundle.model_id} {_trained_on(bundle)}; "
                          f"'harken enroll' needs a general bundle ('harken-export general')")
    paths = [Path(f).expanduser() for f in files or []]       # relative to the current folder
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"--files: no such file: {', '.join(missing)}")
    interval_s = config.decision.interval_s
    paths, duplicate_files, seconds = _distinct_files(paths, bundle.spec.sample_rate)
    if bundle.rule_name == EMBEDDING_RULE:     # a general embedding bundle (docs/general-model.md)
        result = enroll_embedding(config, bundle, paths, seconds, minutes, append,
                                  false_alarms_per_week, progress)
        set_aside = set_override_aside(config)
        return {**result, "duplicate_files": duplicate_files,
                **({"override_set_aside": str(set_aside)} if set_aside else {})}
    out = config.bank_file
    old: dict[str, np.ndarray] = {}
    old_manifest: BankManifest | None = None
    if append:
        old, old_manifest = read_bank(out, bundle, config.agent.machine)
        if not math.isclose(old_manifest.interval_s, interval_s, rel_tol=1e-6):
            raise ConfigError(f"{out}: enrolled at {old_manifest.interval_s:g}-s intervals, but "
                              f"{config.source_file}: decision.interval_s = {interval_s:g}; "
                              f"statistics of intervals of two lengths do not mix: enroll "
                              f"again without --append, or set decision.interval_s = "
                              f"{old_manifest.interval_s:g}")
    planned = (seconds if paths else minutes * 60) / interval_s
    branches = tuple(bundle.manifest.enrollment.branches)
    have = len(old.get(f"raw_{branches[0]}", ()))
    if math.isfinite(planned) and planned + have > MAX_BANK_INTERVALS:
        raise UsageError(f"enrollment: {planned:.0f} new interval(s) of {interval_s:g} s and "
                         f"{have} in the bank are more than a bank holds "
                         f"({MAX_BANK_INTERVALS}: its distance matrices grow as the square); "
                         f"enroll less audio. Nothing was written.")
    stats = IntervalStatistics(bundle, config.model.artifact, config.model.threads)
    pipeline = Pipeline(stats, Decision(float("inf")), config.decision.interval_s)
    # the intervals go through calibration's loops; their statistics land in ``stats``
    if paths:
        [(_, skipped)] = score_files([pipeline], config, paths, progress)
        source = f"{len(paths)} file(s)"
    else:                                 # the configured source, as 'harken run' reads it
        [(_, skipped)] = score_source([pipeline], config, minutes, progress)
        source = config.audio.describe()
    if stats.count < (1 if append else MIN_INTERVALS):
        raise DataError(f"enrollment: only {stats.count} usable interval(s) of "
                        f"{pipeline.interval_s:g} s ({skipped} silent, dropout, clipped or "
                        f"invalid); "
                        f"need at least {MIN_INTERVALS}: record longer or give more files. "
                        f"Nothing was written.")
    new = {b: np.stack(v) for b, v in stats.vectors.items()}
    new, duplicate_intervals = _without_copies(new, old if append else None)
    new_count = len(new[branches[0]])
    if new_count < (1 if append else MIN_INTERVALS):
        raise DataError(f"enrollment: only {new_count} interval(s) of {pipeline.interval_s:g} s "
                        f"are new ({duplicate_intervals} are exact copies of others: the same "
                        f"audio given twice); give other recordings. Nothing was written.")
    vectors = {b: np.concatenate([old[f"raw_{b}"], new[b]]) if append else new[b]
               for b in branches}
    e = bundle.manifest.enrollment
    arrays, loo = fit_bank(vectors, branch_statistics(vectors), e.density_k, e.weights)
    threshold, p, fit = false_alarm_threshold(loo, false_alarms_per_week, pipeline.interval_s)
    exceeded = exceedance(loo, threshold, p, "enrollment")
    exceeded |= outliers(loo, threshold, false_alarms_per_week, pipeline.interval_s, "enrollment")
    arrays |= {f"raw_{b}": v for b, v in vectors.items()}
    try:                  # checked as 'harken run' will read it, before it is written
        make_rule(bundle.rule_name, rule_arrays(arrays, bundle))
    except RuleError as exc:
        raise DataError(f"enrollment: the bank would not score ({exc}); nothing was "
                        f"written") from None
    session = EnrollSession(source=source, intervals=new_count, created=dt.datetime.now(
        dt.timezone.utc).isoformat(timespec="seconds"))
    prior_s, prior_skipped, prior_sessions = ((
        old_manifest.audio_s, old_manifest.skipped_intervals, old_manifest.sessions)
        if old_manifest is not None else (0.0, 0, []))
    manifest = BankManifest(
        version=BANK_VERSION, model=bundle.model_id, machine=config.agent.machine,
        intervals=int(len(loo)), audio_s=new_count * pipeline.interval_s + prior_s,
        skipped_intervals=skipped + prior_skipped, interval_s=pipeline.interval_s,
        sessions=[*prior_sessions, session], threshold=threshold,
        false_alarms_per_week=false_alarms_per_week,
        threshold_how="gamma fit of the intervals' leave-one-out scores",
        gamma=GammaParams(**fit.to_dict()),
        sha256=bank_digest(arrays, BANK_VERSION, bundle.model_id, config.agent.machine))
    write_bank(out, arrays, manifest)          # the old bank stays whole until the rename
    set_aside = set_override_aside(config)
    return {**manifest.model_dump(mode="json", exclude={"gamma", "sha256"}),
            "bank": str(out), "bank_bytes": out.stat().st_size, "new_intervals": new_count,
            "duplicate_files": duplicate_files, "duplicate_intervals": duplicate_intervals,
            **exceeded, **({"override_set_aside": str(set_aside)} if set_aside else {})}


def set_override_aside(config: Config) -> Path | None:
    """A calibration override was fitted on scores against the bank just replaced: a new
    bank scores on another scale (a stale override of -38.6 stayed in force over the new
    bank's 7.97 and every interval alarmed; docs/reliability.md). It is renamed
    ``threshold-<machine>.json.before-enroll-<UTC time>`` (kept, not deleted: it says what
    was calibrated) and said in one line, so ``harken run`` uses the new bank's threshold
    until ``harken calibrate`` is run again (docs/agent.md "Calibration")."""
    path = config.override_file
    if not path.exists() and not path.is_symlink():
        return None
    try:
        aside = set_aside(path, "before-enroll")
    except OSError as exc:
        raise ConfigError(f"{path}: the bank was enrolled, but this calibration override of "
                          f"the old bank could not be moved aside ({exc.strerror or exc}); "
                          f"delete it, or 'harken run' would use its stale threshold") from None
    log.warning(f"WARNING: {path}: the calibration of the old bank set aside as {aside.name}: "
                f"'harken run' uses the new bank's threshold; calibrate again to replace it")
    return aside


def _distinct_files(paths: list[Path], rate: int) -> tuple[list[Path], int, float]:
    """(the files, each once, in order; how many were left out as copies of one before it,
    by content; their seconds of audio). A file given twice would put every one of its
    intervals in the bank twice, and an interval with an exact copy scores 0 held out: the
    fused scale collapses and normal audio then scores 1e8 (docs/reliability.md). A file
    recorded below the model's rate is refused, each named: it lacks the upper band the
    model reads, so the bank would be of other sound than the machine's."""
    seen: set[str] = set()
    distinct, low, seconds = [], [], 0.0
    for path in paths:
        digest = sha256_file(path)
        if digest in seen:
            log.warning(f"{path}: the same audio as a file given before it; left out")
            continue
        seen.add(digest)
        data, file_rate = read_pcm(path, mmap=True)       # the header only: one line if bad
        if file_rate < rate:
            low.append(f"{path} ({file_rate} Hz)")
        seconds += len(data) / max(file_rate, 1)
        distinct.append(path)
    if low:
        raise DataError(f"--files: recorded below the model's {rate} Hz, so without the upper "
                        f"band it reads: {', '.join(low)}; record at {rate} Hz or more. "
                        f"Nothing was written.")
    return distinct, len(paths) - len(distinct), seconds


def _without_copies(new: dict[str, np.ndarray], old: dict[str, np.ndarray] | None
                    ) -> tuple[dict[str, np.ndarray], int]:
    """agent/model/bank.py ``without_copies``, and a warning when it left some out."""
    kept, dropped = without_copies(new, old)
    if dropped:
        log.warning(f"enrollment: {dropped} interval(s) left out, exact copies of others "
                    f"(the same audio given twice)")
    return kept, dropped
