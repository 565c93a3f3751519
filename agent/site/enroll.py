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
from pathlib import Path

import numpy as np

from harken.agent.model.bank import (BANK_VERSION, BankManifest, EnrollSession, bank_digest,
                                     read_bank, write_bank)
from harken.agent.model.bundle import Bundle, BundleError, open_bundle
from harken.agent.site.calibrate import score_files, score_source
from harken.agent.config import Config, ConfigError
from harken.agent.decision import Decision
from harken.common.errors import DataError
from harken.agent.features import windows
from harken.agent.pipeline import Pipeline
from harken.agent.model.rules.spectral_knn import (BRANCHES, branch_statistics, branch_vectors,
                                             fit_bank, pooled_moments)
from harken.agent.model.scorer import model_input, probe
from harken.agent.decision.thresholds import check_false_alarm_rate, false_alarm_threshold
from harken.common.records import GammaParams

MIN_INTERVALS = 6          # the LDN neighbourhood (4) plus room to hold one out


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
        self.vectors: dict[str, list[np.ndarray]] = {b: [] for b in BRANCHES}

    def evidence(self, feature_windows: np.ndarray) -> np.ndarray:
        shape = self.artifact.input_shape
        return np.concatenate([self.backend.run(model_input(w, shape))["moments"].reshape(1, -1)
                               for w in feature_windows]).astype(np.float64)

    def reduce(self, evidence: np.ndarray) -> float:
        for b, v in branch_vectors(*pooled_moments(evidence), self.bundle.spec.n_mels).items():
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
        return len(self.vectors[BRANCHES[0]])


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
        raise ConfigError(f"{bundle.root}: bundle {bundle.model_id} carries its own reference "
                          f"bank; 'harken enroll' needs a general bundle "
                          f"('harken-export general')")
    paths = [Path(f).expanduser() for f in files or []]       # relative to the current folder
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"--files: no such file: {', '.join(missing)}")
    out = config.bank_file
    old: dict[str, np.ndarray] = {}
    old_manifest: BankManifest | None = None
    if append:
        old, old_manifest = read_bank(out, bundle)
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
                        f"{pipeline.interval_s:g} s ({skipped} silent, clipped or invalid); "
                        f"need at least {MIN_INTERVALS}: record longer or give more files. "
                        f"Nothing was written.")
    new = {b: np.stack(v) for b, v in stats.vectors.items()}
    vectors = {b: np.concatenate([old[f"raw_{b}"], new[b]]) if append else new[b]
               for b in BRANCHES}
    e = bundle.manifest.enrollment
    arrays, loo = fit_bank(vectors, branch_statistics(vectors), e.density_k, e.weights)
    threshold, _, fit = false_alarm_threshold(loo, false_alarms_per_week, pipeline.interval_s)
    arrays |= {f"raw_{b}": v for b, v in vectors.items()}
    session = EnrollSession(source=source, intervals=stats.count, created=dt.datetime.now(
        dt.timezone.utc).isoformat(timespec="seconds"))
    prior_s, prior_skipped, prior_sessions = ((
        old_manifest.audio_s, old_manifest.skipped_intervals, old_manifest.sessions)
        if old_manifest is not None else (0.0, 0, []))
    manifest = BankManifest(
        version=BANK_VERSION, model=bundle.model_id, machine=config.agent.machine,
        intervals=int(len(loo)), audio_s=stats.count * pipeline.interval_s + prior_s,
        skipped_intervals=skipped + prior_skipped, interval_s=pipeline.interval_s,
        sessions=[*prior_sessions, session], threshold=threshold,
        false_alarms_per_week=false_alarms_per_week,
        threshold_how="gamma fit of the intervals' leave-one-out scores",
        gamma=GammaParams(**fit.to_dict()), sha256=bank_digest(arrays))
    write_bank(out, arrays, manifest)          # the old bank stays whole until the rename
    return {**manifest.model_dump(mode="json", exclude={"gamma", "sha256"}),
            "bank": str(out), "bank_bytes": out.stat().st_size, "new_intervals": stats.count}
