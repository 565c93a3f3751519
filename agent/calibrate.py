"""``harken calibrate``: the threshold from this machine's own normal operation.

Scores report intervals of live audio (or of recordings) with the configured bundle, fits
a gamma distribution to the scores (agent/thresholds.py, scipy.stats) and sets the
threshold so that normal operation crosses it at the tolerated rate, e.g. one interval per
week. The result goes to a local override file (the bundle is never modified), with a
histogram of the scores, the fit and the threshold.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from harken.agent.config import Config, ConfigError
from harken.agent.decision import Decision
from harken.agent.pipeline import Pipeline
from harken.agent.runner import build
from harken.agent.sources import Microphone, wav_chunks
from harken.agent.thresholds import fit_gamma

MIN_INTERVALS = 10
SECONDS_PER_WEEK = 7 * 24 * 3600


def _progress(total: float, unit: str, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit=unit, disable=not enabled, leave=False)
    except ImportError:             # tqdm is not a device dependency
        class _Quiet:
            def update(self, n): ...
            def close(self): ...
        return _Quiet()


def _collect(results, scores: list[float]) -> int:
    """Append the scored intervals' scores; return how many could not be scored."""
    ok = [r.score for r in results if r.score is not None]
    scores.extend(ok)
    return len(results) - len(ok)


def score_files(pipeline: Pipeline, files: list[str | Path], progress: bool
                ) -> tuple[list[float], int]:
    """The scores of the recordings' report intervals, and how many intervals the health
    check refused (silent, clipped, invalid); ``harken enroll`` reads recordings this way too."""
    scores, skipped = [], 0
    bar = _progress(len(files), "file", progress)
    for f in files:              # command-line paths: relative to the current folder
        for chunk in wav_chunks(Path(f).expanduser(), pipeline.spec.sample_rate, 1.0):
            skipped += _collect(pipeline.push(chunk), scores)
        skipped += _collect(pipeline.finish(), scores)
        bar.update(1)
    bar.close()
    return scores, skipped


def score_microphone(pipeline: Pipeline, config: Config, minutes: float, progress: bool
                     ) -> tuple[list[float], int]:
    """The same for ``minutes`` of the configured microphone."""
    a = config.audio
    mic = Microphone(a.device, pipeline.spec.sample_rate, a.block_s, a.ring_s)
    mic.open()
    scores, skipped = [], 0
    n = int(np.ceil(minutes * 60 / pipeline.interval_s))
    bar = _progress(n, "interval", progress)
    deadline = time.monotonic() + minutes * 60 + 30
    try:
        while len(scores) + skipped < n and time.monotonic() < deadline:
            results = pipeline.push(mic.read(timeout=0.5))
            skipped += _collect(results, scores)
            bar.update(len(results))
    finally:
        mic.close()
        bar.close()
    return scores, skipped


def calibrate(config: Config, files: list[str] | None = None, minutes: float = 30.0,
              false_alarms_per_week: float = 1.0, plot: str | None = "calibration.png",
              progress: bool = True) -> dict:
    if false_alarms_per_week <= 0:
        raise ConfigError("--false-alarms-per-week must be positive")
    bundle, pipeline = build(config)
    pipeline.decision = Decision(float("inf"))         # calibration decides nothing
    if files:
        scores, skipped = score_files(pipeline, files, progress)
    else:
        scores, skipped = score_microphone(pipeline, config, minutes, progress)
    if len(scores) < MIN_INTERVALS:
        raise ConfigError(f"calibration: only {len(scores)} scoreable intervals of "
                          f"{pipeline.interval_s:g} s ({skipped} silent/clipped); need at "
                          f"least {MIN_INTERVALS}: give more minutes or files")
    s = np.asarray(scores)
    fit = fit_gamma(s)
    p = false_alarms_per_week * pipeline.interval_s / SECONDS_PER_WEEK
    threshold = fit.ppf(1.0 - p)
    result = {"threshold": threshold, "false_alarms_per_week": false_alarms_per_week,
              "interval_s": pipeline.interval_s, "exceedance_per_interval": p,
              "intervals": int(s.size), "skipped_intervals": skipped,
              "score_mean": float(s.mean()), "score_max": float(s.max()),
              "gamma": fit.to_dict(), "model": bundle.model_id,
              "bundle_threshold": bundle.threshold,
              "source": "files" if files else f"microphone {config.audio.device!r}",
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = config.override_file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)                                  # never a half-written override
    result["override_file"] = str(out)
    if plot:
        result["plot"] = _plot(s, fit, threshold, out.parent / plot, config)
    return result


def _plot(scores: np.ndarray, fit, threshold: float, path: Path, config: Config) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=min(50, max(10, scores.size // 5)), density=True, alpha=0.6,
            label=f"{scores.size} normal intervals")
    xs = np.linspace(min(scores.min(), fit.loc), max(scores.max(), threshold) * 1.05, 400)
    import scipy.stats
    ax.plot(xs, scipy.stats.gamma.pdf(xs, fit.shape, loc=fit.loc, scale=fit.scale),
            label="gamma fit")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density")
    ax.set_title(f"calibration: {config.agent.machine} on {config.agent.node}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
