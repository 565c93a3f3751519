"""The durable outbox: every score, event and anomaly-state message waits here, on disk,
until the broker acknowledges it (PUBACK). SQLite in WAL mode with synchronous=FULL, so
a message the agent has handed over survives a restart or a power cut; delivery follows
the insertion order.

The outbox also owns ``seq``: the next sequence number is stored with the message that
used the previous one, in one transaction, so ``seq`` increases strictly across restarts.

Bounded: beyond ``max_messages`` the oldest *score* messages are evicted first (events
and anomaly-state messages are what an operator acts on, and are kept while any score is
left to drop); every eviction is counted and reported in the stats record.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


class Outbox:
    def __init__(self, path: Path, max_messages: int = 100_000) -> None:
        if max_messages < 10:
            raise ValueError(f"outbox max_messages must be at least 10, got {max_messages}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_messages = path, max_messages
        self._lock = threading.Lock()          # paho's thread acks, the main thread puts
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            if not os.access(path.parent, os.W_OK) or (path.exists()
                                                       and not os.access(path, os.W_OK)):
                raise OSError(f"{path}: cannot open the outbox: this user may not write "
                              f"{'it' if path.exists() else 'its folder'} (check the "
                              f"permissions of agent.state_dir)") from None
            raise OSError(f"{path}: cannot open the outbox ({exc}); move it aside to start "
                          f"a new one") from None

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("last_seq")

    @property
    def evicted(self) -> int:
        with self._lock:
            return self._meta("evicted")

    @property
    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            kind: str = "score", seq: int | None = None) -> int:
        """Store one message (and the seq it used) durably; returns its id."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute("INSERT INTO messages (topic, payload, qos, retain, kind, "
                                 "created) VALUES (?, ?, ?, ?, ?, ?)",
                                 (topic, payload, qos, int(retain), kind, time.time()))
                if seq is not None:
                    db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'last_seq'",
                               (seq,))
                self._evict(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid)

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
            rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM messages "
                                    "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
            return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has it: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
