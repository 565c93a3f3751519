"""bench/_detect.py: the time from a fault's onset to the agent's anomaly event, read from
synthetic JSON lines (the bench's only new logic that is not a measurement)."""

from __future__ import annotations

import pytest

from bench._detect import summarise, time_to_detect


def lines(anomalous: list[bool], starts: list[int], first_seq: int = 41) -> list[dict]:
    """Score records of 10-s intervals (durable seq from ``first_seq``), each followed by a
    ``start`` event where its 0-based index is in ``starts``."""
    out: list[dict] = [{"kind": "status", "status": "started"}]
    for i, on in enumerate(anomalous):
        out.append({"kind": "score", "seq": first_seq + i, "anomaly": on})
        if i in starts:
            out.append({"kind": "event", "type": "start", "seq": first_seq + i})
    return out


def test_the_delay_runs_from_the_onset_to_the_end_of_the_interval_that_raises_the_event():
    # onset 62.5 s; intervals 7 (60-70 s) and 8 (70-80 s) above: k_on 2 raises it at 80 s
    rec = lines([False] * 7 + [True] * 5, starts=[7])
    assert time_to_detect(rec, 62.5, 10.0) == {"outcome": "detected", "seconds": 17.5,
                                               "false_alarms": 0}


def test_an_alarm_on_at_the_onset_times_nothing_and_counts_as_a_false_alarm():
    rec = lines([False] * 4 + [True] * 8, starts=[4])
    assert time_to_detect(rec, 60.0, 10.0) == {"outcome": "on_at_onset", "seconds": None,
                                               "false_alarms": 1}


def test_a_false_alarm_that_ended_before_the_onset_still_lets_the_fault_be_timed():
    rec = lines([False, True, True, False, False, False, False, True, True], starts=[1, 7])
    found = time_to_detect(rec, 60.0, 10.0)
    assert found == {"outcome": "detected", "seconds": 20.0, "false_alarms": 1}


def test_no_event_after_the_onset_is_a_miss_and_the_summary_keeps_misses_out_of_the_median():
    missed = time_to_detect(lines([False] * 12, starts=[]), 60.0, 10.0)
    assert missed == {"outcome": "missed", "seconds": None, "false_alarms": 0}
    rows = [missed, {"outcome": "detected", "seconds": 20.0, "false_alarms": 0},
            {"outcome": "detected", "seconds": 40.0, "false_alarms": 0},
            {"outcome": "on_at_onset", "seconds": None, "false_alarms": 2}]
    assert summarise(rows) == {"recordings": 4, "detected": 2, "missed": 1, "on_at_onset": 1,
                               "false_alarms": 2, "median_s": pytest.approx(30.0),
                               "max_s": 40.0}
