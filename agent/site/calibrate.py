"""``harken calibrate``: the threshold from this machine's own normal operation.

Scores report intervals of live audio (or of recordings) with the configured bundle, fits
a gamma distribution to the scores (agent/decision/thresholds.py, scipy.stats) and sets the
threshold so that normal operation crosses it at the tolerated rate, e.g. one interval per
week. The result goes to a local override file (the bundle is never modified), with a
histogram of the scores, the fit and the threshold.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from pathlib import Path

import numpy as np

from harken.agent.config import Config, ConfigError
from harken.common.errors import DataError, UsageError
from harken.agent.decision import Decision
from harken.agent.pipeline import Pipeline
from harken.agent.build import build
from harken.agent.sources import FileSettings, SourceError, open_source, shared_taps
from harken.agent.decision.thresholds import (check_false_alarm_rate, exceedance,
                                              false_alarm_threshold, outliers)
from harken.agent.decision.override import CalibrationOverride, write_override
from harken.common.records import GammaParams

MIN_INTERVALS = 10
MAX_MINUTES = 7 * 24 * 60           # a week of normal operation is plenty to learn from
log = logging.getLogger(__name__)


def _progress(total: float | None, unit: str, enabled: bool):
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


def score_source(pipelines: list[Pipeline], config: Config, minutes: float | None,
                 progress: bool, taps: list[int | None] | None = None
                 ) -> list[tuple[list[float], int]]:
    """Each pipeline's interval scores, and how many intervals the health check refused
    (silent, dropout, clipped, invalid: docs/agent.md "Audio health"), from the source
    ``config.audio`` names, opened as ``harken run`` opens it (``open_source``): one read
    for every machine that listens to it (``taps``: each pipeline's channel). ``minutes``:
    stop after that much audio (a live input; a lost one is an error here); None: read to
    the end of the recording."""
    if minutes is not None and not (math.isfinite(minutes) and 0 < minutes <= MAX_MINUTES):
        raise UsageError(f"--minutes = {minutes:g}: expected minutes of audio above 0 and at "
                         f"most {MAX_MINUTES:g} (a week)")
    columns, picks = shared_taps(taps or [config.audio.channel])
    got: list[tuple[list[float], int]] = [([], 0) for _ in pipelines]
    n = None if minutes is None else int(np.ceil(minutes * 60 / pipelines[0].interval_s))
    deadline = None if minutes is None else time.monotonic() + minutes * 60 + 30
    bar = _progress(n, "interval", progress and n is not None)

    def count(i: int) -> int:
        return len(got[i][0]) + got[i][1]

    def done() -> bool:
        return n is not None and (min(map(count, range(len(pipelines)))) >= n
                                  or time.monotonic() > deadline)

    def report(record: dict) -> None:
        if record.get("status") == "audio_lost":          # nothing to wait for here
            raise SourceError(record.get("error", "audio lost"))

    source = open_source(config, pipelines[0].spec.sample_rate, columns)
    chunks = source.chunks(done, report)
    try:
        for chunk in chunks:
            before = count(0)
            if chunk is None:                 # the end of a recording: its last interval
                results = [p.finish() for p in pipelines]
            elif chunk.size:
                x = chunk.reshape(len(chunk), -1)
                results = [p.push(x[:, k]) for p, k in zip(pipelines, picks)]
            else:                             # nothing within the source's wait
                results = [[] for _ in pipelines]
            for i, r in enumerate(results):
                scores, skipped = got[i]
                got[i] = scores, skipped + _collect(r, scores)
            bar.update(count(0) - before)
            if done():
                break
    finally:
        chunks.close()
        source.close()
        bar.close()
    return got


def score_files(pipelines: list[Pipeline], config: Config, files: list[str | Path],
                progress: bool, taps: list[int | None] | None = None
                ) -> list[tuple[list[float], int]]:
    """The same for recordings given on the command line, each read through the file
    source as fast as it goes (``harken enroll`` reads recordings this way too); paths are
    relative to the current folder, not the config's."""
    got: list[tuple[list[float], int]] = [([], 0) for _ in pipelines]
    bar = _progress(len(files), "file", progress)
    for f in files:
        audio = FileSettings(file=str(Path(f).expanduser().absolute()), realtime=False,
                             block_s=1.0, channel=config.audio.channel)
        view = config.model_copy(update={"audio": audio})
        for i, (scores, skipped) in enumerate(score_source(pipelines, view, None, False, taps)):
            got[i] = got[i][0] + scores, got[i][1] + skipped
        bar.update(1)
    bar.close()
    return got


def calibrate(config: Config, files: list[str] | None = None, minutes: float = 30.0,
              false_alarms_per_week: float = 1.0, plot: str | None = "calibration.png",
              progress: bool = True, machine: str | None = None) -> dict:
    """Calibrate every machine of the config (or the one named): a single-machine config's
    result, or ``{"machines": {name: result}}``. Recordings give each machine its channel;
    live audio is one capture per input for all the machines that listen to it."""
    check_false_alarm_rate(false_alarms_per_week, config.decision.interval_s)
    check_plot(plot)                               # before any audio is read or file written
    duplicate_files = 0
    if files:
        files, duplicate_files = distinct_files(files)
    views = config.select(machine)
    built = [build(v, override=False) for v in views]   # the override it replaces is not read
    for _, pipeline in built:
        pipeline.decision = Decision(float("inf"))     # calibration decides nothing
    # one read per input (the recordings: one read per sample rate) for all the machines
    # that listen to it, each taking its channel
    got: list = [None] * len(views)
    inputs: dict[tuple, list[int]] = {}
    for i, (v, (_, p)) in enumerate(zip(views, built)):
        inputs.setdefault((() if files else v.audio.input_key(), p.spec.sample_rate),
                          []).append(i)
    for members in inputs.values():
        pipelines, first = [built[i][1] for i in members], views[members[0]]
        taps = [views[i].audio.channel for i in members]
        scored = score_files(pipelines, first, files, progress, taps) if files else \
            score_source(pipelines, first, minutes, progress, taps)
        for i, r in zip(members, scored):
            got[i] = r
    if not config.multi:
        (b, p), (scores, skipped) = built[0], got[0]
        return {**_fit_and_write(views[0], b, p, scores, skipped, files,
                                 false_alarms_per_week, plot, False),
                **({"duplicate_files": duplicate_files} if files else {})}
    # several machines: each that can be calibrated is, and one that cannot (its channel
    # silent) says why in its entry instead of stopping the others
    results = {}
    for v, (b, p), (scores, skipped) in zip(views, built, got):
        try:
            results[v.agent.machine] = _fit_and_write(v, b, p, scores, skipped, files,
                                                      false_alarms_per_week, plot, True)
        except (ConfigError, DataError) as exc:
            results[v.agent.machine] = {"error": str(exc)}
    return {"machines": results, **({"duplicate_files": duplicate_files} if files else {})}


# The formats matplotlib's savefig writes (matplotlib.backend_bases.FigureCanvasBase
# .get_supported_filetypes(), matplotlib 3.11), kept here so that a device install without
# matplotlib refuses ``--plot x.unknownext`` as a workstation does; a test compares the two
# where matplotlib is installed.
PLOT_FORMATS = frozenset({"avif", "eps", "gif", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw",
                          "rgba", "svg", "svgz", "tif", "tiff", "webp"})


def plot_formats() -> frozenset[str]:
    """What ``--plot`` may end in: the installed matplotlib's own list, else the fixed one."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return PLOT_FORMATS
    return frozenset(FigureCanvasBase.get_supported_filetypes())


def check_plot(plot: str | None) -> None:
    """A plot name matplotlib cannot write (``--plot x.unknownext``) is refused before
    anything is read or written: it raised a ValueError traceback after the override was
    already in place (docs/reliability.md). No suffix is matplotlib's default, PNG. Checked
    with or without matplotlib installed, so that a device install refuses the same names
    (without it the plot is not drawn, and the result says why)."""
    suffix = Path(plot).suffix.lstrip(".").lower() if plot else ""
    if not suffix:
        return
    known = plot_formats()
    if suffix not in known:
        raise UsageError(f"--plot {plot}: matplotlib cannot write .{suffix} files; expected "
                         f"one of {', '.join('.' + k for k in sorted(known))}")


def distinct_files(files: list[str]) -> tuple[list[str], int]:
    """The files, each once by content, in order, and how many were left out: the same
    recording given 11 times made every interval count 11 times in the fit, and a scipy
    FitDataError traceback (docs/reliability.md). ``harken enroll`` leaves copies out alike."""
    from harken.agent.model.bundle import sha256_file
    missing = [f for f in files if not Path(f).expanduser().is_file()]
    if missing:
        raise ConfigError(f"--files: no such file: {', '.join(missing)}")
    seen: set[str] = set()
    kept, copies = [], []
    for f in files:
        digest = sha256_file(Path(f).expanduser())
        (copies if digest in seen else kept).append(f)
        seen.add(digest)
    if copies:
        log.warning(f"--files: {len(copies)} file(s) hold the same audio as one given before "
                    f"them, left out: {', '.join(dict.fromkeys(copies))}")
    return kept, len(copies)


def _fit_and_write(config: Config, bundle, pipeline: Pipeline, scores: list[float],
                   skipped: int, files: list[str] | None, false_alarms_per_week: float,
                   plot: str | None, multi: bool) -> dict:
    """One machine's threshold from its scores, written to its override file (and with
    several machines, its plot named after it)."""
    if multi and plot:
        plot = f"{Path(plot).stem}-{config.agent.machine}{Path(plot).suffix}"
    if len(scores) < MIN_INTERVALS:
        who = f"machine {config.agent.machine}: " if multi else ""
        raise ConfigError(f"calibration: {who}only {len(scores)} scoreable intervals of "
                          f"{pipeline.interval_s:g} s ({skipped} silent, dropout, clipped or "
                          f"invalid); need at least {MIN_INTERVALS}: give more minutes or files")
    s = np.asarray(scores)
    what = f"calibration of {config.agent.machine}"
    why = ("if these recordings are the ones the bank was enrolled from, each interval finds "
           "itself in the bank and all score alike: calibrate on other normal audio"
           if bundle.needs_enrollment else "")
    threshold, p, fit = false_alarm_threshold(s, false_alarms_per_week, pipeline.interval_s,
                                              what, why)
    exceeded = exceedance(s, threshold, p, what)
    exceeded |= outliers(s, threshold, false_alarms_per_week, pipeline.interval_s, what)
    override = CalibrationOverride.create(
        machine=config.agent.machine, threshold=threshold,
        false_alarms_per_week=false_alarms_per_week, interval_s=pipeline.interval_s,
        exceedance_per_interval=p, intervals=int(s.size), skipped_intervals=skipped,
        score_mean=float(s.mean()), score_max=float(s.max()),
        gamma=GammaParams(**fit.to_dict()), model=bundle.model_id,
        scorer=bundle.scorer_digest(config.agent.section, config.model.artifact),
        bundle_threshold=bundle.threshold,
        source="files" if files else config.audio.describe(),
        channel=config.audio.channel,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    out = config.override_file
    write_override(out, override)                     # never a half-written override
    result = {**override.model_dump(mode="json"), "override_file": str(out), **exceeded}
    if config.decision.threshold is not None:
        # the config's value comes first (agent/build.py resolve_threshold): said, not hidden
        result["threshold_in_force"] = (
            f"{config.source_file}: decision.threshold = {config.decision.threshold:g} is set, "
            f"so 'harken run' keeps using it, not this calibration, until that key is removed")
        log.warning("WARNING: " + result["threshold_in_force"])
    if plot:
        try:
            result["plot"] = _plot(s, fit, threshold, out.parent / plot, config)
        except (OSError, ValueError) as exc:          # the override stands: said, not raised
            result["plot"] = f"not drawn: {exc}"
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
