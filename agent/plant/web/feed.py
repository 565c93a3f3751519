"""What the web page is sent: the whole fleet once, then what changed, once a second.

The fleet is read under the watcher's lock, once per tick, whatever the number of open
pages: each tick makes one ``delta`` message (the rows whose ``version`` moved, each with
the fields that changed and the chart buckets from the last one sent on; the keys of the
rows forgotten), encoded once, outside the lock, and handed to every page. A page that
connects gets a ``snapshot`` (every row, its whole hour) made under the same lock, so no
change falls between the two.

Every text that came from the broker goes out as a JSON string made safe by
``text.safe`` (controls and format characters replaced, length cut); the page only ever
puts it in the DOM as text (agent/plant/web/static/app.js). JSON is written ASCII-only, so
no character of a name can end an event-stream line.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Callable

from harken.agent.plant.fleet import MAX_NAME
from harken.agent.plant.state import machine_state
from harken.agent.plant.text import safe

NAME_SHOWN = MAX_NAME                # characters of a node or machine name sent: all it keeps
NO_POINTS: dict[str, list] = {"t": [], "score": [], "threshold": [], "flags": []}


def row_id(key: tuple[str, str]) -> str:
    """A row's identity on the page: unambiguous for any two names (length-prefixed)."""
    node, machine = key
    return f"{len(node)}:{node}/{machine}"


def _level(style: str) -> str:
    """The terminal view's style of a banner line as the page's level."""
    return "error" if "red" in style else "warn" if "yellow" in style else "info"


def _finite(x: float | None, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """``x`` to 6 significant digits, None when absent, not finite or outside [lo, hi]."""
    if x is None or not math.isfinite(x) or not lo <= x <= hi:
        return None
    return float(f"{x:.6g}")


def row_message(key: tuple[str, str], row, now: float, since: float = -math.inf) -> dict:
    """One row as the page reads it (docs/watch.md "The web page")."""
    seen = None if math.isnan(row.last_seen) else round(row.last_seen, 3)
    return {
        "id": row_id(key), "node": safe(row.node, NAME_SHOWN), "machine": safe(row.machine, NAME_SHOWN),
        "state": machine_state(row, now), "score": _finite(row.score),
        "threshold": _finite(row.threshold), "anomaly": safe(row.anomaly, 16),
        "audio": "lost" if row.lost else safe(row.audio, 16),
        "level_dbfs": _finite(row.rms_dbfs, -400.0, 20.0),
        "status": None if row.status is None else safe(row.status, 16),
        "maintenance": row.maintenance, "model": None if row.model is None else safe(row.model, 64),
        "backend": None if row.backend is None else safe(row.backend, 32),
        "seq": None if row.seq is None else str(row.seq),   # text: a JS number holds 2^53
        "last_seen": seen, "heard": round(row.heard, 3), "clock_unsynced": row.clock_unsynced,
        "interval_s": _finite(row.interval_s),
        "points": NO_POINTS if row.history is None else row.history.points(since, now),
    }


class Feed:
    """The fleet's messages for the open pages: ``subscribe`` gives a page its snapshot
    and a queue of deltas, ``tick`` makes one delta and hands it to every page.

    A delta carries, per changed row, only the fields that changed since the last delta
    (``id`` always): a machine scoring every second changes its score, seq and times, not its
    names, model or state, and the page keeps the rest. A page that subscribes while others
    are open got a snapshot newer than the last delta, so the next delta sends every row
    changed since then whole. With no page open nothing is made."""

    def __init__(self, fleet, lock: threading.Lock,
                 banner: Callable[[], list[tuple[str, str]]],
                 window_s: float) -> None:
        self.fleet, self.lock, self.banner, self.window_s = fleet, lock, banner, window_s
        self.version = 0                              # the fleet version the last delta reached
        self.sent: dict[tuple[str, str], float] = {}  # key: start of the newest bucket sent
        self.last: dict[tuple[str, str], dict] = {}   # key: its fields as the pages have them
        self.rows: dict[tuple[str, str], object] = {} # key: the Row object the pages have
        self.whole = False                            # next delta: changed rows whole
        self.ticks = 0
        self._snap: tuple | None = None               # (ticks, version, keys, msg, data)
        self._snap_lock = threading.Lock()
        self.pages: list[Callable[[bytes], bool]] = []
        self._pages_lock = threading.Lock()

    def _header(self, kind: str, now: float) -> dict:
        f = self.fleet
        return {"type": kind, "now": round(now, 3), "prefix": safe(f.prefix, 128),
                "window_s": self.window_s, "malformed": f.malformed, "forgotten": f.forgotten,
                "pruned": f.pruned, "stale_deaths": f.stale_deaths, "max_machines": f.max_agents,
                "banner": [{"text": safe(line, 300), "level": _level(style)}
                           for line, style in self.banner()]}

    def snapshot(self, now: float | None = None) -> dict:
        """The whole fleet, every row with its hour; called with ``self.lock`` held."""
        now = time.time() if now is None else now
        msg = self._header("snapshot", now)
        msg["rows"] = [row_message(k, r, now) for k, r in self.fleet.agents.items()]
        return msg

    def subscribe(self, send: Callable[[bytes], bool]) -> bytes:
        """Register a page (``send`` queues one encoded message, False when the page is too
        slow and is dropped); its snapshot, encoded outside the fleet's lock. Pages that
        open within one tick share one snapshot, made and encoded once: thirty-two pages
        reconnecting at once after a network blip must not hold the lock thirty-two times
        (the messages, the terminal and every open page would stop for as long)."""
        with self._snap_lock:
            with self.lock, self._pages_lock:
                cached = self._snap
                if cached is not None and cached[0] == self.ticks and \
                        (self.pages or cached[1] == self.fleet.version):
                    keys, msg, data = cached[2], cached[3], cached[4]
                else:
                    keys, msg, data = list(self.fleet.agents), self.snapshot(), None
                ticks, version = self.ticks, self.fleet.version
                if not self.pages:         # the first page: the snapshot is the baseline
                    self.last = {key: _fields(row) for key, row in zip(keys, msg["rows"])}
                    self.sent = {key: row["points"]["t"][-1] for key, row in zip(keys, msg["rows"])
                                 if row["points"]["t"]}
                    self.rows = {key: self.fleet.agents.get(key) for key in keys}
                    self.version, self.whole = self.fleet.version, False
                    for row in self.fleet.agents.values():
                        if row.history is not None:
                            row.history.changed = math.inf
                else:
                    self.whole = True
                self.pages.append(send)
            if data is None:
                data = encode(msg)
                self._snap = (ticks, version, keys, msg, data)
        return data

    def unsubscribe(self, send: Callable[[bytes], bool]) -> None:
        with self._pages_lock:
            if send in self.pages:
                self.pages.remove(send)

    def delta(self, now: float | None = None) -> dict:
        """What changed since the last delta: rows whose version moved or whose state the
        clock changed (``stale``), each with the fields that changed; called with
        ``self.lock`` held."""
        now = time.time() if now is None else now
        msg = self._header("delta", now)
        rows, agents = [], self.fleet.agents
        for key, row in agents.items():
            before = self.last.get(key)
            if self.rows.get(key) is not row:   # new, or forgotten and back within a tick
                before = None
                self.sent.pop(key, None)
                self.rows[key] = row
            elif row.version <= self.version and before is not None and \
                    before["state"] == machine_state(row, now):
                continue
            since = self.sent.get(key, -math.inf)
            if row.history is not None:        # a late score lands in an older bucket
                since = min(since, row.history.changed)
                row.history.changed = math.inf
            full = row_message(key, row, now, since)
            fields = _fields(full)
            if before is None or self.whole:
                full["reset"] = before is None     # the page drops what it drew for this key
                rows.append(full)
            else:
                changed = {k: v for k, v in fields.items() if before.get(k) != v}
                changed["id"] = full["id"]
                changed["points"] = full["points"]
                rows.append(changed)
            self.last[key] = fields
            if full["points"]["t"]:
                self.sent[key] = full["points"]["t"][-1]
        gone = [k for k in self.last if k not in agents]
        for k in gone:
            del self.last[k]
            self.sent.pop(k, None)
            self.rows.pop(k, None)
        msg["rows"], msg["gone"] = rows, [row_id(k) for k in gone]
        self.version, self.whole = self.fleet.version, False
        return msg

    def tick(self, now: float | None = None) -> int:
        """One delta to every page (none made when no page is open); how many took it."""
        with self.lock, self._pages_lock:
            self.ticks += 1                   # a snapshot made before this is no one's to share
            if not self.pages:
                return 0
            msg = self.delta(now)
            pages = list(self.pages)
        data = encode(msg)
        taken = 0
        for send in pages:
            if send(data):
                taken += 1
            else:
                self.unsubscribe(send)
        return taken


def _fields(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "points"}


def encode(msg: dict) -> bytes:
    """One server-sent event: a single ``data:`` line of ASCII JSON."""
    return b"data: " + json.dumps(msg, allow_nan=False, separators=(",", ":")).encode() + b"\n\n"
