"""Decision thresholds from normal scores: a gamma fit, as the DCASE baselines do.

Lives in agent/ because on-site calibration uses it too; training imports it from here.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats

from harken.common.errors import DataError, UsageError


@dataclass(frozen=True)
class GammaFit:
    shape: float
    loc: float
    scale: float

    def ppf(self, q: float) -> float:
        return float(scipy.stats.gamma.ppf(q, self.shape, loc=self.loc, scale=self.scale))

    def isf(self, p: float) -> float:
        """The score exceeded with probability ``p`` (precise for tiny ``p``, where
        ``ppf(1 - p)`` would round to the distribution's end)."""
        return float(scipy.stats.gamma.isf(p, self.shape, loc=self.loc, scale=self.scale))

    def sf(self, x: float | np.ndarray) -> np.ndarray:
        return scipy.stats.gamma.sf(x, self.shape, loc=self.loc, scale=self.scale)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_gamma(scores: np.ndarray) -> GammaFit:
    """Maximum-likelihood gamma fit of normal scores (scipy.stats.gamma.fit).

    The location is fixed just below the smallest score: a free location makes the fit
    unstable on the few hundred scores a calibration has.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 3:
        raise DataError(f"need at least 3 finite normal scores to fit a gamma, got {s.size}")
    spread = float(np.std(s))
    if spread == 0.0:
        raise DataError(f"all {s.size} normal scores are equal ({s[0]:.6g}): a threshold needs "
                        "scores that vary; record normal operation with the machine running")
    loc = float(np.min(s)) - 0.1 * spread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            shape, loc, scale = scipy.stats.gamma.fit(s, floc=loc)
        except (ValueError, FloatingPointError) as exc:   # scipy's FitDataError is one
            raise DataError(f"a gamma does not fit these {s.size} normal scores ({exc}); "
                            f"record more, and more varied, normal audio") from None
    if not all(math.isfinite(v) for v in (shape, loc, scale)) or shape <= 0 or scale <= 0:
        raise DataError(f"a gamma does not fit these {s.size} normal scores (shape {shape:.3g}, "
                        f"scale {scale:.3g}); record more, and more varied, normal audio")
    return GammaFit(float(shape), float(loc), float(scale))


def gamma_threshold(scores: np.ndarray, quantile: float = 0.9) -> tuple[float, GammaFit]:
    """Threshold at ``quantile`` of the gamma fitted to normal scores (DCASE: 0.9)."""
    fit = fit_gamma(scores)
    return fit.ppf(quantile), fit


SECONDS_PER_WEEK = 7 * 24 * 3600


def check_false_alarm_rate(false_alarms_per_week: float, interval_s: float) -> float:
    """The exceedance probability per interval that ``false_alarms_per_week`` means at one
    score every ``interval_s``; a UsageError naming the option when the rate is not a
    finite positive number or asks for an alarm at (nearly) every interval."""
    most = SECONDS_PER_WEEK / interval_s
    if not (math.isfinite(false_alarms_per_week) and 0 < false_alarms_per_week < most):
        raise UsageError(f"--false-alarms-per-week = {false_alarms_per_week:g}: expected a "
                         f"number above 0 and below {most:g} (one alarm every "
                         f"{interval_s:g}-s interval)")
    return false_alarms_per_week * interval_s / SECONDS_PER_WEEK


# scores whose spread is below this fraction of their median (or of 1) do not vary: a gamma
# fitted to them sits on that one value (the spectral-knn rule refuses such a bank alike)
MIN_RELATIVE_SPREAD = 1e-6


def false_alarm_threshold(scores: np.ndarray, false_alarms_per_week: float,
                          interval_s: float, what: str = "calibration",
                          why_equal: str = "") -> tuple[float, float, GammaFit]:
    """(threshold, exceedance per interval, fit): the score that normal operation, as the
    gamma fitted to ``scores`` describes it, exceeds ``false_alarms_per_week`` times a week
    when one score is made every ``interval_s``. The one place calibrate and enroll turn a
    false-alarm rate into a threshold. A degenerate fit is refused (a DataError naming
    ``what``, with ``why_equal`` as the likely cause of scores that do not vary): scores
    that are all (nearly) equal, or a threshold that is not above their median. Calibrating
    on the recordings a bank was enrolled from gave every interval the same score, -38.58,
    and a threshold of -38.58 that all other normal audio exceeded (docs/reliability.md)."""
    p = check_false_alarm_rate(false_alarms_per_week, interval_s)
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size >= 3:
        median, spread = float(np.median(s)), float(np.std(s))
        if not spread > MIN_RELATIVE_SPREAD * max(1.0, abs(median)):
            raise DataError(f"{what}: the {s.size} scores do not vary (all {median:.6g}, "
                            f"spread {spread:.3g}): a threshold fitted on them would sit on "
                            f"that one value; "
                            f"{why_equal or 'record normal operation with the machine running'}"
                            f". Nothing was written.")
    fit = fit_gamma(s)
    threshold = fit.isf(p)
    if not math.isfinite(threshold):
        raise DataError(f"--false-alarms-per-week = {false_alarms_per_week:g}: so rare a "
                        f"false alarm puts the threshold beyond any score the fitted normal "
                        f"scores allow ({threshold}); ask for more false alarms per week")
    median = float(np.median(s))
    if not threshold > median:
        raise DataError(f"{what}: the fitted threshold {threshold:.6g} is not above the median "
                        f"of the {s.size} scores it was fitted on ({median:.6g}): normal "
                        f"operation would alarm at most intervals; "
                        f"{why_equal or 'record more, and steadier, normal audio'}. "
                        f"Nothing was written.")
    return threshold, p, fit


# a score this many robust spreads (1.4826 MAD) above the median of the scores is an outlier
OUTLIER_SPREADS = 10.0


def outliers(scores: np.ndarray, threshold: float, false_alarms_per_week: float,
             interval_s: float, what: str) -> dict:
    """Scores far above the others' robust spread (median and MAD, which one loud interval
    does not move): a dropout, a knock or a voice in the normal audio. The gamma is fitted
    with them, and one such interval moved a calibrated threshold from 18.7 to 15 228 where
    no anomaly reaches it (docs/reliability.md). Returned for the command's summary, and
    warned about, with the threshold the scores without them would give; empty when none."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    median = float(np.median(s))
    spread = 1.4826 * float(np.median(np.abs(s - median)))
    if not spread > 0:
        return {}
    far = s > median + OUTLIER_SPREADS * spread
    if not far.any():
        return {}
    result = {"outlier_intervals": int(far.sum())}
    without = ""
    try:
        rest, _, _ = false_alarm_threshold(s[~far], false_alarms_per_week, interval_s, what)
        result["threshold_without_outliers"] = rest
        without = f"; without them it would be {rest:.4g}"
    except DataError:
        pass
    result["outlier_warning"] = (
        f"{what}: {int(far.sum())} of the {s.size} intervals score far above the others "
        f"(highest {float(s[far].max()):.4g}; the others' median {median:.4g}, robust spread "
        f"{spread:.3g}): a dropout, a knock or a voice in the normal audio? The threshold "
        f"{threshold:.4g} was fitted with them{without}; listen to that audio and calibrate "
        f"without it")
    logging.getLogger(__name__).warning("WARNING: " + result["outlier_warning"])
    return result


# below this chance of so many exceedances, the fit does not describe the scores
MISMATCH_P = 1e-3


def exceedance(scores: np.ndarray, threshold: float, p: float, what: str) -> dict:
    """How often the scores a threshold was fitted on exceed it, against the rate it was
    set for (``p`` per interval): a gamma that does not describe the scores (two kinds of
    operation, a few loud intervals) puts the threshold where normal operation crosses it
    far more often than asked. Returned for the command's summary; a gross mismatch (fewer
    than 1 in 1000 such samples would exceed it that often) is also warned about."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    k, n = int((s > threshold).sum()), int(s.size)
    result = {"exceeded_intervals": k, "expected_exceeded": n * p}
    if k and scipy.stats.binom.sf(k - 1, n, p) < MISMATCH_P:
        result["exceedance_warning"] = (
            f"{what}: {k} of the {n} intervals the threshold was fitted on exceed it, "
            f"where about {n * p:.2g} would at the rate asked for: the fitted gamma does not "
            f"describe these scores (mixed operating conditions, or loud events in the audio?); "
            f"expect more false alarms than asked for, or record steadier normal audio")
        logging.getLogger(__name__).warning("WARNING: " + result["exceedance_warning"])
    return result
