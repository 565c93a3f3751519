"""Run directories: what training leaves behind for evaluation and export.

A run is one method trained on one machine type: ``run.json`` (method, feature spec,
parameters, corpus fingerprint, normal-score statistics, threshold) beside the method's
arrays (``.npy``) or weights. ``RunInfo`` is run.json's one typed model: training writes it
(``write_run``, ``save_run``) and everything else reads it through ``read_run``, which turns
any decoding, type or missing-field problem into one line naming the file.

Versions: 1 was written by releases up to 61a0e3e (key ``schema``); 2 names the key
``version`` and is otherwise the same, so a version-1 file is migrated on reading
(tests/training/test_run_records.py holds files written by that release).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from harken.agent.decision.thresholds import gamma_threshold
from harken.agent.features import FeatureSpec
from harken.common.errors import HarkenError
from harken.training.data.corpus import Clip

RUN_VERSION = 2
HELD_OUT = "held_out_scores.csv"     # per-clip scores of the normal clips training held out
RUN_FILE = "run.json"


class RunError(HarkenError, ValueError):
    """A run directory that is missing or malformed; the message names it."""


class _Record(BaseModel):
    # a method's own fields (a classifier's classes, a GAN's score choice) are kept as
    # they are, readable as attributes: the fields every reader relies on are typed below
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")   # as json.dumps


class CorpusInfo(_Record):
    root: str = ""
    fingerprint: StrictStr
    n_train: StrictInt = 0


class NormalScores(_Record):
    """Statistics of the run's normal (held-out training) scores: thresholds, z-scores and
    calibration read them (``normal_score_stats``)."""
    n: StrictInt = 0
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    percentiles: dict[str, float] = Field(default_factory=dict)
    gamma: dict[str, Any] = Field(default_factory=dict)
    # a gamma quantile is always finite: a NaN or infinite one is a damaged file, and
    # exported it would be a device that never (or always) alarms
    threshold: float = Field(allow_inf_nan=False)
    threshold_rule: str = ""


class TrainingTime(_Record):
    """Wall time and where it ran (``harken-train train``), for the results page."""
    seconds: float
    cpu_cores: int | None = None
    torch_threads: int | None = None
    machine: str = ""
    device: str = "cpu"
    epochs: int = 0


class FusionMemberRun(_Record):
    method: StrictStr
    run: StrictStr
    weight: float


class RunInfo(_Record):
    """One run's run.json."""
    version: StrictInt = RUN_VERSION
    run_id: str = ""
    method: StrictStr
    machine: StrictStr
    created: str = ""
    feature_spec: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)
    sections: list[StrictInt] = Field(min_length=1)
    corpus: CorpusInfo
    normal_scores: NormalScores
    code_version: str = "unknown"
    # what some methods add (training/torch_method.py, classifier.py, fusion.py, aegan.py)
    architecture: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    weights: str | None = None
    training: TrainingTime | None = None
    members: list[FusionMemberRun] | None = None
    standardise: dict[str, dict[str, list[float]]] | None = None
    score_rule: str | None = None
    classes: list[str] | None = None
    mahalanobis: list[tuple[StrictInt, str]] | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_unset=True)


def _migrate(data: dict) -> dict:
    """A run.json of an older version as the current one."""
    if "version" not in data and data.get("schema") == 1:
        data = {k: v for k, v in data.items() if k != "schema"}
        data["version"] = RUN_VERSION
    return data


def parse_run(data: object, where: str) -> RunInfo:
    """``data`` (run.json's decoded contents) as a RunInfo; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise RunError(f"{where}: expected a JSON object, got {type(data).__name__}")
    data = _migrate(data)
    version = data.get("version", data.get("schema"))
    if version != RUN_VERSION:
        raise RunError(f"{where}: run version {version!r} not supported (this release reads "
                       f"versions 1 and {RUN_VERSION}); train the run again")
    try:
        return RunInfo.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            raise RunError(f"{where}: missing field '{field}'") from None
        raise RunError(f"{where}: field '{field}' {err['msg'].lower()}, got "
                       f"{str(err.get('input'))[:60]!r}") from None


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("harken")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+{sha}" if sha else v


def corpus_fingerprint(clips: Sequence[Clip]) -> str:
    """sha256 over the training clips' names and sizes: cheap, and changes with the data."""
    h = hashlib.sha256()
    for c in sorted(clips, key=lambda c: (c.machine, c.name)):
        h.update(f"{c.machine}/{c.split}/{c.name}:{c.path.stat().st_size}\n".encode())
    return h.hexdigest()


def normal_score_stats(scores: np.ndarray, quantile: float = 0.9) -> dict:
    """Statistics of training (normal) scores, for thresholds, z-scores and calibration."""
    s = np.asarray(scores, dtype=np.float64)
    threshold, fit = gamma_threshold(s, quantile)
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()),
            "min": float(s.min()), "max": float(s.max()),
            "percentiles": {str(q): float(np.percentile(s, q)) for q in (50, 90, 95, 99)},
            "gamma": fit.to_dict(), "threshold": threshold,
            "threshold_rule": f"gamma fit of training scores, quantile {quantile}"}


def write_run(run_dir: Path, *, method: str, machine: str, spec: FeatureSpec, params: dict,
              train_clips: Sequence[Clip], normal_scores: dict, extra: dict | None = None,
              held_out: tuple[Sequence[Clip], np.ndarray] | None = None) -> RunInfo:
    """``held_out``: the clips behind ``normal_scores`` and their scores, kept per clip so
    that a fusion of several methods can standardise each one per section and score the
    clips every member held out (training/fusion.py)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if held_out is not None:
        write_held_out(run_dir, *held_out)
    data = {
        "version": RUN_VERSION,
        "run_id": f"{method}-{machine}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}",
        "method": method,
        "machine": machine,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "feature_spec": spec.to_dict(),
        "params": params,
        "sections": sorted({c.section for c in train_clips}),
        "corpus": {"root": str(train_clips[0].path.parents[2]) if train_clips else "",
                   "fingerprint": corpus_fingerprint(train_clips),
                   "n_train": len(train_clips)},
        "normal_scores": normal_scores,
        "code_version": code_version(),
        **(extra or {}),
    }
    info = parse_run(json.loads(json.dumps(data)), str(run_dir / RUN_FILE))
    save_run(run_dir, info)
    return info


def save_run(run_dir: Path, info: RunInfo) -> None:
    """(Re)write run.json: after a refit or once the training time is known."""
    (Path(run_dir) / RUN_FILE).write_text(info.to_json())


def write_held_out(run_dir: Path, clips: Sequence[Clip], scores: np.ndarray) -> None:
    scores = np.asarray(scores, dtype=np.float64)
    if len(clips) != len(scores):
        raise ValueError(f"{len(clips)} held-out clips but {len(scores)} scores")
    with open(Path(run_dir) / HELD_OUT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "section", "domain", "score"])
        w.writerows([c.name, c.section, c.domain, repr(float(v))] for c, v in zip(clips, scores))


def read_held_out(run_dir: Path) -> dict[str, tuple[int, float]]:
    """file name -> (section, score) of the run's held-out normal clips."""
    path = Path(run_dir) / HELD_OUT
    if not path.is_file():
        raise RunError(f"{run_dir}: no {HELD_OUT} (a run trained before held-out scores "
                       f"were kept, or a method that does not keep them); train it again")
    out = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f)):
            if n == 0:
                continue
            try:
                name, section, _domain, score = row
                out[name] = (int(section), float(score))
            except ValueError:
                raise RunError(f"{path}: line {n + 1} is not 'file,section,domain,score': "
                               f"{','.join(row)[:80]!r}") from None
    return out


def read_run(run_dir: Path) -> RunInfo:
    """The run's run.json, migrated to the current version; any problem is one line
    naming the file (a RunError)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no run.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RunError(f"{path}: not a run.json (JSON nested too deeply)") from None
    return parse_run(data, str(path))


def find_runs(path: Path) -> list[Path]:
    """A run directory, or a folder of them (one per machine type)."""
    path = Path(path)
    if (path / "run.json").is_file():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/run.json")) if path.is_dir() else []
    if not runs:
        raise RunError(f"{path}: no run.json here or in its sub-folders")
    return runs


def record_training_time(run_dir: Path, info: RunInfo, seconds: float) -> None:
    """Adds wall time (features included) and the machine it ran on to run.json, for the
    results page's training-time table."""
    import os
    import platform

    import torch
    history = info.history or {}
    info.training = TrainingTime(seconds=round(seconds, 1), cpu_cores=os.cpu_count(),
                                 torch_threads=torch.get_num_threads(),
                                 machine=platform.machine(),
                                 device=history.get("device", "cpu"),
                                 epochs=len(history.get("train_loss", [])))
    save_run(run_dir, info)
