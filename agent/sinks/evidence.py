"""Evidence audio (docs/agent.md "Hearing the alarm (evidence audio)"): opt-in, the audio
around each anomaly start event kept as a WAV in the machine's state folder, so that a fitter
can listen to what the detector heard.

Plant microphones hear people, so this sink is the only place where raw audio is written,
and only when ``[evidence] enabled = true``: the pipeline keeps an interval's samples on its
result only because this sink asks (``wants_audio``), no other sink writes or publishes them,
and what is kept is bounded by a number of events and a byte cap, what is written by a daily
byte cap, and never leaves the state folder. A config that turns evidence off again has the
kept evidence deleted at the agent's next start.

Per machine M the folder ``agent.state_dir/evidence-M/`` holds ``SEQ.wav`` (16-bit mono PCM
at the bundle's rate: ``before_s`` of audio before the start interval, the start interval,
``after_s`` after it) and ``SEQ.json`` beside it (seq, ts, score, threshold, model, rate and
where in the file the start interval begins). Each file is written whole
(harken.common.atomic); the JSON comes last, so a WAV without one is a write that was cut
short and is removed at the next start. A failing disk is the sink's ``failure`` (the runner
tells the other sinks); scoring goes on and the next event is tried again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import StrictBool

from harken.agent.decision.records import IntervalResult
from harken.agent.sinks.base import Sink, SinkSettings, register
from harken.common.atomic import atomic_file, write_atomic
from harken.common.errors import UsageError
from harken.common.settings import Count, Number, Seconds

_log = logging.getLogger(__name__)

MB = 1_000_000
_KEPT = re.compile(r"^(\d{1,19})\.(wav|json)$")


class EvidenceSection(SinkSettings):
    """``[evidence]``: off by default; how much audio around each anomaly start is kept."""
    enabled: StrictBool = False            # a TOML true or false, never text: it records people
    before_s: Seconds(0, 300) = 30.0       # audio kept before the interval that starts an event
    after_s: Seconds(0, 300) = 30.0        # and after it
    events: Count(1, 10_000, "events") = 20            # the last this many events are kept
    max_mb: Number(1, 100_000, "MB") = 50.0            # over all of the machine's evidence
    # written in any 24 h (an SD card wears: docs/benchmarks.md "Wear"); a flapping alarm
    # would otherwise write an event a minute
    max_mb_per_day: Number(1, 100_000, "MB") = 20.0


def evidence_folder(config) -> Path:
    """Where machine ``config.agent.machine`` keeps its evidence (not created here)."""
    return config.path(config.agent.state_dir) / f"evidence-{config.agent.machine}"


@dataclass
class Kept:
    """One kept event: its WAV, its JSON (what the detector said) and their bytes."""
    seq: int
    wav: Path
    meta: Path
    bytes: int


def kept(folder: Path) -> list[Kept]:
    """The complete events in ``folder`` (a WAV with its JSON), oldest (lowest seq) first;
    none where the folder does not exist (any other OSError is raised: a file in its place)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _KEPT.match(name)
        if m is None or m.group(2) != "json" or f"{m.group(1)}.wav" not in names:
            continue
        wav, meta = folder / f"{m.group(1)}.wav", folder / name
        try:
            size = wav.stat().st_size + meta.stat().st_size
        except FileNotFoundError:          # pruned by a running agent meanwhile
            continue
        out.append(Kept(int(m.group(1)), wav, meta, size))
    return sorted(out, key=lambda k: k.seq)


@dataclass
class _Capture:
    """An event whose after-part is still arriving."""
    meta: dict
    chunks: list[np.ndarray]
    need: int                        # samples of the after-part still to come


@register
class EvidenceSink(Sink):
    """Keeps the last intervals' audio in memory (``before_s`` worth) and, on an anomaly start
    event, writes it, the start interval and the next ``after_s`` as one WAV."""
    name = "evidence"
    table = "evidence"
    Settings = EvidenceSection
    wants_audio = True

    @classmethod
    def enabled(cls, config) -> bool:
        # also when off but evidence is left from before: it is deleted (module docstring)
        return config.evidence.enabled or evidence_folder(config).exists()

    @classmethod
    def from_config(cls, config) -> EvidenceSink:
        folder = evidence_folder(config)
        if not config.evidence.enabled:
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists() and not folder.is_dir():
                _log.warning(f"{folder} is not a folder (evidence is off): left alone")
            elif folder.exists():
                _log.warning(f"evidence is off but {folder} could not be deleted: delete it by "
                             f"hand (it holds recorded audio)")
            return cls(folder, config.evidence, config.decision.interval_s, on=False)
        config.writable_folder("agent.state_dir", config.agent.state_dir)
        why = None
        if folder.exists() and not folder.is_dir():    # a plain file (or a link to one)
            why = "not a folder (a file is in its place: move it away)"
        else:
            try:
                folder.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                why = f"cannot create it ({exc.strerror or exc})"
        if why is None:
            return cls(folder, config.evidence, config.decision.interval_s)
        # damaged state never stops a node (docs/agent.md "Hearing the alarm"): the sink's
        # failure, said once; scoring goes on, and each event tries the folder again
        _log.warning(f"evidence {folder}: {why}; no evidence is kept until it can be, scoring "
                     f"goes on")
        sink = cls(folder, config.evidence, config.decision.interval_s, tidy=False)
        sink._failed = f"evidence {folder}: {why}"
        return sink

    def __init__(self, folder: Path, settings: EvidenceSection, interval_s: float,
                 on: bool = True, rate: int | None = None, tidy: bool = True) -> None:
        self.folder, self.settings, self.on = Path(folder), settings, on
        if not on:
            self.wants_audio = False     # the pipeline keeps no audio for this machine
        if rate is not None:
            self.audio_rate = rate
        # whole intervals kept in memory: enough to cover before_s (trimmed when written)
        self._ring: deque[np.ndarray] = deque(maxlen=max(1, math.ceil(settings.before_s
                                                                      / interval_s)))
        self._pending: list[_Capture] = []
        self._failed: str | None = None
        self.written = 0
        self.errors = 0
        self.skipped = 0                 # events not kept: the day's bytes were spent
        self._day: deque[tuple[float, int]] = deque()     # (wall time, bytes) of writes
        self.clock = time.time
        if on and tidy:
            try:
                self._tidy()
            except OSError as exc:        # a read-only folder: said, the run goes on
                _log.warning(f"evidence {self.folder}: cannot tidy it ({exc.strerror or exc})")

    @property
    def rate(self) -> int:
        return self.audio_rate or 16000       # the feature spec's default until told

    def _tidy(self) -> None:
        """Remove what a write cut short (a WAV without its JSON, temporary files), then
        prune to the bounds (they may have been lowered since)."""
        try:
            names = set(os.listdir(self.folder))
        except OSError:
            return
        for name in names:
            m = _KEPT.match(name)
            stale = name.startswith(".") and name.endswith(".tmp")
            if stale or (m and m.group(2) == "wav" and f"{m.group(1)}.json" not in names):
                (self.folder / name).unlink(missing_ok=True)
        self._prune()
        for k in kept(self.folder):      # what the last 24 h wrote counts after a restart
            try:
                self._day.append((k.meta.stat().st_mtime, k.bytes))
            except OSError:
                pass
        self._day = deque(sorted(self._day))

    def _prune(self, keep: int | None = None) -> None:
        """Oldest first, until at most ``events`` remain within ``max_mb``; ``keep`` (the
        event just written) stays even if it alone is over the cap."""
        events = kept(self.folder)
        total = sum(k.bytes for k in events)
        cap = self.settings.max_mb * MB
        while events and (len(events) > self.settings.events or total > cap):
            if events[0].seq == keep:
                break
            old = events.pop(0)
            old.meta.unlink(missing_ok=True)         # the JSON first: a WAV alone is swept
            old.wav.unlink(missing_ok=True)
            total -= old.bytes

    def interval(self, result: IntervalResult) -> None:
        if not self.on or result.audio is None:
            return
        audio = result.audio
        for cap in list(self._pending):
            if cap.need > 0:
                take = audio[:cap.need]
                cap.chunks.append(take)
                cap.need -= len(take)
            if cap.need <= 0:
                self._pending.remove(cap)
                self._write(cap)
        if result.event is not None and result.event.type == "start":
            before = np.concatenate(list(self._ring)) if self._ring else np.zeros(0, np.int16)
            before = before[max(0, len(before) - round(self.settings.before_s * self.rate)):]
            meta = {"seq": result.seq, "ts": round(result.ts, 3), "score": result.score,
                    "threshold": result.threshold, "model": result.model, "rate": self.rate,
                    "event_offset_s": round(len(before) / self.rate, 3),
                    "interval_s": result.interval_s}
            cap = _Capture(meta, [before, audio], round(self.settings.after_s * self.rate))
            if cap.need <= 0:
                self._write(cap)
            else:
                self._pending.append(cap)
        self._ring.append(audio)

    def _write(self, cap: _Capture) -> None:
        """One event's WAV, then its JSON, each whole; a failure is said, not raised."""
        pcm = np.concatenate(cap.chunks).astype("<i2")
        seq = cap.meta["seq"]
        now = self.clock()
        while self._day and self._day[0][0] < now - 86400:
            self._day.popleft()
        size = 44 + 2 * len(pcm)
        if sum(b for _, b in self._day) + size > self.settings.max_mb_per_day * MB:
            if not self.skipped:
                _log.warning(f"evidence {self.folder}: event {seq} not kept, the last 24 h "
                             f"wrote [evidence] max_mb_per_day already (said once)")
            self.skipped += 1
            return
        self._day.append((now, size))
        meta = {**cap.meta, "seconds": round(len(pcm) / self.rate, 3)}
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            with atomic_file(self.folder / f"{seq}.wav") as f:
                with wave.open(f, "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(self.rate)
                    w.writeframes(pcm.tobytes())
            write_atomic(self.folder / f"{seq}.json", json.dumps(meta, indent=1) + "\n")
        except OSError as exc:
            self.errors += 1
            try:
                (self.folder / f"{seq}.wav").unlink(missing_ok=True)
            except OSError:
                pass
            why = f"evidence {self.folder}: cannot write event {seq} ({exc.strerror or exc})"
            if self._failed is None:
                _log.warning(f"{why}; scoring goes on, the next event is tried again")
            self._failed = why
            return
        self._failed = None
        self.written += 1
        self._prune(keep=seq)

    @property
    def failure(self) -> str | None:
        return self._failed

    def health(self) -> dict:
        """Events written, failed writes and events not kept for the daily cap since the
        start (docs/agent.md "Stats")."""
        if not self.on:
            return {}
        return {"evidence_written": self.written, "evidence_errors": self.errors,
                "evidence_skipped": self.skipped}

    def close(self, flush_s: float = 0.0) -> None:
        """An event whose after-part had not all come is written with what came."""
        pending, self._pending = self._pending, []
        for cap in pending:
            self._write(cap)


# -- the reading side: harken evidence -----------------------------------------------------

def _kept_of(config) -> list[Kept]:
    """``kept`` for the CLI: a folder that cannot be read is one line naming it."""
    folder = evidence_folder(config)
    try:
        return kept(folder)
    except NotADirectoryError:
        raise UsageError(f"machine {config.agent.machine!r}: {folder} is not a folder (a file "
                         f"is in its place; the agent keeps no evidence until it is moved "
                         f"away)") from None
    except OSError as exc:
        raise UsageError(f"machine {config.agent.machine!r}: cannot read {folder} "
                         f"({exc.strerror or exc})") from None


def read_meta(k: Kept) -> dict:
    """An event's JSON, checked: what ``harken evidence`` prints from it; one line naming
    the file when it is not what the agent writes (damaged, edited by hand)."""
    try:
        meta = json.loads(k.meta.read_text())
    except FileNotFoundError:              # pruned meanwhile: the caller says so
        raise
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            f"not JSON: {str(exc).splitlines()[0]}" if isinstance(exc, ValueError) else exc
        raise UsageError(f"{k.meta}: cannot read it ({why})") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{k.meta}: expected a JSON object, got {type(meta).__name__}")
    for key in ("seconds", "event_offset_s", "rate"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0:
            raise UsageError(f"{k.meta}: key {key!r} = {str(value)[:40]!r}: expected a "
                             f"number of 0 or more")
    for key in ("score", "threshold"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, float))):
            raise UsageError(f"{k.meta}: key {key!r} = {str(value)[:40]!r}: expected a number")
    return meta


def find(config, seq: int) -> Kept:
    """Machine ``config``'s kept event ``seq``; refused clearly when evidence is off and
    nothing is kept, or when that event is not (or no longer) kept."""
    folder = evidence_folder(config)
    events = _kept_of(config)
    for k in events:
        if k.seq == seq:
            return k
    machine = config.agent.machine
    if not events and not config.evidence.enabled:
        raise UsageError(f"{config.source_file}: evidence audio is off for machine {machine!r} "
                         f"(set [evidence] enabled = true; only events after that are kept)")
    have = ", ".join(str(k.seq) for k in events[-10:]) or "none"
    raise UsageError(f"machine {machine!r}: no evidence for event {seq} in {folder} (kept: "
                     f"{have}; only the last {config.evidence.events} events are kept)")


def listing(config) -> list[dict]:
    """What is kept for machine ``config``: each event's JSON, with its file and bytes."""
    out = []
    for k in _kept_of(config):
        try:
            meta = read_meta(k)
        except UsageError as exc:          # one damaged event hides none of the others
            _log.warning(f"{exc}; left out")
            continue
        out.append({"machine": config.agent.machine, **meta, "file": str(k.wav),
                    "bytes": k.bytes})
    return out


def check_wav(k: Kept, meta: dict) -> float:
    """The seconds of audio event ``k``'s WAV holds, checked against its JSON: a WAV cut
    short (a full card, a copy interrupted) or no WAV at all is one line naming the file,
    not copied out as if whole."""
    try:
        with wave.open(str(k.wav), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = len(w.readframes(w.getnframes())) // max(1, width * channels)
    except FileNotFoundError:
        raise
    except (OSError, wave.Error, EOFError) as exc:
        raise UsageError(f"{k.wav}: not a readable WAV ({exc}): damaged") from None
    seconds = frames / rate if rate else 0.0
    said = float(meta["seconds"])
    if rate != meta["rate"] or abs(seconds - said) > 0.002:    # seconds: rounded to ms
        raise UsageError(f"{k.wav}: holds {seconds:g} s of audio at {rate} Hz, its JSON "
                         f"({k.meta.name}) says {said:g} s at {meta['rate']} Hz: cut short or "
                         f"damaged, not copied (the file is there to take as it is)")
    return seconds
