"""The DCASE 2024 evaluator's metrics.

Per machine type and section: AUC(source) over source normals and all anomalies of the
section, AUC(target) over target normals and all anomalies, and pAUC (p = 0.1,
McClish-standardised, as sklearn's ``roc_auc_score(max_fpr=0.1)``) over every clip of
the section. The official score is the harmonic mean of all these values over all
sections and machine types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

from harken.common.errors import DataError

MAX_FPR = 0.1
HMEAN_FLOOR = 1e-8  # the evaluator floors values so one zero does not zero the mean


@dataclass(frozen=True)
class SectionResult:
    machine: str
    section: int
    auc_source: float
    auc_target: float
    pauc: float
    n_source_normal: int
    n_target_normal: int
    n_anomaly: int

    @property
    def hmean(self) -> float:
        return hmean([self.auc_source, self.auc_target, self.pauc])

    def to_dict(self) -> dict:
        return {**asdict(self), "hmean": self.hmean}


def hmean(values: Sequence[float]) -> float:
    vals = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if vals.size == 0:
        return float("nan")
    return float(scipy.stats.hmean(np.maximum(vals, HMEAN_FLOOR)))


def section_result(machine: str, section: int, scores: Sequence[float],
                   is_anomaly: Sequence[bool], domains: Sequence[str]) -> SectionResult:
    """Metrics of one section; a domain without normals gets NaN for its AUC."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    d = np.asarray(domains)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{machine} section {section:02d}: scores contain NaN or inf")
    if not y.any() or y.all():
        raise DataError(
            f"{machine} section {section:02d}: needs both normal and anomalous test clips "
            f"(has {int((~y).sum())} normal, {int(y.sum())} anomalous)")

    def auc(mask: np.ndarray, max_fpr: float | None = None) -> float:
        if not (mask & ~y).any():
            return float("nan")
        return float(roc_auc_score(y[mask], s[mask], max_fpr=max_fpr))

    src = (d == "source") | y
    tgt = (d == "target") | y
    return SectionResult(machine, int(section), auc(src), auc(tgt),
                         auc(np.ones_like(y), MAX_FPR),
                         int((~y & (d == "source")).sum()), int((~y & (d == "target")).sum()),
                         int(y.sum()))


def section_values(results: Sequence[SectionResult]) -> list[float]:
    return [v for r in results for v in (r.auc_source, r.auc_target, r.pauc)]


def machine_hmean(results: Sequence[SectionResult], machine: str) -> float:
    return hmean(section_values([r for r in results if r.machine == machine]))


def official_score(results: Sequence[SectionResult]) -> float:
    """Harmonic mean of AUC_s, AUC_t and pAUC over all sections and machine types."""
    return hmean(section_values(results))
