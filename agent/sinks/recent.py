"""The feedback store: per machine, the recent report intervals with what feedback needs of
them, in ``agent.state_dir/recent-<machine>/`` (docs/agent.md "The feedback store").

An operator who marks an alarm normal names intervals that scored minutes or hours ago;
their bank statistics (the raw vectors a bank rule scores: agent/model/rules/base.py
``BankRule``) must still be there. So this sink keeps, per interval, one fixed-size record:
seq, time, score (NaN when not scored), threshold, flags (anomaly, maintenance, event start
and end, statistics present, the health status), then the statistics as float32 in a
layout written once at the head of each segment file. A rule without a bank (mse, a fused
bundle) stores the record without statistics: recalibrating from the store uses its scores.

Files: one segment per UTC hour (a new one also when the layout or model changes), named
``<YYYYmmddTHH>-<first seq>.seg``. Each interval is one ``os.write`` of one record on an
O_APPEND descriptor, never synced: an SD card wears with every sync, and losing the last
half minute of the store at a power cut costs only the chance to give feedback on it (the
wear bench measures the bytes). A record torn by a kill is shorter than the record size and
is skipped when read. Segments older than ``keep_hours`` are deleted when a segment is
opened (once an hour), and the oldest go when the folder passes ``max_mb``.

A failing disk never stops the agent: the failure is said (``failure``) and the next
interval tries again in a new segment.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harken.agent.decision.records import IntervalResult
from harken.agent.sinks.base import Sink, SinkSettings, register
from harken.common.errors import DataError
from harken.common.settings import Number

MAGIC = b"HKRECENT"
STORE_VERSION = 1
SUFFIX = ".seg"
ANOMALY, MAINTENANCE, START, END, STATS = 1, 2, 4, 8, 16
# the first interval a run stored: an event open before it ended with that run (a stop, a
# kill), whatever its seqs say (a restart resumes the seqs with no gap: agent/seqstore.py)
FIRST = 32
STATUSES = ("ok", "silent", "dropout", "clipped", "invalid")
log = logging.getLogger(__name__)


class FeedbackSection(SinkSettings):
    """``[feedback]``: how long the feedback store keeps intervals, and its size cap."""
    keep_hours: Number(0, 24 * 31, "hours") = 24.0     # 0: no store (no feedback)
    max_mb: Number(1, 100_000, "MB") = 64.0


def store_folder(state_dir: Path, machine: str) -> Path:
    return Path(state_dir) / f"recent-{machine}"


def record_dtype(layout: list[tuple[str, int]]) -> np.dtype:
    """One record: the fixed part, then each statistics vector of ``layout`` as float32."""
    fields = [("seq", "<i8"), ("ts", "<f8"), ("score", "<f8"), ("threshold", "<f8"),
              ("flags", "<u4")]
    fields += [(f"s_{name}", "<f4", (width,)) for name, width in layout]
    return np.dtype(fields)


def flags_of(result: IntervalResult) -> int:
    f = (ANOMALY if result.anomaly else 0) | (MAINTENANCE if result.maintenance else 0)
    if result.event is not None:
        f |= START if result.event.type == "start" else END
    if result.statistics is not None:
        f |= STATS
    code = STATUSES.index(result.status) if result.status in STATUSES else 255
    return f | (code << 8)


class SegmentWriter:
    """The open segment: its descriptor, layout and record type."""

    def __init__(self, path: Path, model: str, interval_s: float,
                 layout: list[tuple[str, int]]) -> None:
        self.path, self.model, self.layout = path, model, layout
        self.dtype = record_dtype(layout)
        head = json.dumps({"version": STORE_VERSION, "model": model, "interval_s": interval_s,
                           "layout": layout}).encode()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if os.fstat(self.fd).st_size == 0:
            os.write(self.fd, MAGIC + len(head).to_bytes(4, "little") + head)
        self.size = os.fstat(self.fd).st_size

    def write(self, record: np.ndarray) -> int:
        data = record.tobytes()
        os.write(self.fd, data)              # one write per interval, no fsync (wear)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class RecentStore:
    """The store of one machine's folder: the writing side (``add``) and pruning."""

    def __init__(self, folder: Path, keep_hours: float, max_mb: float,
                 clock=time.time) -> None:
        self.folder, self.keep_s = Path(folder), keep_hours * 3600.0
        self.max_bytes = int(max_mb * 1e6)
        self.clock = clock
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment: SegmentWriter | None = None
        self.hour: str | None = None
        self.written = 0                     # bytes this process wrote (the wear bench)
        self.first = True                    # the next record is this run's first (FIRST)
        self.prune()

    def add(self, result: IntervalResult) -> None:
        stats = result.statistics
        layout = [(k, int(np.asarray(v).size)) for k, v in stats.items()] if stats else []
        hour = time.strftime("%Y%m%dT%H", time.gmtime(result.ts))
        s = self.segment
        if (s is None or hour != self.hour or s.model != result.model
                or (layout and layout != s.layout) or s.size > self.max_bytes // 2):
            self._open(hour, result, layout)
        s = self.segment
        rec = np.zeros((), s.dtype)
        rec["seq"], rec["ts"] = result.seq, result.ts
        rec["score"] = np.nan if result.score is None else result.score
        rec["threshold"] = result.threshold
        rec["flags"] = flags_of(result) | (FIRST if self.first else 0)
        if stats:
            for name, _ in s.layout:
                rec[f"s_{name}"] = np.asarray(stats[name], dtype=np.float32).reshape(-1)
        self.written += s.write(rec)
        self.first = False

    def _open(self, hour: str, result: IntervalResult, layout: list[tuple[str, int]]) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None
        path = self.folder / f"{hour}-{result.seq:012d}{SUFFIX}"
        self.segment = SegmentWriter(path, result.model, result.interval_s, layout)
        self.hour = hour
        self.prune()

    def prune(self) -> None:
        """Segments past ``keep_hours`` (by their last possible record: the end of their
        hour), then the oldest while the folder holds more than ``max_mb``."""
        segs = segments(self.folder)
        now = self.clock()
        current = self.segment.path if self.segment is not None else None
        kept = []
        for p in segs:
            try:
                end = calendar.timegm(time.strptime(p.name[:11], "%Y%m%dT%H")) + 3600
            except ValueError:
                end = now
            if p != current and end < now - self.keep_s:
                p.unlink(missing_ok=True)
            else:
                kept.append(p)
        sizes = [(p, p.stat().st_size) for p in kept if p.exists()]
        total = sum(s for _, s in sizes)
        for p, size in sizes:
            if total <= self.max_bytes:
                break
            if p != current:
                p.unlink(missing_ok=True)
                total -= size

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None


class StoreError(DataError):
    """The feedback store's folder cannot be read: the one-line reason."""


def segments(folder: Path) -> list[Path]:
    """The segment files, oldest first (by hour, then first seq); a file where the folder
    should be is said plainly (not "cannot write": reading it is what failed)."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise StoreError(f"{folder}: not a folder (the feedback store is kept in a folder "
                         f"there); move the file away") from None
    except OSError as exc:
        raise StoreError(f"{folder}: the feedback store cannot be read "
                         f"({exc.strerror or exc})") from None


@dataclass
class Segment:
    path: Path
    model: str
    interval_s: float
    layout: list[tuple[str, int]]
    records: np.ndarray


def read_segment(path: Path) -> Segment | None:
    """A segment's header and whole records (a torn last record skipped); None for a file
    that is not a whole segment header (torn at its first write, or not ours)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw[:len(MAGIC)] != MAGIC or len(raw) < len(MAGIC) + 4:
        return None
    n = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4 + n
    try:
        head = json.loads(raw[len(MAGIC) + 4:start].decode())
        layout = [(str(k), int(w)) for k, w in head["layout"]]
        model, interval_s = str(head["model"]), float(head["interval_s"])
        if head.get("version") != STORE_VERSION or len(raw) < start:
            return None
        dtype = record_dtype(layout)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    count = (len(raw) - start) // dtype.itemsize
    records = np.frombuffer(raw, dtype, count=count, offset=start)
    return Segment(path, model, interval_s, layout, records)


@dataclass
class Stored:
    """The intervals a store holds (of one model), in time order: the scalar fields as
    arrays, and per interval its statistics if kept. An interval is (seq, ts): seqs start
    again at 1 where their files were lost (agent/seqstore.py)."""
    seq: np.ndarray
    ts: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    flags: np.ndarray
    statistics: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    models: set[str] = field(default_factory=set)      # every model found, this one or not
    unreadable: list[str] = field(default_factory=list)   # segment files that could not be read

    def warning(self) -> str | None:
        """One line naming the segments that could not be read (None: all were read): the
        intervals they held are missing from what is listed, fed back or fitted on."""
        if not self.unreadable:
            return None
        names = ", ".join(self.unreadable[:5]) + (f" and {len(self.unreadable) - 5} more"
                                                  if len(self.unreadable) > 5 else "")
        return (f"{len(self.unreadable)} feedback store segment(s) could not be read "
                f"(damaged, or not a segment): {names}; their intervals are left out")

    def __len__(self) -> int:
        return len(self.seq)

    def has(self, flag: int) -> np.ndarray:
        return (self.flags & flag) != 0

    def status(self) -> list[str]:
        return [STATUSES[c] if c < len(STATUSES) else "other" for c in (self.flags >> 8) & 255]


def read_store(folder: Path, model: str | None = None,
               interval_s: float | None = None) -> Stored:
    """Every whole record of the store (of ``model`` and intervals of ``interval_s`` if
    given: statistics of another model or interval length do not mix), in time order (then
    seq); an interval is its (seq, ts), so seqs that started again after their files were
    lost do not replace older intervals; a record written twice keeps the last copy."""
    parts, models, unreadable = [], set(), []
    for p in segments(folder):
        seg = read_segment(p)
        if seg is None:
            unreadable.append(str(p))
            continue
        models.add(seg.model)
        if model is not None and seg.model != model or \
                interval_s is not None and abs(seg.interval_s - interval_s) > 1e-9 * interval_s:
            continue
        parts.append(seg)
    by_key: dict[tuple[float, int], tuple[Segment, int]] = {}
    for seg in parts:
        for i, (s, t) in enumerate(zip(seg.records["seq"], seg.records["ts"])):
            by_key[(float(t), int(s))] = (seg, i)
    order = sorted(by_key)
    rows = [by_key[k] for k in order]

    def col(name: str, dtype) -> np.ndarray:
        return np.array([seg.records[name][i] for seg, i in rows], dtype=dtype)
    stats: list[dict[str, np.ndarray] | None] = []
    for seg, i in rows:
        r = seg.records[i]
        stats.append({name: np.asarray(r[f"s_{name}"], dtype=np.float32) for name, _ in
                      seg.layout} if (int(r["flags"]) & STATS) and seg.layout else None)
    return Stored(np.array([s for _, s in order], dtype=np.int64), col("ts", np.float64),
                  col("score", np.float64), col("threshold", np.float64),
                  col("flags", np.uint32), stats, models, unreadable)


@register
class FeedbackStoreSink(Sink):
    """The feedback store as a sink: every interval, one record (module docstring)."""
    name = "feedback-store"
    table = "feedback"
    Settings = FeedbackSection
    wants_statistics = True

    def __init__(self, store: RecentStore | None, folder: Path | None = None,
                 keep_hours: float = 24.0, max_mb: float = 64.0) -> None:
        self.store = store
        self.folder = store.folder if store is not None else Path(folder)
        self.keep_hours, self.max_mb = keep_hours, max_mb
        self._failed: str | None = None
        self.errors = 0

    @classmethod
    def enabled(cls, config) -> bool:
        return config.feedback.keep_hours > 0

    @classmethod
    def from_config(cls, config) -> FeedbackStoreSink:
        """The sink; a store that cannot be opened (a file in the folder's place, a failing
        disk) fails the sink, said once, and scoring goes on: the store is there for
        feedback, never a reason for a node not to start (docs/agent.md "The feedback
        store"). It tries again at each interval."""
        state = config.writable_folder("agent.state_dir", config.agent.state_dir)
        f = config.feedback
        sink = cls(None, store_folder(state, config.agent.machine), f.keep_hours, f.max_mb)
        sink._open()
        return sink

    def _open(self) -> bool:
        if self.store is not None:
            return True
        try:
            self.store = RecentStore(self.folder, self.keep_hours, self.max_mb)
            return True
        except OSError as exc:
            self._fail("cannot be opened" + (" (not a folder: a file is in its place)"
                                             if self.folder.exists() and not self.folder.is_dir()
                                             else f" ({exc.strerror or exc})"))
            return False

    def _fail(self, why: str) -> None:
        self.errors += 1
        if self._failed is None:
            log.warning(f"WARNING: {self.folder}: the feedback store {why}; scoring goes on "
                        f"without it, and it tries again at the next interval")
        self._failed = f"{self.folder}: {why}"

    def interval(self, result: IntervalResult) -> None:
        if not self._open():
            return
        try:
            self.store.add(result)
            self._failed = None
        except OSError as exc:             # a full or failing disk: said, never raised
            self._fail(f"cannot write ({exc.strerror or exc})")
            self.store.close()

    @property
    def failure(self) -> str | None:
        return self._failed

    def close(self, flush_s: float = 5.0) -> None:
        if self.store is not None:
            self.store.close()
