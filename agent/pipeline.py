"""Audio chunks in, one scored report interval out: streaming log-mel -> feature windows ->
bundle scorer -> decision. Knows nothing about where audio comes from or where results go.

A report interval is a fixed number of feature frames (``interval_s`` of audio, 10 s by
default like a DCASE clip); its windows are scored together exactly as a clip is in
evaluation (agent/model/rules/), so thresholds fitted on clips hold on the device.

What an interval holds until it is scored (docs/agent.md "Several machines on one device":
64 machines on one device): of its audio, only the health check's figures, gathered as the
audio comes (agent/decision/health.py ``IntervalAudio``: each 0.1-s piece's level, the
clipped count, mean and spread), and, for a scorer that splits
into per-window ``evidence`` and a per-interval ``reduce`` (one bundle, enrollment), only
each window's evidence row: a window is run through the model as soon as its frames exist
and its frames dropped, so the interval's 10 s of features (mostly the 513-bin spectrum) are
never held. The rows are the ones the whole interval's windows give, in the same order, so
the score is the same to the bit. A fused bundle's members each window the frames their own
way: for it the interval's frames are held and scored at its end as before. With evidence
audio on (opt-in, agent/sinks/evidence.py) each interval's samples are kept too, as int16,
until its result is handed over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from harken.common.errors import UsageError
from harken.agent.decision import Decision
from harken.agent.decision.records import IntervalResult
from harken.agent.features import StreamingLogMel, n_windows, windows
from harken.agent.decision.health import IntervalAudio
from harken.agent.sources.dc import DCRemover
from harken.agent.model.scorer import Scorer


@dataclass
class _Open:
    """One interval's part of the work between its first frame and its score: the frames
    not yet windowed (all of them for a scorer without per-window evidence) and the
    evidence rows of the windows done."""
    n_frames: int = 0
    finite: bool = True
    held: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    n_windows: int = 0
    seconds: float = 0.0          # spent on the model and rule


class Pipeline:
    def __init__(self, scorer: Scorer, decision: Decision, interval_s: float = 10.0,
                 seq_start: int = 1, clock: Callable[[], float] = time.time) -> None:
        spec = scorer.bundle.spec
        self.scorer, self.decision, self.spec = scorer, decision, spec
        # an interval is a whole number of samples at the model's rate (docs/agent.md
        # "Report intervals"): interval k holds samples [k*S, (k+1)*S) and the frames that
        # start there, so a 10-s file at 0.5-s intervals gives 20 of them, not 19 intervals of
        # a frame-rounded 0.512 s
        hop = spec.hop_length
        self.interval_samples = max(int(round(interval_s * spec.sample_rate)),
                                    spec.window_frames * hop)
        if n_windows(self.interval_samples // hop, spec) < 1:
            raise UsageError(f"interval_s={interval_s} holds no {spec.window_frames}-frame window")
        # frames of the first interval (the others hold this many or one fewer)
        self.interval_frames = -(-self.interval_samples // hop)
        self.interval_s = interval_s
        self.stream = StreamingLogMel(spec)
        self.dc = DCRemover(spec.sample_rate)     # before the features: agent/sources/dc.py
        self.seq = seq_start
        self.clock = clock
        # set by the runner (agent/runner.py): called before each seq is used (the durable
        # reservation, agent/seqstore.py), and asked before each ts is stamped whether the
        # wall clock is still unsynchronised (agent/clock.py)
        self.reserve_seq: Callable[[int], None] | None = None
        self.clock_unsynced: Callable[[], bool] | None = None
        # set by the runner for the operator's loop (agent/operator/): keep each scored
        # interval's bank statistics on its result (the feedback store), keep its audio
        # (evidence audio, opt-in), and ask at each interval whether the machine is in
        # maintenance (scored and published, never an anomaly)
        self.keep_statistics = False
        self.keep_audio = False
        self.maintenance: Callable[[float], bool] | None = None
        # held while an interval is decided and while ``swap`` changes the rule or the
        # threshold (feedback in a running daemon): an interval sees the old pair or the new
        self.lock = threading.Lock()
        self._samples: list[list[np.ndarray]] = [[]]      # each interval's audio, if kept
        # per-window evidence as frames arrive (module docstring), or the frames held whole
        self._streaming = callable(getattr(scorer, "evidence", None)) and \
            callable(getattr(scorer, "reduce", None))
        self._open = _Open()         # the interval whose frames are arriving
        self._ready: list[_Open] = []    # intervals whose frames are all in, awaiting audio
        # each interval's audio figures (the last one filling), not its samples
        self._audio: list[IntervalAudio] = [IntervalAudio()]
        self._k = 0                  # intervals whose frames are all in since the stream began
        self._frames_used = 0        # frames handed to those intervals
        self.model_id = scorer.bundle.model_id

    @property
    def held_frames(self) -> int:
        """Feature frames held for intervals not yet scored (a few, not an interval's worth,
        where the scorer gives per-window evidence: module docstring)."""
        return sum(len(h) for o in (*self._ready, self._open) for h in o.held)

    def push(self, chunk: np.ndarray) -> list[IntervalResult]:
        """Feed float32 samples at the bundle's rate; returns the intervals completed."""
        arrived = time.monotonic()
        chunk = np.asarray(chunk, dtype=np.float32)
        i = 0                                     # as it came: health measures the offset
        while i < chunk.size:
            if self._audio[-1].n == self.interval_samples:
                self._audio.append(IntervalAudio())
            n = min(self.interval_samples - self._audio[-1].n, chunk.size - i)
            self._audio[-1].add(chunk[i:i + n])
            if self.keep_audio:
                while len(self._samples) < len(self._audio):
                    self._samples.append([])
                self._samples[len(self._audio) - 1].append(
                    (np.clip(chunk[i:i + n], -1.0, 1.0) * 32767).astype(np.int16))
            i += n
        return self._add_frames(self.stream.push(self.dc.push(chunk)), arrived)

    def finish(self) -> list[IntervalResult]:
        """End of a recording: the last frames (centre padding) and a final interval if
        they complete one; then the stream starts afresh (the next file, say)."""
        out = self._add_frames(self.stream.finish(), time.monotonic(), final=True)
        self._open, self._ready, self._audio = _Open(), [], [IntervalAudio()]
        self._samples = [[]]
        self._k, self._frames_used = 0, 0
        self.dc.reset()
        return out

    def _add_frames(self, frames: np.ndarray, arrived: float,
                    final: bool = False) -> list[IntervalResult]:
        """Intervals whose samples have all arrived and whose frames are computed (at the
        end of a recording, ``final``: whatever frames exist, centre padding included)."""
        hop, i = self.spec.hop_length, 0
        while i < len(frames):                # each frame to the interval it starts in
            end = -(-(self._k + 1) * self.interval_samples // hop)
            take = min(end - self._frames_used - self._open.n_frames, len(frames) - i)
            self._add(frames[i:i + take])
            i += take
            if self._frames_used + self._open.n_frames == end:
                self._close()
        if final and self._open.n_frames >= self.spec.window_frames:
            self._close()                     # the last, shorter interval
        out = []
        while self._ready and self._audio[0].n == self.interval_samples:
            out.append(self._interval(arrived, self._ready.pop(0)))
        return out

    def _add(self, frames: np.ndarray) -> None:
        """Frames of the open interval: held, or windowed and run through the model as soon
        as a window is complete (only the frames of windows still to come are kept)."""
        o = self._open
        o.n_frames += len(frames)
        o.finite = o.finite and bool(np.isfinite(frames).all())
        o.held.append(frames)
        if not self._streaming or not o.finite:   # a wild sample: the interval is invalid
            return
        pending = np.concatenate(o.held) if len(o.held) > 1 else o.held[0]
        n = n_windows(len(pending), self.spec)
        if n:
            t = time.perf_counter()
            o.rows.append(self.scorer.evidence(windows(pending, self.spec)[:n]))
            o.seconds += time.perf_counter() - t
            o.n_windows += n
            rest = pending[n * self.spec.window_hop:]
            o.held = [rest.copy()] if len(rest) else []
        else:
            o.held = [pending]

    def _close(self) -> None:
        self._frames_used += self._open.n_frames
        self._k += 1
        self._ready.append(self._open)
        self._open = _Open()

    def swap(self, rule=None, threshold: float | None = None) -> None:
        """A new score rule (a bank with feedback added) and/or threshold, taken between two
        intervals: no interval is scored with one half of the change."""
        with self.lock:
            if rule is not None:
                self.scorer.rule = rule
            if threshold is not None:
                self.decision.threshold = float(threshold)

    def _score(self, o: _Open) -> tuple[float, int, float, dict | None]:
        """(score, windows, ms per window, bank statistics if kept) of a closed interval."""
        if not self._streaming:
            frames = np.concatenate(o.held) if len(o.held) > 1 else o.held[0]
            t = time.perf_counter()
            score, n_win = self.scorer.score_frames(frames)
            return score, n_win, 1e3 * (time.perf_counter() - t) / max(n_win, 1), None
        t = time.perf_counter()
        evidence = np.concatenate(o.rows)
        score = self.scorer.reduce(evidence)
        seconds = o.seconds + time.perf_counter() - t
        stats = None
        if self.keep_statistics:
            take = getattr(self.scorer, "statistics", None)
            stats = take(evidence) if take is not None else None
        return score, o.n_windows, 1e3 * seconds / max(o.n_windows, 1), stats

    def _interval(self, arrived: float, o: _Open) -> IntervalResult:
        with self.lock:
            return self._decide(arrived, o)

    def _decide(self, arrived: float, o: _Open) -> IntervalResult:
        health = self._audio.pop(0).check()
        if not self._audio:
            self._audio.append(IntervalAudio())
        samples = self._samples.pop(0) if self._samples else []
        if not self._samples:
            self._samples.append([])
        score, n_win, ms, stats = None, 0, 0.0, None
        if health.ok and not o.finite:
            health = health.invalid()          # a wild sample: its features overflow
        if health.ok:
            score, n_win, ms, stats = self._score(o)
            if not np.isfinite(score):
                score, stats = None, None
                health = health.invalid()
        unsynced = self.clock_unsynced is not None and self.clock_unsynced()
        ts = self.clock()                    # after the question: a sync in between only
        held = self.maintenance is not None and self.maintenance(ts)  # flags a record that
        if held:                                                         # is right
            event = self.decision.hold(ts)       # an event running ends here
        else:
            event = self.decision.update(score, ts)
        if self.reserve_seq is not None:
            self.reserve_seq(self.seq)
        result = IntervalResult(ts, self.seq, score, self.decision.threshold,
                                self.decision.anomaly, self.interval_s, self.model_id,
                                self.scorer.backend_name, health.status, health.rms_dbfs,
                                n_win, ms, event, arrived=arrived,
                                clock="unsynced" if unsynced else None, statistics=stats,
                                audio=(np.concatenate(samples) if self.keep_audio and samples
                                       else None), maintenance=held)
        if health.large_dc_offset:               # removed before scoring; said (docs/mqtt.md)
            result.extra["dc_offset"] = round(health.dc_offset, 4)
        self.seq += 1
        return result
