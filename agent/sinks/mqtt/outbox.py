"""The durable outbox: every score, event and anomaly-state message waits here, on disk,
until the broker acknowledges it (PUBACK). SQLite in WAL mode with synchronous=FULL, so
a message the agent has handed over survives a restart or a power cut; delivery follows
the insertion order.

The outbox also owns ``seq``: the next sequence number is stored with the message that
used the previous one, in one transaction, so ``seq`` increases strictly across restarts.

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
from dataclasses import dataclass
from pathlib import Path

from harken.common.errors import EnvironmentFailure

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
    created: float                # time.time() when it was stored


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


# SQLITE_CORRUPT, SQLITE_NOTADB: a file that is no (longer a) database, set aside at open
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_log = logging.getLogger(__name__)


class Outbox:
    reserve_bytes = 256 * 1024       # the log (<= 128 KiB), its index (32 KiB) and room to work

    def __init__(self, path: Path, max_messages: int = 100_000) -> None:
        if max_messages < 10:
            raise ValueError(f"outbox max_messages must be at least 10, got {max_messages}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_messages = path, max_messages
        self._lock = threading.Lock()          # paho's thread acks, the main thread puts
        self.disk_full = False
        self._full_pages = 0                   # the database's size when the disk filled
        self._dropped = 0                      # evictions the full disk kept from meta
        self._unsaved_seq = 0                  # a dropped message's seq (kept in memory)
        self.stale_dropped = 0                 # old retained messages the last resend dropped
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
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
        while aside.exists():                  # never over an earlier one: nothing is deleted
            n += 1
            aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
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
            return max(self._meta("last_seq"), self._unsaved_seq)

    @property
    def evicted(self) -> int:
        with self._lock:
            return self._meta("evicted") + self._dropped

    @property
    def depth(self) -> int:
        with self._lock:
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
            kind: str = "score", seq: int | None = None) -> int:
        """Store one message (and the seq it used) durably; returns its id, or -1 when a
        full disk left no room even after evicting old scores (the message is counted as
        evicted)."""
        row = (topic, payload, qos, int(retain), kind, time.time())
        with self._lock:
            if self._free_bytes() < self.reserve_bytes:
                return self._insert_on_full_disk(row, seq)
            try:
                row_id = self._insert(row, seq)
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                row_id = self._insert_on_full_disk(row, seq)
            else:
                # the disk counts as full until the outbox has grown past the size it had
                # when it filled (rows fitting into pages evictions freed prove nothing)
                if self.disk_full and self._pages() > self._full_pages:
                    self.disk_full = False
            return row_id

    def _free_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _pages(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _insert(self, row: tuple, seq: int | None) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute("INSERT INTO messages (topic, payload, qos, retain, kind, "
                             "created) VALUES (?, ?, ?, ?, ?, ?)", row)
            # a seq a dropped message used is stored with the next message that gets in
            top = max(seq or 0, self._unsaved_seq)
            if top:
                db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'last_seq'",
                           (top,))
            if self._dropped:                 # room again: record the earlier drops for good
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'",
                           (self._dropped,))
            self._evict(db)
            db.execute("COMMIT")
            self._dropped = 0
        except BaseException:
            if db.in_transaction:             # SQLite may have rolled back by itself
                db.execute("ROLLBACK")
            raise
        return int(cur.lastrowid)

    def _insert_on_full_disk(self, row: tuple, seq: int | None) -> int:
        """Evict ever more of the oldest scores until the message fits; if nothing frees
        enough, drop the message itself (counted) and keep ``seq`` in memory only."""
        if not self.disk_full:
            self.disk_full, self._full_pages = True, self._pages()
        for share in (0.01, 0.1, 0.5, 1.0):
            try:
                # old scores out, the log folded into the database (the new message goes
                # into the pages they freed) and truncated
                self._evict_oldest_scores(share)
                self._checkpoint()
                return self._insert(row, seq)
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
        self._dropped += 1
        if seq is not None:
            self._unsaved_seq = max(self._unsaved_seq, seq)
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
        """Oldest undelivered messages with id > ``after_id``, in order."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind, created "
                                    "FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit))
            return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6])
                    for r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has it: forget it. On a full disk the row stays and is sent again
        later (the same seq: subscribers de-duplicate); paho's thread must not die of it."""
        with self._lock:
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
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    moved = db.execute(
                        "INSERT INTO refused (topic, payload, qos, retain, kind, created, "
                        "reason, refused) SELECT topic, payload, qos, retain, kind, created, "
                        "?, ? FROM messages WHERE id = ?",
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
                n = db.execute(f"INSERT INTO messages (topic, payload, qos, retain, kind, "
                               f"created) SELECT topic, payload, qos, retain, kind, created "
                               f"FROM refused {where} ORDER BY id", args).rowcount
                db.execute(f"DELETE FROM refused {where}", args)
                self._evict(db)
                db.execute("COMMIT")
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
        with self._lock:
            self._db.close()
