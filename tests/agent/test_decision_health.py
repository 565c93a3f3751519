"""The anomaly decision (k-of-n hysteresis, events) and the audio health check."""

import numpy as np
import pytest

from harken.agent.decision import Decision, DecisionConfig
from harken.agent.health import check_audio


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
