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


# -- held scores (docs/mqtt.md "Wear"): a score a live connection delivers is written only
# when its PUBACK does not come within hold_s

def wal_frames(box: Outbox) -> int:
    """Pages written to the write-ahead log since it was last reset (the caller turned the
    automatic checkpoint off, so the log only grows): what the outbox wrote, in pages."""
    wal = box.path.with_name(box.path.name + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    page = int(box._db.execute("PRAGMA page_size").fetchone()[0])
    return max(0, size - 32) // (page + 24)


def test_held_scores_acknowledged_in_time_cost_no_write_per_score(tmp_path):
    """The bound in pages: 500 scores put and acknowledged cost at most the one block
    reservation; written at once, each costs an insert and a delete (>= 2 commits)."""
    counts = {}
    for hold_s in (5.0, 0.0):
        box = Outbox(tmp_path / f"o-{hold_s}.db", hold_s=hold_s)
        box.put("s", b"first", seq=1)                     # the first write reserves ids
        box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        box._db.execute("PRAGMA wal_autocheckpoint=0")    # the log only grows from here
        for i in range(500):
            box.ack(box.put("s", b"x" * 300, seq=i + 2, hold=True))
        assert box.depth == 1 and box.held == 0 and box.last_seq == 501
        counts[hold_s] = wal_frames(box)
        box.close()
    assert counts[5.0] == 0, counts
    assert counts[0.0] >= 2 * 500, counts


def test_held_scores_keep_their_ids_and_order_among_written_messages(tmp_path):
    box = Outbox(tmp_path / "o.db", hold_s=5.0)
    box.put("e", b"start", kind="event")                  # written: reserves a block
    a = box.put("s", b"a", seq=1, hold=True)
    e = box.put("e", b"event", kind="event")              # written at once, between
    b = box.put("s", b"b", seq=2, hold=True)
    r = box.put("st", b"ON", retain=True, kind="state", hold=True)   # retained: never held
    assert a < e < b < r and box.held == 2 and box.depth == 5
    assert [m.payload for m in box.pending()] == [b"start", b"a", b"event", b"b", b"ON"]
    assert [m.id for m in box.pending(after_id=a, limit=2)] == [e, b]
    assert box.spill() == 2 and box.held == 0                      # written: the same ids
    assert [(m.id, m.payload) for m in box.pending()][1:] == [(a, b"a"), (e, b"event"),
                                                              (b, b"b"), (r, b"ON")]
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [m.payload for m in again.pending()] == [b"start", b"a", b"event", b"b", b"ON"]
    assert again.last_seq == 2


def test_a_held_score_is_written_when_not_acknowledged_within_hold_s(tmp_path):
    from tests.helpers import wait_for
    box = Outbox(tmp_path / "o.db", hold_s=0.2)
    box.put("e", b"start", kind="event")
    late = box.put("s", b"late", seq=1, hold=True)
    assert box.spill(due_only=True) == 0 and box.held == 1      # not due yet
    wait_for("the score written after hold_s", lambda: box.spill(due_only=True) == 1, 10)
    on_disk = box._db.execute("SELECT id, payload FROM messages WHERE kind = 'score'").fetchall()
    assert on_disk == [(late, b"late")] and box.depth == 2
    box.ack(late)                                                # acknowledged after all
    assert box.depth == 1


def test_a_clean_close_writes_the_unacknowledged_held_scores(tmp_path):
    box = Outbox(tmp_path / "o.db", hold_s=5.0)
    box.put("e", b"start", kind="event")
    ids = [box.put("s", f"{i}".encode(), seq=i + 1, hold=True) for i in range(5)]
    box.ack(ids[1])
    assert box.held == 4
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [(m.id, m.payload) for m in again.pending()][1:] == \
        [(ids[i], f"{i}".encode()) for i in (0, 2, 3, 4)]
    assert again.last_seq == 5


def test_too_many_held_are_written_together_and_eviction_sees_them(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=12, hold_s=5.0, max_held=4)
    box.put("e", b"start", kind="event")
    for i in range(4):
        box.put("s", f"{i}".encode(), seq=i + 1, hold=True)
    assert box.held == 4
    box.put("s", b"4", seq=5, hold=True)                         # a fifth: all five written
    assert box.held == 0 and box.depth == 6
    for i in range(5, 12):
        box.put("s", f"{i}".encode(), seq=i + 1, hold=True)
    # 13 messages for 12 places: the oldest score goes, held or not
    assert box.depth == 12 and box.evicted == 1
    assert [m.payload for m in box.pending()] == [b"start"] + [f"{i}".encode()
                                                               for i in range(1, 12)]


def test_a_held_score_refused_goes_to_the_refused_store(tmp_path):
    box = Outbox(tmp_path / "o.db", hold_s=5.0)
    box.put("e", b"start", kind="event")
    held = box.put("s", b"too big", seq=1, hold=True)
    assert box.refuse(held, "Packet too large (0x95)") and box.held == 0
    assert [(r.payload, r.reason) for r in box.refused()] == [(b"too big",
                                                              "Packet too large (0x95)")]
    assert not box.refuse(held, "again")
    assert box.resend() == 1 and [m.payload for m in box.pending()] == [b"start", b"too big"]


def test_a_resend_by_another_process_never_collides_with_held_ids_nor_skips_later_ones(tmp_path):
    """`harken outbox --resend` beside a running agent: its rows get ids above the agent's
    reserved block; the agent, once it sees them, takes its next ids above them, so a
    sender that has sent them (its last_sent beyond them) still sees what comes later."""
    agent = Outbox(tmp_path / "o.db", hold_s=5.0)
    first = agent.put("s", b"refused", seq=1)
    assert agent.refuse(first, "Not authorized (0x87)")
    held = agent.put("s", b"held", seq=2, hold=True)
    cli = Outbox(tmp_path / "o.db")                              # the other process
    assert cli.resend() == 1
    cli.close()
    got = agent.pending()
    assert [m.payload for m in got] == [b"held", b"refused"] and got[0].id == held
    last_sent = got[-1].id
    later = agent.put("s", b"later", seq=3, hold=True)           # after the sender saw them
    assert later > last_sent and [m.payload for m in agent.pending(after_id=last_sent)] == \
        [b"later"]
    agent.spill()
    assert [m.payload for m in agent.pending()] == [b"held", b"refused", b"later"]


def test_held_scores_on_a_full_disk_evict_old_scores_or_are_counted(tmp_path):
    box = Outbox(tmp_path / "o.db", hold_s=5.0)
    box._db.execute("PRAGMA max_page_count = 12")
    box.put("e", b"start", kind="event")
    n = 0
    while not box.disk_full:                                     # the broker is away
        n += 1
        box.put("s", b"x" * 300, seq=n)
    for i in range(40):                                          # connected again: held
        n += 1
        box.put("s", b"y" * 300, seq=n, hold=True)
    assert box.held == 40
    box.spill()                                                  # the connection went
    assert box.held == 0 and box.last_seq == n
    assert box.depth + box.evicted == n + 1                      # none lost silently
    assert [m.payload for m in box.pending(limit=10_000)][-1] == b"y" * 300


# -- the same through the publisher and a real Mosquitto (a relay holds PUBACKs, cuts lines)

def _publisher(port: int, hold_s: float):
    from types import SimpleNamespace

    from harken.agent.sinks.mqtt.publisher import Encoder, Publisher
    from harken.testkit.mosquitto import PASSWORD, USER
    settings = SimpleNamespace(host="127.0.0.1", port=port, keepalive=60, username=USER,
                               resolved_password=lambda: PASSWORD, tls=False, outbox_max=1000,
                               protocol="auto", ack_timeout_s=30.0, outbox_hold_s=hold_s)
    return Publisher(settings, f"hold-{port}", Encoder(), lambda _: None)


def _scores(listener, topic="hold/score"):
    return [p for t, p, _ in listener.messages if t == topic]


def test_with_a_healthy_broker_delivered_scores_write_no_page(broker, tmp_path):
    from harken.testkit.mosquitto import Listener
    from tests.helpers import wait_for
    listen = Listener(broker.port, topic="hold/#", client_id="hold-listener")
    pub = _publisher(broker.port, 30.0)
    box = Outbox(tmp_path / "outbox.db")
    lane = pub.add_lane(box, lambda m, live: m.payload)
    pub.start()
    try:
        wait_for("the connection", lambda: pub.connected, 30)
        pub.put(lane, "hold/event", b"start", kind="event")     # the block of ids
        wait_for("the event delivered", lambda: box.depth == 0, 30)
        box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        box._db.execute("PRAGMA wal_autocheckpoint=0")
        for i in range(100):
            pub.put(lane, "hold/score", b"%d" % i, seq=i + 1)
        wait_for("100 scores acknowledged", lambda: box.depth == 0, 60)
        listen.wait(lambda lt: _scores(lt) == [b"%d".decode() % i for i in range(100)])
        assert wal_frames(box) == 0 and box.last_seq == 100
    finally:
        pub.close()
        listen.close()


def test_scores_held_when_the_line_goes_are_written_at_once_then_delivered(broker, tmp_path):
    from harken.testkit.mosquitto import Listener, outbox_depth
    from harken.testkit.relay import Relay
    from tests.helpers import wait_for
    relay = Relay(broker.port)
    listen = Listener(broker.port, topic="hold/#", client_id="hold-listener-2")
    pub = _publisher(relay.port, 30.0)
    box = Outbox(tmp_path / "outbox.db")
    lane = pub.add_lane(box, lambda m, live: m.payload)
    before = pub.put(lane, "hold/score", b"before", seq=1)      # not connected yet: written
    assert outbox_depth(box.path) == 1 and box.held == 0 and before > 0
    pub.start()
    try:
        wait_for("the connection", lambda: pub.connected, 30)
        wait_for("the first score delivered", lambda: box.depth == 0, 30)
        relay.hold()                                             # no PUBACK comes back
        for i in range(5):
            pub.put(lane, "hold/score", f"held{i}".encode(), seq=i + 2)
        assert box.held == 5 and outbox_depth(box.path) == 0
        relay.cut()                                              # the line goes: written
        wait_for("the held scores on disk", lambda: outbox_depth(box.path) == 5, 30)
        assert box.held == 0
        for i in range(3):                         # written or held, by the connection
            pub.put(lane, "hold/score", f"down{i}".encode(), seq=i + 7)
        relay.release()
        wait_for("all delivered after the reconnect", lambda: box.depth == 0, 60)
        want = ["before"] + [f"held{i}" for i in range(5)] + [f"down{i}" for i in range(3)]
        listen.wait(lambda lt: all(w in _scores(lt) for w in want))
        got = list(dict.fromkeys(_scores(listen)))               # duplicates allowed
        assert got == want
    finally:
        pub.close()
        relay.close()
        listen.close()


def test_a_clean_stop_writes_the_unacknowledged_scores(broker, tmp_path):
    from harken.testkit.relay import Relay
    from tests.helpers import wait_for
    relay = Relay(broker.port)
    pub = _publisher(relay.port, 30.0)
    box = Outbox(tmp_path / "outbox.db")
    lane = pub.add_lane(box, lambda m, live: m.payload)
    pub.start()
    try:
        wait_for("the connection", lambda: pub.connected, 30)
        pub.put(lane, "hold/event", b"start", kind="event")
        wait_for("the event delivered", lambda: box.depth == 0, 30)
        relay.hold()
        for i in range(4):
            pub.put(lane, "hold/score", f"{i}".encode(), seq=i + 1)
        assert box.held == 4
    finally:
        pub.close()                                              # closes the outbox too
        relay.close()
    again = Outbox(tmp_path / "outbox.db")
    assert [m.payload for m in again.pending()] == [f"{i}".encode() for i in range(4)]
    assert again.last_seq == 4
