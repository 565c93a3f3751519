"""Run directories: what training leaves behind for evaluation and export.

A run is one method trained on one machine type: ``run.json`` (method, feature spec,
parameters, corpus fingerprint, normal-score statistics, threshold) beside the method's
arrays (``.npy``) or weights.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harken.common.errors import HarkenError
from harken.agent.features import FeatureSpec
from harken.agent.decision.thresholds import gamma_threshold
from harken.training.data.corpus import Clip

RUN_SCHEMA = 1
HELD_OUT = "held_out_scores.csv"     # per-clip scores of the normal clips training held out


class RunError(HarkenError, ValueError):
    """A run directory that is missing or malformed; the message names it."""


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
              held_out: tuple[Sequence[Clip], np.ndarray] | None = None) -> dict:
    """``held_out``: the clips behind ``normal_scores`` and their scores, kept per clip so
    that a fusion of several methods can standardise each one per section and score the
    clips every member held out (training/fusion.py)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if held_out is not None:
        write_held_out(run_dir, *held_out)
    info = {
        "schema": RUN_SCHEMA,
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
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return info


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


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no run.json)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    for key in ("schema", "method", "machine", "feature_spec"):
        if key not in info:
            raise RunError(f"{path}: missing field '{key}'")
    if info["schema"] != RUN_SCHEMA:
        raise RunError(f"{path}: run schema {info['schema']} not supported (expected {RUN_SCHEMA})")
    return info


def find_runs(path: Path) -> list[Path]:
    """A run directory, or a folder of them (one per machine type)."""
    path = Path(path)
    if (path / "run.json").is_file():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/run.json")) if path.is_dir() else []
    if not runs:
        raise RunError(f"{path}: no run.json here or in its sub-folders")
    return runs


def record_training_time(run_dir: Path, info: dict, seconds: float) -> None:
    """Adds wall time (features included) and the machine it ran on to run.json, for the
    results page's training-time table."""
    import os
    import platform

    import torch
    info["training"] = {"seconds": round(seconds, 1), "cpu_cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(),
                        "machine": platform.machine(),
                        "device": info.get("history", {}).get("device", "cpu"),
                        "epochs": len(info.get("history", {}).get("train_loss", []))}
    (Path(run_dir) / "run.json").write_text(json.dumps(info, indent=2))
