"""Audio chunks in, one scored report interval out: streaming log-mel -> feature windows ->
bundle scorer -> decision. Knows nothing about where audio comes from or where results go.

A report interval is a fixed number of feature frames (``interval_s`` of audio, 10 s by
default like a DCASE clip); its windows are scored together exactly as a clip is in
evaluation (agent/model/rules/), so thresholds fitted on clips hold on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable


import numpy as np

from harken.common.errors import UsageError
from harken.agent.decision import Decision
from harken.agent.decision.records import IntervalResult
from harken.agent.features import StreamingLogMel, n_windows
from harken.agent.decision.health import check_audio
from harken.agent.sources.dc import DCRemover
from harken.agent.model.scorer import Scorer


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
        self._frames: list[np.ndarray] = []
        self._n_frames = 0
        self._audio: list[np.ndarray] = []
        self._n_audio = 0
        self._k = 0                  # intervals reported since the stream (re)started
        self._frames_used = 0        # frames handed to those intervals
        self.model_id = scorer.bundle.model_id

    def push(self, chunk: np.ndarray) -> list[IntervalResult]:
        """Feed float32 samples at the bundle's rate; returns the intervals completed."""
        arrived = time.monotonic()
        chunk = np.asarray(chunk, dtype=np.float32)
        self._audio.append(chunk)                 # as it came: health measures the offset
        self._n_audio += chunk.size
        return self._add_frames(self.stream.push(self.dc.push(chunk)), arrived)

    def finish(self) -> list[IntervalResult]:
        """End of a recording: the last frames (centre padding) and a final interval if
        they complete one; then the stream starts afresh (the next file, say)."""
        out = self._add_frames(self.stream.finish(), time.monotonic(), final=True)
        self._frames, self._n_frames, self._audio, self._n_audio = [], 0, [], 0
        self._k, self._frames_used = 0, 0
        self.dc.reset()
        return out

    def _add_frames(self, frames: np.ndarray, arrived: float,
                    final: bool = False) -> list[IntervalResult]:
        """Intervals whose samples have all arrived and whose frames are computed (at the
        end of a recording, ``final``: whatever frames exist, centre padding included)."""
        if len(frames):
            self._frames.append(frames)
            self._n_frames += len(frames)
        out = []
        while self._n_audio >= self.interval_samples:
            end = -(-(self._k + 1) * self.interval_samples // self.spec.hop_length)
            need = end - self._frames_used
            if self._n_frames < need and not (final and self._n_frames >= self.spec.window_frames):
                break
            out.append(self._interval(arrived, min(need, self._n_frames)))
        return out

    def _take(self, parts: list[np.ndarray], n: int) -> np.ndarray:
        whole = np.concatenate(parts) if len(parts) > 1 else parts[0]
        parts[:] = [whole[n:]] if len(whole) > n else []
        return whole[:n]

    def _interval(self, arrived: float, n_frames: int) -> IntervalResult:
        frames = self._take(self._frames, n_frames)
        self._n_frames -= n_frames
        self._frames_used += n_frames
        self._k += 1
        audio = self._take(self._audio, self.interval_samples)
        self._n_audio -= self.interval_samples
        health = check_audio(audio)
        score, n_win, ms = None, 0, 0.0
        if health.ok and not np.isfinite(frames).all():
            health = health.invalid()          # a wild sample: its features overflow
        if health.ok:
            t = time.perf_counter()
            score, n_win = self.scorer.score_frames(frames)
            ms = 1e3 * (time.perf_counter() - t) / max(n_win, 1)
            if not np.isfinite(score):
                score = None
                health = health.invalid()
        unsynced = self.clock_unsynced is not None and self.clock_unsynced()
        ts = self.clock()                    # after the question: a sync in between only
        event = self.decision.update(score, ts)          # flags a record that is right
        if self.reserve_seq is not None:
            self.reserve_seq(self.seq)
        result = IntervalResult(ts, self.seq, score, self.decision.threshold,
                                self.decision.anomaly, self.interval_s, self.model_id,
                                self.scorer.backend_name, health.status, health.rms_dbfs,
                                n_win, ms, event, arrived=arrived,
                                clock="unsynced" if unsynced else None)
        if health.large_dc_offset:               # removed before scoring; said (docs/mqtt.md)
            result.extra["dc_offset"] = round(health.dc_offset, 4)
        self.seq += 1
        return result
