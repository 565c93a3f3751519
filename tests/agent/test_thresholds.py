"""The gamma threshold fit, against scipy on samples whose distribution is known."""

import dataclasses

import numpy as np
import pytest
import scipy.stats

from harken.common.errors import DataError, UsageError
from harken.agent.decision.thresholds import GammaFit, fit_gamma, gamma_threshold


@pytest.fixture
def known_gamma():
    """20 000 draws of gamma(shape 3, loc 2, scale 0.5): large enough that the fit is tight."""
    return scipy.stats.gamma.rvs(3.0, loc=2.0, scale=0.5, size=20_000,
                                 random_state=np.random.default_rng(7))


def test_fit_recovers_a_known_gamma(known_gamma):
    fit = fit_gamma(known_gamma)
    # location fixed a tenth of a std below the smallest score, as the docstring says
    assert fit.loc == pytest.approx(known_gamma.min() - 0.1 * known_gamma.std(), rel=1e-12)
    assert fit.loc < known_gamma.min()
    # shape and scale: what scipy's own maximum-likelihood fit gives with that location
    shape, _, scale = scipy.stats.gamma.fit(known_gamma, floc=fit.loc)
    assert (fit.shape, fit.scale) == pytest.approx((shape, scale), rel=1e-9)
    # and close to the truth (the fixed location sits near the true one for 20 000 draws)
    assert fit.loc == pytest.approx(2.0, abs=0.05)
    assert fit.shape == pytest.approx(3.0, rel=0.1)
    assert fit.scale == pytest.approx(0.5, rel=0.1)


def test_threshold_is_the_requested_quantile_of_the_fit(known_gamma):
    threshold, fit = gamma_threshold(known_gamma, 0.95)
    assert threshold == pytest.approx(
        scipy.stats.gamma.ppf(0.95, fit.shape, loc=fit.loc, scale=fit.scale), rel=1e-12)
    # and about 5 % of the normal scores lie above it
    assert np.mean(known_gamma > threshold) == pytest.approx(0.05, abs=0.01)
    default, _ = gamma_threshold(known_gamma)
    assert np.mean(known_gamma > default) == pytest.approx(0.10, abs=0.015)
    assert default < threshold


def test_sf_and_ppf_are_inverse_and_to_dict_round_trips(known_gamma):
    fit = fit_gamma(known_gamma)
    for q in (0.5, 0.9, 0.99):
        assert float(fit.sf(fit.ppf(q))) == pytest.approx(1 - q, rel=1e-9)
    assert fit.to_dict() == {"shape": fit.shape, "loc": fit.loc, "scale": fit.scale}
    assert GammaFit(**fit.to_dict()) == fit
    with pytest.raises(dataclasses.FrozenInstanceError):   # a threshold's fit is a record
        fit.shape = 1.0


def test_nonfinite_scores_are_left_out():
    rng = np.random.default_rng(3)
    clean = scipy.stats.gamma.rvs(2.0, loc=1.0, scale=1.0, size=500, random_state=rng)
    dirty = np.concatenate([clean, [np.nan, np.inf, -np.inf]])
    assert fit_gamma(dirty) == fit_gamma(clean)


@pytest.mark.parametrize("scores", [[], [1.0, 2.0], [1.0, np.nan, np.inf, 2.0]])
def test_too_few_finite_scores_is_a_data_error(scores):
    with pytest.raises(DataError, match=r"need at least 3 finite normal scores to fit a gamma, "
                                        rf"got {sum(np.isfinite(scores))}"):
        fit_gamma(np.array(scores, dtype=float))


def test_three_scores_are_enough():
    fit = fit_gamma(np.array([1.0, 2.0, 3.0]))
    assert fit.loc == pytest.approx(1.0 - 0.1 * np.std([1.0, 2.0, 3.0]))
    assert 3.0 < fit.ppf(0.99) < 100


def test_identical_scores_are_a_data_error_not_a_solver_crash():
    with pytest.raises(DataError, match=r"all 10 normal scores are equal \(4\)"):
        fit_gamma(np.full(10, 4.0))


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf"), 1e9, 60480.0])
def test_a_false_alarm_rate_out_of_range_is_refused_naming_the_option(rate):
    """A rate that is no rate (nan, inf, <= 0) or asks for an alarm at every 10-s interval
    (60480 a week) is a user mistake, refused before anything is recorded: a NaN or
    infinite threshold must never reach an override or a bank."""
    from harken.agent.decision.thresholds import false_alarm_threshold
    scores = np.random.default_rng(0).gamma(2.0, 1.0, 300)
    with pytest.raises(UsageError, match="--false-alarms-per-week"):
        false_alarm_threshold(scores, rate, 10.0)


def test_a_very_rare_false_alarm_rate_gives_a_finite_threshold_or_says_why():
    from harken.agent.decision.thresholds import false_alarm_threshold
    scores = np.random.default_rng(0).gamma(2.0, 1.0, 300)
    one, _, _ = false_alarm_threshold(scores, 1.0, 10.0)
    rare, p, _ = false_alarm_threshold(scores, 1e-12, 10.0)
    assert np.isfinite(rare) and rare > one and 0 < p < 1e-15
    with pytest.raises(DataError, match="ask for more false alarms"):
        false_alarm_threshold(scores, 5e-324, 10.0)          # p underflows to 0


def test_a_false_alarm_rate_is_a_probability_per_interval():
    from harken.agent.decision.thresholds import check_false_alarm_rate
    assert check_false_alarm_rate(1.0, 10.0) == pytest.approx(10.0 / (7 * 24 * 3600))
    assert check_false_alarm_rate(7.0, 60.0) == pytest.approx(7 * 60.0 / (7 * 24 * 3600))


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), 0.0, -5.0, 1e9])
def test_minutes_of_audio_that_are_no_duration_are_refused_before_listening(minutes):
    """calibrate and enroll --minutes: refused in one line naming the option before any
    source is opened (nan and inf were a ValueError and an OverflowError)."""
    from harken.agent.site.calibrate import score_source
    with pytest.raises(UsageError, match="--minutes"):
        score_source([], None, minutes, progress=False)


def test_the_exceedance_on_the_fitted_scores_is_reported_and_a_gross_mismatch_warned(caplog):
    """The threshold's own rate on the scores it was fitted on: as asked for on scores the
    gamma describes, warned about when a cluster of loud intervals sits above it (two kinds
    of operation, or loud events in the calibration audio)."""
    from harken.agent.decision.thresholds import exceedance, false_alarm_threshold
    rng = np.random.default_rng(5)
    steady = rng.gamma(4.0, 1.0, size=2000) + 3
    threshold, p, _ = false_alarm_threshold(steady, 1.0, 10.0)
    got = exceedance(steady, threshold, p, "calibration of fan")
    assert got["exceeded_intervals"] <= 1 and "exceedance_warning" not in got
    assert got["expected_exceeded"] == pytest.approx(2000 * p)
    mixed = np.r_[steady, np.full(40, 200.0) + rng.normal(size=40)]
    threshold, p, _ = false_alarm_threshold(mixed, 1.0, 10.0)
    with caplog.at_level("WARNING"):
        got = exceedance(mixed, threshold, p, "calibration of fan")
    assert got["exceeded_intervals"] >= 10
    assert got["exceedance_warning"].startswith(
        f"calibration of fan: {got['exceeded_intervals']} of the 2040 intervals the threshold "
        f"was fitted on exceed it, where about")
    assert "fitted gamma does not describe these scores" in caplog.text
