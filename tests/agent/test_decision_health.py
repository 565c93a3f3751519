"""The anomaly decision (k-of-n hysteresis, events) and the audio health check."""

import warnings

import numpy as np
import pytest

from harken.agent.decision import Decision, DecisionConfig
from harken.agent.decision.health import check_audio


def run(scores, threshold=1.0, **kw):
    d = Decision(threshold, DecisionConfig(**kw))
    events = []
    for i, s in enumerate(scores):
        e = d.update(s, float(i))
        if e:
            events.append((e.type, e.ts, e.peak_score, e.duration_s))
    return events, d


def test_one_noisy_interval_does_not_raise_the_state():
    events, d = run([0, 2, 0, 0, 2, 0, 0], k_on=2, n=3)
    assert events == [] and not d.anomaly


def test_k_of_n_starts_and_n_off_in_a_row_ends_with_peak_and_duration():
    scores = [0, 2, 0, 3, 5, 0, 4, 0, 0, 0, 0]
    events, d = run(scores, k_on=2, n=3, n_off=3)
    # start at i=3 (2 of [2, 0, 3]); 0 at i=5 then 4 resets the run; 3 below in a row: i=9
    assert events == [("start", 3.0, 3.0, 0.0), ("end", 9.0, 5.0, 6.0)]
    assert not d.anomaly


def test_unscoreable_intervals_neither_raise_nor_clear():
    events, d = run([2, 2, None, None, None, None], k_on=2, n=3, n_off=2)
    assert [e[0] for e in events] == ["start"] and d.anomaly


def test_decision_config_is_checked():
    with pytest.raises(ValueError, match="k_on must be between 1 and n=3"):
        DecisionConfig(k_on=4, n=3)


def test_health_names_silent_clipped_and_invalid_audio():
    rng = np.random.default_rng(0)
    normal = (0.05 * rng.standard_normal(16000)).astype(np.float32)
    assert check_audio(normal).status == "ok"
    assert check_audio(np.zeros(16000, np.float32)).status == "silent"
    assert check_audio(np.clip(normal * 100, -1, 1)).status == "clipped"
    bad = normal.copy()
    bad[5] = np.nan
    assert check_audio(bad).status == "invalid"
    assert check_audio(np.zeros(0, np.float32)).status == "invalid"


def test_an_interval_where_the_microphone_dies_early_is_silent():
    rng = np.random.default_rng(1)
    x = np.zeros(160000, np.float32)
    x[:3000] = 0.1 * rng.standard_normal(3000)       # 0.2 s of sound, then nothing
    assert check_audio(x).status == "silent"


def test_a_score_at_the_threshold_is_not_above_it():
    events, d = run([1.0, 1.0, 1.0], threshold=1.0, k_on=1, n=1)
    assert events == [] and not d.anomaly
    events, _ = run([1.0 + 1e-12], threshold=1.0, k_on=1, n=1)
    assert [e[0] for e in events] == ["start"]


def test_k_on_equal_to_n_needs_every_interval_above():
    events, _ = run([2, 2, 0, 2, 2], k_on=3, n=3)
    assert events == []
    events, _ = run([2, 2, 2], k_on=3, n=3)
    assert events == [("start", 2.0, 2.0, 0.0)]


def test_k_on_one_starts_on_the_first_interval_above_and_n_off_one_ends_on_the_first_below():
    events, d = run([0, 3, 0], k_on=1, n=1, n_off=1)
    assert events == [("start", 1.0, 3.0, 0.0), ("end", 2.0, 3.0, 1.0)]
    assert not d.anomaly


def test_defaults_are_the_documented_two_of_three_and_three_below():
    from harken.agent.config import DecisionSection
    assert (DecisionConfig().k_on, DecisionConfig().n, DecisionConfig().n_off) == (2, 3, 3)
    section = DecisionSection()
    assert (section.k_on, section.n, section.n_off) == (2, 3, 3)
    assert not Decision(1.0).anomaly


@pytest.mark.parametrize("kw", [dict(k_on=1, n=1), dict(k_on=3, n=3), dict(n_off=1)])
def test_decision_config_boundaries_are_allowed(kw):
    DecisionConfig(**kw)


@pytest.mark.parametrize("kw, message", [
    (dict(k_on=0, n=3), "k_on must be between 1 and n=3, got 0"),
    (dict(k_on=4, n=3), "k_on must be between 1 and n=3, got 4"),
    (dict(n_off=0), "n_off must be at least 1, got 0"),
])
def test_decision_config_out_of_range_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        DecisionConfig(**kw)


def test_records_are_immutable_and_events_round_for_the_wire():
    import dataclasses
    from harken.agent.decision import Event
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecisionConfig().k_on = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        check_audio(np.ones(10) * 0.1).status = "ok"
    e = Event("end", 1.23456, 0.123456789, 2.00449)
    assert e.to_dict() == {"type": "end", "ts": 1.235, "peak_score": 0.123457,
                           "duration_s": 2.004}
    with pytest.raises(TypeError):          # a decision always starts OFF
        Decision(1.0, anomaly=True)


def _level(dbfs, n=16000):
    """A sine whose RMS is ``dbfs`` (float64, so levels are exact)."""
    t = np.arange(n)
    return np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 1000 * t / 16000)


def test_level_is_reported_in_dbfs_and_silence_is_below_minus_90():
    check = check_audio(_level(-20.0))
    assert check.ok and check.status == "ok"
    assert check.rms_dbfs == pytest.approx(-20.0, abs=1e-6)
    assert check.clipped_fraction == 0.0
    assert check_audio(_level(-89.5)).status == "ok"
    silent = check_audio(_level(-90.5))
    assert silent.status == "silent" and not silent.ok
    assert silent.rms_dbfs == pytest.approx(-90.5, abs=1e-6)
    assert check_audio(_level(-95.0)).status == "silent"
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # digital silence: no log-of-zero warning in the log
        assert check_audio(np.zeros(16000)).rms_dbfs == pytest.approx(-240.0)


def test_a_level_exactly_at_the_silence_threshold_is_not_silent():
    # +-0.1 alternating: a level without DC offset (a constant is an offset: silent)
    x = 0.1 * (-1.0) ** np.arange(16000)
    at = 10 * np.log10(np.mean(np.square(x)))
    assert check_audio(x, silent_dbfs=at).status == "ok"
    assert check_audio(x, silent_dbfs=at + 1e-9).status == "silent"


def test_silence_is_judged_on_the_median_of_tenth_second_blocks():
    x = np.zeros(4800)
    x[:1600] = _level(-20.0, 1600)        # one loud block of three: the median is silent
    assert check_audio(x).status == "silent"
    x[:3200] = _level(-20.0, 3200)        # two of three loud: not silent, but a dropout
    assert check_audio(x).status == "dropout"


def test_clipping_counts_samples_at_full_scale_and_needs_more_than_a_tenth_percent():
    x = _level(-20.0)
    x[:16] = 0.999                        # exactly 0.1 %: not yet clipped
    check = check_audio(x)
    assert check.status == "ok" and check.clipped_fraction == pytest.approx(0.001)
    x[16] = 0.999                         # one more sample at the clip level
    assert check_audio(x).status == "clipped"


def test_an_odd_length_interval_and_a_partial_last_block():
    rng = np.random.default_rng(2)
    sound = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    assert check_audio(sound[:1601]).status == "ok"          # one block and one sample
    x = np.zeros(2400, np.float32)
    x[1600:] = sound[:800]                # a silent block, then half a block of sound:
    assert check_audio(x).status == "silent"  # the partial block is not a piece of its own
