"""The durable outbox: every score, event and anomaly-state message waits here until the
broker acknowledges it (PUBACK). SQLite in WAL mode with synchronous=FULL, so a message
written to it survives a restart or a power cut; delivery follows the insertion order.

Held scores (docs/mqtt.md "Delivery guarantees", "Wear"). Writing each score and deleting
it at its PUBACK cost about 28 kB of an SD card's writes per score (240 MB a day at 10-s
intervals; docs/benchmarks.md "Wear"). So a score put with ``hold=True`` (the publisher
does so only while a connection is up: a PUBACK can come) is kept in memory, and written
only when it is not acknowledged within ``hold_s``, when the connection goes (``spill``),
when more than ``max_held`` wait, at a clean stop (the publisher's flush, and close), or
when the bound or a refusal needs it. With a healthy broker a score then costs no write at all;
what a power cut or a kill -9 can lose is a score made in the last ``hold_s`` and not yet
acknowledged while the broker was up. Events, anomaly-state messages and every message
made while no connection is up are written at once, as before. Held and written messages
share one order of ids: an id given to a held message is the one it keeps when written,
``pending``, ``depth``, eviction, refusal and the full-disk handling see both.

Ids are taken from blocks reserved in SQLite's ``sqlite_sequence`` within a write (so that
``harken outbox --resend`` in another process inserts above the ids held here in memory);
a row another process put in above the block starts a new block above it, so delivery
keeps the insertion order.

``seq``: the last ``seq`` put is stored with every write and at close (``meta``
``last_seq``); the seq reservation (agent/seqstore.py) is what keeps ``seq`` strictly
increasing across restarts, this is the floor a restart also respects.

Bounded: beyond ``max_messages`` the oldest *score* messages are evicted first (events
and anomaly-state messages are what an operator acts on, and are kept while any score is
left to drop); every eviction is counted and reported in the stats record.

A full disk is the same bound reached early. SQLite needs room to free room (a delete is
written to the write-ahead log first, and the log is folded into the database file only
if that can grow), so the outbox acts before the disk is full: while less than
``reserve_bytes`` are free, the oldest scores are evicted (counted) to make room for each
new message and ``disk_full`` says so in the stats record. If a write fails all the same,
the message is dropped and counted, never raised: scoring goes on, and the outbox recovers
by itself when space returns.

A message the broker *refuses* (an MQTT 5 PUBACK with a failure reason code: not
authorized, packet too large, quota exceeded; or one too large for the broker's Maximum
Packet Size; docs/mqtt.md "Refused messages") leaves the live table for the ``refused``
table of the same database, with the reason and the time: kept, counted and re-sendable
(``harken outbox --resend``), so that it neither vanishes nor blocks the messages behind
it. The refused store has the same bound as the outbox (oldest refused go first, counted
as evicted).

A retained message (the anomaly state) is the topic's *current* value at the broker: one
sent again must never replace a newer one. The outbox remembers, per topic, when the newest
acknowledged retained message was made (``meta`` key ``retained:<topic>``, in ms);
``resend`` drops (and counts, ``stale_dropped``) a refused retained message older than
that, or than a retained message of its topic still waiting or resent with it
(docs/mqtt.md "Refused messages").
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from harken.common.errors import EnvironmentFailure
from harken.common.atomic import aside_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    refused REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('last_seq', 0), ('evicted', 0);
"""


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str                     # score | event | anomaly | ...: eviction takes scores first
    created: float                # time.time() when it was put


@dataclass(frozen=True)
class Refused:
    """A message the broker refused, as the refused store keeps it."""
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    created: float
    reason: str                   # the broker's reason code, or why the agent held it back
    refused: float                # time.time() of the refusal


# the columns each table must have, in order (a file with others is refused at open)
_COLUMNS = {"messages": ["id", "topic", "payload", "qos", "retain", "kind", "created"],
            "refused": ["id", "topic", "payload", "qos", "retain", "kind", "created", "reason",
                        "refused"],
            "meta": ["key", "value"]}


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL: the disk (or the database's page limit) has no room."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or \
        "database or disk is full" in str(exc)


ID_BLOCK = 4096       # message ids reserved per write while scores may be held
MAX_HELD = 256        # scores held in memory at most; more are written at once, together


def _with_id(message: Message, message_id: int) -> Message:
    return replace(message, id=message_id)


@dataclass
class _Held:
    """A score held in memory: the message, its seq, when it must be written (monotonic)."""
    message: Message
    seq: int | None
    due: float


# SQLITE_CORRUPT, SQLITE_NOTADB: a file that is no (longer a) database, set aside at open
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_log = logging.getLogger(__name__)


class Outbox:
    reserve_bytes = 256 * 1024       # the log (<= 128 KiB), its index (32 KiB) and room to work

    def __init__(self, path: Path, max_messages: int = 100_000, hold_s: float = 0.0,
                 max_held: int = MAX_HELD) -> None:
        if max_messages < 10:
            raise ValueError(f"outbox max_messages must be at least 10, got {max_messages}")
        if hold_s < 0:
            raise ValueError(f"outbox hold_s must be at least 0, got {hold_s}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_messages = path, max_messages
        self.hold_s, self.max_held = float(hold_s), max_held    # 0: every message written
        self._lock = threading.Lock()          # paho's thread acks, the main thread puts
        self.disk_full = False
        self._full_pages = 0                   # the database's size when the disk filled
        self._dropped = 0                      # evictions the full disk kept from meta
        self._seq_seen = 0                     # the highest seq put (stored with each write)
        self.stale_dropped = 0                 # old retained messages the last resend dropped
        self._held: OrderedDict[int, _Held] = OrderedDict()    # id -> held score, oldest first
        self._next_id, self._id_end = 1, 0     # the ids reserved and not yet given: none
        self.spill_error: str | None = None    # the last failed background write, if any
        try:
            wrong = self._open(path)
        except sqlite3.DatabaseError as exc:
            if not os.access(path.parent, os.W_OK) or (path.exists()
                                                       and not os.access(path, os.W_OK)):
                raise OSError(f"{path}: cannot open the outbox: this user may not write "
                              f"{'it' if path.exists() else 'its folder'} (check the "
                              f"permissions of agent.state_dir)") from None
            if getattr(exc, "sqlite_errorcode", None) not in _DAMAGED:
                # a full disk, an I/O error: the device's, so systemd tries again (exit 75)
                raise EnvironmentFailure(f"{path}: cannot open the outbox ({exc})") from None
            # damaged (a power cut on a card that lies about syncing): set aside, never
            # deleted, and a fresh one started so scoring goes on (docs/agent.md "A
            # damaged outbox")
            self._set_aside(path, exc)
            try:
                wrong = self._open(path)
            except sqlite3.DatabaseError as again:
                raise EnvironmentFailure(f"{path}: cannot open the outbox ({again})") from None
        if wrong:
            self._db.close()
            raise OSError(f"{path}: not a Harken outbox ({wrong}); move it aside to start a "
                          f"new one")

    def _open(self, path: Path) -> str:
        """Connect and set the database up; what differs from the outbox's tables."""
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # every commit appends a few pages to the write-ahead log, which SQLite folds
        # back only at 1000 pages (4 MB) by default: on a small disk the log alone
        # fills it, and then nothing can be folded back. Fold it at 32 pages and keep
        # it at most 128 KiB afterwards, so the outbox's disk use follows its content.
        self._db.execute("PRAGMA wal_autocheckpoint=32")
        self._db.execute("PRAGMA journal_size_limit=131072")
        self._db.executescript(SCHEMA)
        return self._foreign_tables()

    def _set_aside(self, path: Path, why: sqlite3.DatabaseError) -> None:
        """The damaged database (and its log) renamed with the time, said in one line."""
        try:
            self._db.close()
        except (sqlite3.Error, AttributeError):
            pass
        aside = aside_name(path, "damaged")   # never over an earlier one: nothing is deleted
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        _log.warning(f"{path}: damaged ({why}); set aside as {aside.name}, a new outbox "
                     f"started (its undelivered messages stay in the old file)")

    def _foreign_tables(self) -> str:
        """What differs from the outbox's own tables ('' when nothing): a file written by
        something else (or a future version) is refused at open, not at the first write."""
        for table, want in _COLUMNS.items():
            have = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]
            if have != want:
                return f"table {table} has the columns {have}, expected {want}"
        return ""

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @property
    def last_seq(self) -> int:
        with self._lock:
            return max(self._meta("last_seq"), self._seq_seen)

    @property
    def evicted(self) -> int:
        with self._lock:
            return self._meta("evicted") + self._dropped

    @property
    def depth(self) -> int:
        """Messages waiting for their PUBACK: written and held."""
        with self._lock:
            return self._rows() + len(self._held)

    @property
    def held(self) -> int:
        """Scores held in memory (not written yet)."""
        with self._lock:
            return len(self._held)

    def _rows(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def refused_count(self) -> int:
        """Messages in the refused store."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])

    @property
    def last_refusal(self) -> str | None:
        """The reason of the newest refused message (None when the store is empty)."""
        with self._lock:
            row = self._db.execute("SELECT reason FROM refused ORDER BY id DESC LIMIT 1"
                                   ).fetchone()
        return row[0] if row else None

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            kind: str = "score", seq: int | None = None, hold: bool = False) -> int:
        """Store one message (and the seq it used); returns its id, or -1 when a full disk
        left no room even after evicting old scores (the message is counted as evicted).
        ``hold``: a score that a live connection is about to deliver, kept in memory and
        written only if it is not acknowledged within ``hold_s`` (module docstring); a
        retained message, or any message while ``hold_s`` is 0, is written at once."""
        with self._lock:
            if seq is not None:
                self._seq_seen = max(self._seq_seen, seq)
            message = Message(0, topic, payload, qos, bool(retain), kind, time.time())
            if hold and self.hold_s > 0 and not retain and self._next_id <= self._id_end:
                message_id = self._next_id
                self._next_id += 1
                self._held[message_id] = _Held(_with_id(message, message_id), seq,
                                               time.monotonic() + self.hold_s)
                if len(self._held) > self.max_held or \
                        self._rows() + len(self._held) > self.max_messages:
                    self._write(self._take_held(None))     # all of them, in one transaction
                else:
                    self._write(self._take_held(time.monotonic()))
                return message_id
            batch = [(message, seq)]
            if self._held and self._rows() + len(self._held) + 1 > self.max_messages:
                batch = self._take_held(None) + batch     # eviction must see them on disk
            return self._write(batch)[-1]

    def spill(self, due_only: bool = False) -> int:
        """Write the held scores (those held for ``hold_s`` with ``due_only``): the publisher
        calls it each round, with ``due_only`` while a connection is up, and without when
        none is (no PUBACK can come). Never raises: a failed write keeps them held, retried
        at the next call, and says why in ``spill_error``. Returns how many were written."""
        with self._lock:
            batch = self._take_held(time.monotonic() if due_only else None)
            try:
                self._write(batch)
            except sqlite3.Error as exc:
                self.spill_error = str(exc)
                return 0
            self.spill_error = None
            return len(batch)

    def _take_held(self, now: float | None) -> list[tuple[Message, int | None]]:
        """The held scores due at ``now`` (all with None), oldest first. They stay held
        until ``_write`` has stored (or dropped) them. The caller holds the lock."""
        return [(h.message, h.seq) for h in self._held.values() if now is None or h.due <= now]

    def _write(self, batch: list[tuple[Message, int | None]]) -> list[int]:
        """Store ``batch`` in one transaction (a message with id 0 gets the next id); on a
        full disk one by one, evicting old scores. The ids, -1 for a dropped message. The
        caller holds the lock."""
        if not batch:
            return []
        if self._free_bytes() < self.reserve_bytes:
            return [self._insert_on_full_disk(m, seq) for m, seq in batch]
        try:
            ids = self._insert(batch)
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise
            return [self._insert_on_full_disk(m, seq) for m, seq in batch]
        # the disk counts as full until the outbox has grown past the size it had when it
        # filled (rows fitting into pages evictions freed prove nothing)
        if self.disk_full and self._pages() > self._full_pages:
            self.disk_full = False
        return ids

    def _free_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _pages(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _ids(self, db: sqlite3.Connection, n: int) -> tuple[int, int]:
        """The first of ``n`` new ids and the end of the reserved block after them, in the
        caller's transaction: from the block reserved, else a new block above every id
        given (here, or by another process: ``harken outbox --resend``), reserved in
        ``sqlite_sequence``. Applied by the caller after its COMMIT."""
        if self._next_id + n - 1 <= self._id_end:
            return self._next_id, self._id_end
        stored = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        top = max(stored[0] if stored else 0, self._id_end,
                  int(db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]))
        first = top + 1
        end = first + max(n, ID_BLOCK if self.hold_s > 0 else 0) - 1
        if db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'messages'",
                      (end,)).rowcount == 0:
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)", (end,))
        return first, end

    def _insert(self, batch: list[tuple[Message, int | None]]) -> list[int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            first, end = self._ids(db, sum(1 for m, _ in batch if not m.id))
            ids, given = [], first
            for m, _ in batch:
                if not m.id:
                    m, given = _with_id(m, given), given + 1
                db.execute("INSERT INTO messages (id, topic, payload, qos, retain, kind, "
                           "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (m.id, m.topic, m.payload, m.qos, int(m.retain), m.kind, m.created))
                ids.append(m.id)
            # every seq put so far (a held or dropped message's too) is stored with it
            if self._seq_seen:
                db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'last_seq'",
                           (self._seq_seen,))
            if self._dropped:                 # room again: record the earlier drops for good
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'",
                           (self._dropped,))
            self._evict(db)
            db.execute("COMMIT")
            self._dropped = 0
            self._next_id, self._id_end = given, end
            for i in ids:
                self._held.pop(i, None)
        except BaseException:
            if db.in_transaction:             # SQLite may have rolled back by itself
                db.execute("ROLLBACK")
            raise
        return ids

    def _insert_on_full_disk(self, message: Message, seq: int | None) -> int:
        """Evict ever more of the oldest scores until the message fits; if nothing frees
        enough, drop the message itself (counted; a held one leaves memory) and keep
        ``seq`` in memory only."""
        if not self.disk_full:
            self.disk_full, self._full_pages = True, self._pages()
        for share in (0.01, 0.1, 0.5, 1.0):
            try:
                # old scores out, the log folded into the database (the new message goes
                # into the pages they freed) and truncated
                self._evict_oldest_scores(share)
                self._checkpoint()
                return self._insert([(message, seq)])[0]
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
        self._dropped += 1
        self._held.pop(message.id, None)
        return -1

    def _checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it; a full disk may refuse, which
        the caller's next write will show."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise

    def _evict_oldest_scores(self, share: float) -> None:
        db = self._db
        scores = int(db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'score'")
                     .fetchone()[0])
        if not scores:
            return
        n = max(1, int(scores * share))
        db.execute("BEGIN IMMEDIATE")
        try:
            gone = db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                              "WHERE kind = 'score' ORDER BY id LIMIT ?)", (n,)).rowcount
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'", (gone,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _evict(self, db: sqlite3.Connection) -> None:
        excess = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]) - self.max_messages
        if excess <= 0:
            return
        # oldest scores first; only when no score is left, the oldest of anything
        for where in ("WHERE kind = 'score'", ""):
            n = db.execute(f"DELETE FROM messages WHERE id IN (SELECT id FROM messages {where} "
                           f"ORDER BY id LIMIT ?)", (excess,)).rowcount
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'", (n,))
            excess -= n
            if excess <= 0:
                return

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Message]:
        """Oldest undelivered messages (written or held) with id > ``after_id``, in order."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind, created "
                                    "FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
            if rows and rows[-1][0] > self._id_end and self._id_end:
                # a row another process put in above the ids reserved here (harken outbox
                # --resend): the next id is taken above it, so nothing made later is
                # ordered before a row already sent
                self._id_end = self._next_id - 1
            out = [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows]
            out += [h.message for i, h in self._held.items() if i > after_id]
            out.sort(key=lambda m: m.id)
            return out[:limit]

    def ack(self, message_id: int) -> None:
        """The broker has it: forget it. On a full disk the row stays and is sent again
        later (the same seq: subscribers de-duplicate); paho's thread must not die of it."""
        with self._lock:
            if self._held.pop(message_id, None) is not None:
                return                        # never written: nothing to delete
            try:
                # a retained message acknowledged: the newest value of its topic at the
                # broker, which no resent older one may replace
                self._db.execute("INSERT INTO meta (key, value) SELECT 'retained:' || topic, "
                                 "CAST(created * 1000 AS INTEGER) FROM messages WHERE id = ? "
                                 "AND retain = 1 ON CONFLICT(key) DO UPDATE SET value = "
                                 "MAX(value, excluded.value)", (message_id,))
                self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                self.disk_full = True

    def refuse(self, message_id: int, reason: str) -> bool:
        """Move a message the broker refused to the refused store (one transaction);
        False when it is not in the outbox (already acknowledged, evicted, or moved). A
        full disk leaves it where it is: it is sent again, and refused again."""
        with self._lock:
            db = self._db
            held = self._held.get(message_id)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if held is not None:
                        m = held.message
                        db.execute("INSERT INTO refused (topic, payload, qos, retain, kind, "
                                   "created, reason, refused) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (m.topic, m.payload, m.qos, int(m.retain), m.kind,
                                    m.created, reason, time.time()))
                        if held.seq:
                            db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = "
                                       "'last_seq'", (self._seq_seen,))
                        moved = 1
                    else:
                        moved = db.execute(
                            "INSERT INTO refused (topic, payload, qos, retain, kind, created, "
                            "reason, refused) SELECT topic, payload, qos, retain, kind, "
                            "created, ?, ? FROM messages WHERE id = ?",
                            (reason, time.time(), message_id)).rowcount
                        db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                    excess = int(db.execute("SELECT COUNT(*) FROM refused").fetchone()[0]) \
                        - self.max_messages
                    if excess > 0:
                        db.execute("DELETE FROM refused WHERE id IN (SELECT id FROM refused "
                                   "ORDER BY id LIMIT ?)", (excess,))
                        db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'",
                                   (excess,))
                    db.execute("COMMIT")
                    self._held.pop(message_id, None)
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                self.disk_full = True
                return False
            return moved > 0

    def refused(self, limit: int = 1000) -> list[Refused]:
        """The refused store, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind, created, "
                                    "reason, refused FROM refused ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [Refused(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8])
                for r in rows]

    def resend(self, ids: list[int] | None = None) -> int:
        """Put refused messages (all, or those of ``ids``) back at the end of the outbox,
        oldest first: they go out again as history (they were made on an earlier
        connection). A retained one older than a retained message of its topic that the
        broker has, that waits in the outbox or that is resent with it would put an old
        state back over a newer one: it is dropped instead, counted in ``stale_dropped``.
        Returns how many went back."""
        where, args = ("", ()) if ids is None else \
            (f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                stale = self._stale_retained(db, where, args)
                db.executemany("DELETE FROM refused WHERE id = ?", [(i,) for i in stale])
                self.stale_dropped = len(stale)
                back = db.execute(f"SELECT topic, payload, qos, retain, kind, created FROM "
                                  f"refused {where} ORDER BY id", args).fetchall()
                # the ids as every insert takes them: above any held here or elsewhere
                first, end = self._ids(db, len(back))
                db.executemany("INSERT INTO messages (id, topic, payload, qos, retain, kind, "
                               "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(first + i, *row) for i, row in enumerate(back)])
                n = len(back)
                db.execute(f"DELETE FROM refused {where}", args)
                self._evict(db)
                db.execute("COMMIT")
                self._next_id, self._id_end = first + n, end
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return n

    @staticmethod
    def _stale_retained(db: sqlite3.Connection, where: str, args: tuple) -> list[int]:
        """The refused retained messages (of ``where``) that a newer retained message of
        their topic supersedes: one the broker acknowledged, one waiting in the outbox, or
        a later refused one resent with them. The caller holds the lock, in a transaction."""
        newest: dict[str, float] = {key[len("retained:"):]: value / 1000 for key, value in
                                    db.execute("SELECT key, value FROM meta WHERE key LIKE "
                                               "'retained:%'")}
        for topic, created in db.execute("SELECT topic, MAX(created) FROM messages WHERE "
                                         "retain = 1 GROUP BY topic"):
            newest[topic] = max(created, newest.get(topic, created))
        stale, last = [], {}
        rows = db.execute(f"SELECT id, topic, created FROM refused {where} "
                          f"{'AND' if where else 'WHERE'} retain = 1 ORDER BY id DESC", args)
        for row_id, topic, created in rows:          # newest first
            if topic in last or created < newest.get(topic, float("-inf")):
                stale.append(row_id)
            last[topic] = row_id
        return stale

    def close(self) -> None:
        """A clean stop: the held scores are written (on a full disk, what fits), the last
        seq stored, then the database closed."""
        with self._lock:
            try:
                if self._held:
                    self._write(self._take_held(None))
                elif self._seq_seen > self._meta("last_seq"):
                    self._db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = "
                                     "'last_seq'", (self._seq_seen,))
            except sqlite3.Error as exc:
                _log.warning(f"{self.path}: {len(self._held)} unacknowledged score(s) could "
                             f"not be written at the stop ({exc}); they are lost")
            finally:
                self._held.clear()
                self._db.close()
