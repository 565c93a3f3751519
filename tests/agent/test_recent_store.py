"""The feedback store (agent/sinks/recent.py) on its own: records as written, a torn last
record skipped, a new segment per hour and per layout, pruning by age and by size, a
failing disk said and never raised, its settings refused in one line."""

import time

import numpy as np
import pytest

from harken.agent.config import ConfigError, load_config
from harken.agent.decision.hysteresis import Event
from harken.agent.decision.records import IntervalResult
from harken.agent.sinks import SINKS
from harken.agent.sinks.recent import (ANOMALY, END, MAINTENANCE, START, STATS,
                                       FeedbackStoreSink, RecentStore, StoreError, read_store,
                                       segments)
from harken.testkit.files import write_agent_config

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR       # the start of an hour


def result(seq, ts, score=1.0, stats=True, width=3, event=None, **kw):
    return IntervalResult(
        ts=ts, seq=seq, score=score, threshold=2.0, anomaly=kw.pop("anomaly", False),
        interval_s=10.0, model=kw.pop("model", "m1"), backend="onnx",
        status=kw.pop("status", "ok"), rms_dbfs=-30.0, windows=4, inference_ms=1.0,
        event=event, statistics=({"mel": np.arange(width, dtype=np.float64) + seq,
                                  "spectrum": np.full(2, seq, np.float64)} if stats else None),
        **kw)


def test_records_read_back_with_their_flags_and_statistics(tmp_path):
    store = RecentStore(tmp_path / "recent-fan", keep_hours=24, max_mb=64, clock=lambda: T0)
    store.add(result(1, T0 + 1, score=None, stats=False, status="silent"))
    store.add(result(2, T0 + 11, anomaly=True, event=Event("start", T0 + 11, 3.0, 0.0)))
    store.add(result(3, T0 + 21, maintenance=True, event=Event("end", T0 + 21, 3.0, 10.0)))
    store.close()
    s = read_store(tmp_path / "recent-fan")
    assert s.seq.tolist() == [1, 2, 3] and s.ts.tolist() == [T0 + 1, T0 + 11, T0 + 21]
    assert np.isnan(s.score[0]) and s.score[1:].tolist() == [1.0, 1.0]
    assert s.status() == ["silent", "ok", "ok"]
    assert s.has(ANOMALY).tolist() == [False, True, False]
    assert s.has(START).tolist() == [False, True, False]
    assert s.has(END).tolist() == [False, False, True]
    assert s.has(MAINTENANCE).tolist() == [False, False, True]
    assert s.has(STATS).tolist() == [False, True, True]
    assert s.statistics[0] is None
    np.testing.assert_array_equal(s.statistics[2]["mel"], [3, 4, 5])
    assert s.statistics[2]["mel"].dtype == np.float32
    # the first record had no statistics: the layout came with the second, in a new segment
    assert len(segments(tmp_path / "recent-fan")) == 2


def test_a_torn_last_record_is_skipped(tmp_path):
    store = RecentStore(tmp_path / "r", keep_hours=24, max_mb=64, clock=lambda: T0)
    for i in range(1, 4):
        store.add(result(i, T0 + 10 * i))
    store.close()
    [seg] = segments(tmp_path / "r")
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])                  # a kill -9 in the middle of the last write
    assert read_store(tmp_path / "r").seq.tolist() == [1, 2]
    seg.write_bytes(data[:20])                  # torn in its header: no records, no error
    assert len(read_store(tmp_path / "r")) == 0
    seg.write_bytes(data[:12] + b'{"version": 1, "model": "m", "interval_s": 10, '
                    b'"layout": [["mel", -3]]}')          # not ours: skipped, never raised
    assert len(read_store(tmp_path / "r")) == 0


def test_a_segment_per_hour_per_model_and_per_layout(tmp_path):
    store = RecentStore(tmp_path / "r", keep_hours=24, max_mb=64, clock=lambda: T0)
    store.add(result(1, T0 + 10))
    store.add(result(2, T0 + 20))
    store.add(result(3, T0 + HOUR + 1))          # the next hour
    store.add(result(4, T0 + HOUR + 11, width=5))          # another layout
    store.add(result(5, T0 + HOUR + 21, width=5, model="m2"))
    store.close()
    assert len(segments(tmp_path / "r")) == 4
    assert read_store(tmp_path / "r", model="m1").seq.tolist() == [1, 2, 3, 4]
    both = read_store(tmp_path / "r")
    assert both.seq.tolist() == [1, 2, 3, 4, 5] and both.models == {"m1", "m2"}
    assert read_store(tmp_path / "r", interval_s=2.0).seq.tolist() == []


def test_pruned_by_age_and_by_size(tmp_path):
    now = [T0]
    store = RecentStore(tmp_path / "r", keep_hours=2, max_mb=64, clock=lambda: now[0])
    for h in range(5):
        now[0] = T0 + h * HOUR + 5
        store.add(result(h + 1, now[0]))
    store.close()
    # the hours that ended more than 2 h ago are gone (checked when each segment opened)
    assert read_store(tmp_path / "r").seq.tolist() == [3, 4, 5]
    big = RecentStore(tmp_path / "b", keep_hours=24, max_mb=1, clock=lambda: T0)
    for i in range(400):                          # ~12 kB a record: 4.8 MB asked for
        big.add(result(i + 1, T0 + i, width=3000))
    big.close()
    total = sum(p.stat().st_size for p in segments(tmp_path / "b"))
    assert total <= 1e6 + 13_000
    kept = read_store(tmp_path / "b").seq
    assert kept[-1] == 400 and kept.tolist() == list(range(kept[0], 401))


def test_a_failing_disk_is_said_not_raised(tmp_path, caplog):
    sink = FeedbackStoreSink(RecentStore(tmp_path / "r", 24, 64, clock=lambda: T0))
    sink.interval(result(1, T0 + 1))
    sink.store.segment.fd = 10_000                 # a descriptor that fails every write
    with caplog.at_level("WARNING"):
        sink.interval(result(2, T0 + 2))
    assert sink.failure and "cannot write" in caplog.text
    sink.interval(result(3, T0 + 3))               # a new segment: works again
    assert sink.failure is None
    sink.close()
    assert read_store(tmp_path / "r").seq.tolist() == [1, 3]


def test_the_sink_is_on_by_default_off_at_zero_and_wants_statistics(tmp_path):
    assert SINKS["feedback-store"] is FeedbackStoreSink and FeedbackStoreSink.wants_statistics
    base = {"agent": {"state_dir": tmp_path / "state", "machine": "fan"},
            "model": {"bundle": "b"}, "audio": {"source": "file", "file": "x.wav"}}
    on = load_config(write_agent_config(tmp_path / "on.toml", **base))
    assert FeedbackStoreSink.enabled(on) and on.feedback.keep_hours == 24
    sink = FeedbackStoreSink.from_config(on)
    assert sink.store.folder == tmp_path / "state" / "recent-fan"
    sink.close()
    off = load_config(write_agent_config(tmp_path / "off.toml", **base,
                                         feedback={"keep_hours": 0}))
    assert not FeedbackStoreSink.enabled(off)


def test_a_file_at_the_store_fails_the_sink_never_the_node(tmp_path, caplog):
    """Finding 4 (second round): a file at recent-M stopped ``harken run`` ("the feedback
    store cannot be opened there"). Now the sink fails, warned once, and scoring goes on;
    once the file is moved away the store works again. Reading it says "not a folder"
    (finding 9), never "cannot write"."""
    base = {"agent": {"state_dir": tmp_path / "state", "machine": "fan"},
            "model": {"bundle": "b"}, "audio": {"source": "file", "file": "x.wav"}}
    config = load_config(write_agent_config(tmp_path / "on.toml", **base))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "recent-fan").write_text("x")
    with caplog.at_level("WARNING"):
        sink = FeedbackStoreSink.from_config(config)
        sink.interval(result(1, T0 + 1))
        sink.interval(result(2, T0 + 2))
    warned = [r.getMessage() for r in caplog.records if "recent-fan" in r.getMessage()]
    assert len(warned) == 1 and "not a folder" in warned[0] and "scoring goes on" in warned[0]
    assert sink.failure and "not a folder" in sink.failure
    with pytest.raises(StoreError, match=r"recent-fan: not a folder .* move the file away"):
        read_store(tmp_path / "state" / "recent-fan")
    (tmp_path / "state" / "recent-fan").unlink()
    sink.interval(result(3, T0 + 3))
    assert sink.failure is None
    sink.close()
    assert read_store(tmp_path / "state" / "recent-fan").seq.tolist() == [3]


@pytest.mark.parametrize("damage", ["zeros", "folder", "header"])
def test_unreadable_segments_are_named(tmp_path, damage):
    """Finding 9 (second round): a segment of zeros, a folder in its place or a bad header
    were skipped silently (``--events`` printed nothing, ``--event 2`` said the store held
    no intervals). The store read now names them, for one warning line."""
    store = RecentStore(tmp_path / "r", 24, 64, clock=lambda: T0)
    store.add(result(1, T0 + 1))
    store.close()
    bad = tmp_path / "r" / "20270115T08-000000000009.seg"
    if damage == "zeros":
        bad.write_bytes(bytes(4096))
    elif damage == "folder":
        bad.mkdir()
    else:
        bad.write_bytes(b"HKRECENT" + (5).to_bytes(4, "little") + b"{bad}")
    s = read_store(tmp_path / "r")
    assert s.seq.tolist() == [1] and s.unreadable == [str(bad)]
    assert "1 feedback store segment(s) could not be read" in s.warning()
    assert bad.name in s.warning()
    assert read_store(tmp_path / "r", "m1").warning() == s.warning()
    (tmp_path / "r" / bad.name).rename(tmp_path / "gone") if damage != "folder" else bad.rmdir()
    assert read_store(tmp_path / "r").warning() is None


@pytest.mark.parametrize("key, value", [("keep_hours", -1), ("keep_hours", "24h"),
                                        ("max_mb", 0), ("keep_hours", 10_000)])
def test_bad_settings_are_refused_in_one_line(tmp_path, key, value):
    cfg = write_agent_config(tmp_path / "a.toml", agent={"state_dir": tmp_path},
                             model={"bundle": "b"}, feedback={key: value})
    with pytest.raises(ConfigError, match=rf"feedback\.{key}") as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_store_time_is_cheap():
    """One interval's record is one write: 1000 intervals in well under a second."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        store = RecentStore(d, 24, 64, clock=lambda: T0)
        t = time.perf_counter()
        for i in range(1000):
            store.add(result(i + 1, T0 + i, width=1000))
        store.close()
        assert time.perf_counter() - t < 2.0
