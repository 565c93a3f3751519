"""The durable outbox: order, acknowledgement, survival across reopen, seq, eviction."""

import pytest

from harken.agent.outbox import Outbox


def test_messages_wait_in_order_until_acked_and_survive_reopen(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    ids = [box.put("t/score", f"{i}".encode(), seq=i + 1) for i in range(5)]
    assert [m.payload for m in box.pending()] == [b"0", b"1", b"2", b"3", b"4"]
    box.ack(ids[0])
    box.ack(ids[2])
    assert [m.payload for m in box.pending(after_id=ids[1])] == [b"3", b"4"]
    box.close()
    again = Outbox(tmp_path / "outbox.db")              # a restart (or a power cut)
    assert [m.payload for m in again.pending()] == [b"1", b"3", b"4"]
    assert again.last_seq == 5 and again.depth == 3


def test_seq_only_grows(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.put("a", b"x", seq=7)
    box.put("a", b"x", seq=3)                           # never goes back
    box.put("a", b"x", kind="event")                    # events carry no new seq
    assert box.last_seq == 7


def test_eviction_drops_oldest_scores_first_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=10)
    box.put("e", b"event-0", kind="event")
    for i in range(15):
        box.put("s", f"score-{i}".encode(), seq=i + 1)
    payloads = [m.payload.decode() for m in box.pending()]
    assert box.depth == 10 and box.evicted == 6
    assert payloads == ["event-0"] + [f"score-{i}" for i in range(6, 15)]
    assert box.last_seq == 15


def test_a_corrupt_outbox_is_named(tmp_path):
    (tmp_path / "o.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OSError, match="o.db: cannot open the outbox"):
        Outbox(tmp_path / "o.db")
