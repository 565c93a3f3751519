"""The durable outbox: order, acknowledgement, survival across reopen, seq, eviction."""

import sqlite3
import threading
import time

import pytest

from harken.agent.sinks.mqtt.outbox import Outbox, _disk_full
from tests.helpers import tmpfs


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


def test_a_corrupt_outbox_is_set_aside_and_a_new_one_started(tmp_path, caplog):
    """Before: refused (exit 2), and systemd never restarted the agent (finding 9)."""
    junk = b"this is not sqlite" * 100
    (tmp_path / "o.db").write_bytes(junk)
    box = Outbox(tmp_path / "o.db")
    box.put("s", b"x", seq=1)
    assert box.depth == 1
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("o.db.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == junk            # kept, never deleted
    said = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(said) == 1 and aside[0].name in said[0] and "file is not a database" in said[0]


def test_a_full_database_evicts_old_scores_and_recovers_when_room_returns(tmp_path):
    """SQLite's page limit gives the same SQLITE_FULL as a full disk, deterministically."""
    box = Outbox(tmp_path / "o.db")
    box._db.execute("PRAGMA max_page_count = 12")          # the disk itself has room
    payload = b"x" * 300
    ids = [box.put("t/score", payload, seq=i + 1) for i in range(200)]
    assert box.disk_full and box.last_seq == 200
    kept = [m.id for m in box.pending(limit=1000)]
    # every score is either still there or counted as evicted; the newest ones are kept
    assert len(kept) + box.evicted == 200 and ids[-1] in kept and kept == sorted(kept)
    assert box.evicted > 0
    assert box.put("t/event", b"e", kind="event") >= 0            # events still get in
    box._db.execute("PRAGMA max_page_count = 100000")               # space returns
    for seq in range(201, 260):
        assert box.put("t/score", payload, seq=seq) > 0
    assert not box.disk_full and box.last_seq == 259


def test_a_full_filesystem_never_raises_counts_what_it_drops_and_recovers(tmp_path):
    """A real 2 MiB filesystem, mostly taken by another file, then freed (needs root to
    mount a tmpfs; CI runs as root)."""
    with tmpfs(tmp_path / "small", "2m") as mnt:
        (mnt / "other.log").write_bytes(bytes(1500 * 1024))        # someone else's file
        box = Outbox(mnt / "outbox.db")
        stored = [box.put("t/score", bytes(400), seq=i + 1) for i in range(3000)]
        assert box.disk_full and box.last_seq == 3000
        assert box.depth + box.evicted == 3000                      # none lost silently
        assert box.depth > 100 and stored.count(-1) == 0           # old scores made room
        newest = [m.payload for m in box.pending(limit=5000)][-1]
        assert box.pending(limit=5000)[-1].id == stored[-1] and len(newest) == 400
        (mnt / "other.log").unlink()                                 # the operator frees space
        for seq in range(3001, 4000):
            assert box.put("t/score", bytes(400), seq=seq) > 0
        assert not box.disk_full
        assert box.depth + box.evicted == 3999 and box.last_seq == 3999
        box.close()


def test_an_outbox_on_a_read_only_filesystem_says_so_instead_of_move_it_aside(tmp_path):
    with tmpfs(tmp_path / "ro", "64k", "ro") as mnt:
        with pytest.raises(OSError, match="this user may not write its folder") as err:
            Outbox(mnt / "outbox.db")
        assert "move it aside" not in str(err.value)


def test_qos_retain_kind_and_time_round_trip_through_a_reopen(tmp_path):
    before = time.time()
    box = Outbox(tmp_path / "o.db")
    box.put("n/m/anomaly", b"on", qos=2, retain=True, kind="anomaly")
    box.put("n/m/score", b"s", qos=0, retain=False)
    box.put("n/m/event", b"e", qos=1, retain=False, kind="event")
    box.close()
    got = Outbox(tmp_path / "o.db").pending()
    assert [(m.topic, m.payload, m.qos, m.retain, m.kind) for m in got] == [
        ("n/m/anomaly", b"on", 2, True, "anomaly"),
        ("n/m/score", b"s", 0, False, "score"),
        ("n/m/event", b"e", 1, False, "event")]
    assert all(isinstance(m.retain, bool) for m in got)
    assert all(before <= m.created <= time.time() for m in got)
    assert [m.id for m in got] == sorted(m.id for m in got) and got[0].id >= 1


def test_each_put_beyond_the_limit_evicts_exactly_one(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=11)
    for i in range(11):
        box.put("s", f"{i}".encode())
    assert (box.depth, box.evicted) == (11, 0)               # at the limit: nothing goes
    box.put("s", b"11")
    assert (box.depth, box.evicted) == (11, 1)
    box.put("s", b"12")
    assert (box.depth, box.evicted) == (11, 2)
    assert [m.payload for m in box.pending()][0] == b"2"


def test_a_smaller_limit_on_reopen_evicts_the_whole_excess_and_counts_it(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=30)
    for i in range(25):
        box.put("s", f"{i}".encode(), seq=i + 1)
    box.close()
    smaller = Outbox(tmp_path / "o.db", max_messages=13)      # the operator lowered it
    smaller.put("s", b"25", seq=26)                          # 26 stored: 13 must go at once
    assert (smaller.depth, smaller.evicted) == (13, 13)
    assert [m.payload for m in smaller.pending()] == [f"{i}".encode() for i in range(13, 26)]
    assert smaller.last_seq == 26


def test_when_no_score_is_left_the_oldest_of_anything_goes(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=10)
    box.put("s", b"score-0")
    for i in range(11):
        box.put("e", f"event-{i}".encode(), kind="event")
    # the one score went first, then the oldest event
    assert box.evicted == 2
    assert [m.payload for m in box.pending()] == [f"event-{i}".encode() for i in range(1, 11)]


def test_limits_and_pending_windows(tmp_path):
    with pytest.raises(ValueError, match="outbox max_messages must be at least 10, got 9"):
        Outbox(tmp_path / "o.db", max_messages=9)
    box = Outbox(tmp_path / "o.db", max_messages=10)
    ids = [box.put("s", bytes([i])) for i in range(7)]
    assert [m.id for m in box.pending(limit=3)] == ids[:3]
    assert [m.id for m in box.pending(after_id=ids[3], limit=2)] == ids[4:6]
    box.ack(10_000)                                          # an unknown id: harmless
    assert box.depth == 7 and box.last_seq == 0 and box.evicted == 0


class FailingDb:
    """The outbox's connection, except that statements containing ``when`` fail with
    ``message``: the SQLite errors a full or failing disk gives, on demand."""

    def __init__(self, db, when: str, message: str):
        self.db, self.when, self.message = db, when, message

    def execute(self, sql, *args):
        if self.when in sql:
            raise sqlite3.OperationalError(self.message)
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_defaults_nested_folders_and_acks_from_another_thread(tmp_path):
    box = Outbox(tmp_path / "state" / "deep" / "o.db")         # folders made as needed
    assert box.max_messages == 100_000 and not box.disk_full
    box.put("s", b"x")
    [m] = box.pending()
    assert (m.qos, m.retain, m.kind) == (1, False, "score")
    with pytest.raises(AttributeError):                         # a stored message is a record
        m.payload = b"y"
    for i in range(150):
        box.put("s", b"%d" % i)
    assert len(box.pending()) == 100                            # a page of 100 by default
    acker = threading.Thread(target=box.ack, args=(m.id,))       # paho acks on its own thread
    acker.start()
    acker.join()
    assert box.depth == 150


def test_disk_full_is_recognised_by_code_or_by_message_and_nothing_else():
    full = sqlite3.OperationalError("database or disk is full")
    assert _disk_full(full)
    coded = sqlite3.OperationalError("something else")
    coded.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert _disk_full(coded)
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert not _disk_full(locked)
    assert not _disk_full(sqlite3.OperationalError("disk I/O error"))


def test_when_nothing_can_be_evicted_the_message_is_dropped_counted_and_its_seq_kept(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box._db.execute("PRAGMA max_page_count = 12")
    ids = [box.put("e", b"x" * 300, kind="event") for _ in range(200)]   # events only
    assert -1 in ids and box.disk_full
    dropped = ids.count(-1)
    assert box.evicted == dropped and box.depth == 200 - dropped
    assert box.put("s", b"s" * 300, seq=41) == -1               # no score to make room with
    assert box.last_seq == 41 and box.evicted == dropped + 1
    box._db.execute("PRAGMA max_page_count = 100000")           # space returns
    assert box.put("e", b"later", kind="event") > 0             # no seq of its own
    box.close()
    again = Outbox(tmp_path / "o.db")                           # the drops and seq were stored
    assert again.evicted == dropped + 1 and again.last_seq == 41


def test_a_message_that_needs_every_old_score_gone_still_gets_in(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box._db.execute("PRAGMA max_page_count = 17")      # 16 for the rows, 1 the refused table's
    n = 0
    while box.put("s", b"x" * 200, seq=n + 1) > 0 and not box.disk_full:
        n += 1
    big = box.put("e", b"E" * 45_000, kind="event")             # about 70 % of the database
    assert big > 0, "the oldest scores should have been evicted to make room"
    assert box.pending(limit=10_000)[-1].payload == b"E" * 45_000


def test_eviction_on_a_full_disk_takes_at_least_one_score(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(50):
        box.put("s", b"%d" % i)
    box._evict_oldest_scores(0.01)                              # 1 % of 50 rounds to 0
    assert box.evicted == 1 and box.pending()[0].payload == b"1"
    box._evict_oldest_scores(0.1)                               # int(4.9): 4 more
    assert box.evicted == 5


def test_a_failed_eviction_rolls_back_and_other_errors_are_raised(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.put("s", b"%d" % i)
    real = box._db
    box._db = FailingDb(real, "UPDATE meta SET value = value +", "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        box._evict_oldest_scores(1.0)
    assert not real.in_transaction                              # rolled back, not left open
    box._db = real
    assert box.depth == 5 and box.evicted == 0                  # the delete was undone
    assert box.put("s", b"5") > 0


def test_checkpoint_and_ack_survive_a_full_disk_but_not_other_errors(tmp_path):
    box = Outbox(tmp_path / "o.db")
    mid = box.put("s", b"x")
    real = box._db
    box._db = FailingDb(real, "wal_checkpoint", "database or disk is full")
    box._checkpoint()                                           # refused quietly
    box._db = FailingDb(real, "wal_checkpoint", "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        box._checkpoint()
    box._db = FailingDb(real, "DELETE", "database or disk is full")
    box.ack(mid)                                                # kept, sent again later
    assert box.disk_full
    box._db = FailingDb(real, "DELETE", "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        box.ack(mid)
    box._db = real
    assert box.depth == 1


def test_an_outbox_whose_tables_have_other_columns_is_refused_at_open_in_one_line(tmp_path):
    """Before: opened, then a traceback at the first write after the start."""
    db = sqlite3.connect(tmp_path / "o.db")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, topic TEXT, body BLOB, "
               "extra TEXT NOT NULL)")
    db.commit()
    db.close()
    with pytest.raises(OSError, match=r"o.db: not a Harken outbox \(table messages has the "
                                      r"columns \['id', 'topic', 'body', 'extra'\], expected "
                                      r".*\); move it aside to start a new one"):
        Outbox(tmp_path / "o.db")


def test_an_outbox_of_the_previous_version_gains_the_refused_store_and_keeps_its_rows(tmp_path):
    db = sqlite3.connect(tmp_path / "o.db")
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            kind TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('last_seq', 4), ('evicted', 0);
        INSERT INTO messages (topic, payload, qos, retain, kind, created)
            VALUES ('t', x'31', 1, 0, 'score', 0);""")
    db.commit()
    db.close()
    box = Outbox(tmp_path / "o.db")
    assert [m.payload for m in box.pending()] == [b"1"] and box.last_seq == 4
    assert box.refused_count == 0 and box.last_refusal is None


def test_refused_messages_are_kept_apart_bounded_and_put_back_in_order(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=10)
    ids = []
    for i in range(14):
        ids.append(box.put("t", f"{i}".encode(), seq=i + 1))
        if i < 12:
            assert box.refuse(ids[-1], f"reason {i}")
    assert not box.refuse(ids[0], "again")                 # not in the outbox any more
    kept = box.refused()
    assert len(kept) == 10 and box.refused_count == 10 and box.evicted == 2
    assert [r.payload for r in kept] == [f"{i}".encode() for i in range(2, 12)]
    assert box.last_refusal == "reason 11" and [m.payload for m in box.pending()] == \
        [b"12", b"13"]
    assert box.resend([kept[0].id, kept[1].id]) == 2
    assert [m.payload for m in box.pending()] == [b"12", b"13", b"2", b"3"]
    assert box.refused_count == 8 and box.last_seq == 14
    box.close()
