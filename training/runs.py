"""Run directories: what training leaves behind for evaluation and export.

A run is one method trained on one machine type: ``run.json`` (method, feature spec,
parameters, corpus fingerprint, normal-score statistics, threshold) beside the method's
arrays (``.npy``) or weights. ``RunInfo`` is run.json's one typed model: training writes it
(``write_run``, ``save_run``) and everything else reads it through ``read_run``, which turns
any decoding, type or missing-field problem into one line naming the file.

Versions: 1 was written by releases up to 61a0e3e (key ``schema``); 2 names the key
``version`` and is otherwise the same, so a version-1 file is migrated on reading
(tests/training/test_run_records.py holds files written by that release). 3 records the
corpus by its absolute path and fingerprints the training clips' contents
(``corpus.fingerprint_kind`` "sha256-content"); versions 1 and 2 fingerprinted names and
sizes only ("names-sizes", the default when the key is absent), which is still how their
fingerprint is checked. Runs of this release also record ``corpus.test_fingerprint``
(the test clips' contents, "sha256-content"; absent in earlier runs, whose test clips are
not checked) and, from ``train``, ``corpus.scan`` (what the scan skipped: a run trained
with ``--skip-bad-clips`` is checked with the same clips left out). A relative
``corpus.root`` (runs before version 3) is refused unless ``--data`` names the corpus.
The corpus path is only a hint: evaluate, export and verify accept
any corpus whose training clips have the run's fingerprint (``check_corpus``).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from harken.agent.decision.thresholds import gamma_threshold
from harken.agent.features import FeatureSpec
from harken.common.atomic import repair, repair_folder, write_atomic
from harken.common.errors import HarkenError
from harken.training.data.corpus import REFUSED, Clip, CorpusError, scan, scan_corpus

RUN_VERSION = 3
HELD_OUT = "held_out_scores.csv"     # per-clip scores of the normal clips training held out
RUN_FILE = "run.json"


class RunError(HarkenError, ValueError):
    """A run directory that is missing or malformed; the message names it."""


class _Record(BaseModel):
    # a method's own fields (a classifier's classes, a GAN's score choice) are kept as
    # they are, readable as attributes: the fields every reader relies on are typed below
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")   # as json.dumps


# how ``corpus.fingerprint`` was computed (``corpus_fingerprint``)
CONTENT, NAMES_SIZES = "sha256-content", "names-sizes"


class CorpusInfo(_Record):
    root: str = ""
    fingerprint: StrictStr
    n_train: StrictInt = 0
    fingerprint_kind: StrictStr = NAMES_SIZES      # absent before version 3
    # the content fingerprint of the machine's test clips (evaluate and verify score them);
    # absent in runs trained before it was recorded, whose test clips are not checked
    test_fingerprint: StrictStr | None = None


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
    # the ``harken-train train`` command that wrote it: the runs of one command share it
    # (evaluate says when a folder's runs come from several); absent in earlier runs
    training_id: str | None = None
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
    """A run.json of an older version as the current one: 1 -> 2 renames ``schema``;
    2 -> 3 keeps everything (a run without ``corpus.fingerprint_kind`` has a names-and-sizes
    fingerprint, the field's default)."""
    if "version" not in data and data.get("schema") == 1:
        data = {k: v for k, v in data.items() if k != "schema"}
        data["version"] = 2
    if data.get("version") == 2:
        data = {**data, "version": 3}
    return data


def parse_run(data: object, where: str) -> RunInfo:
    """``data`` (run.json's decoded contents) as a RunInfo; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise RunError(f"{where}: expected a JSON object, got {type(data).__name__}")
    data = _migrate(data)
    version = data.get("version", data.get("schema"))
    if version != RUN_VERSION:
        raise RunError(f"{where}: run version {version!r} not supported (this release reads "
                       f"versions 1 to {RUN_VERSION}); train the run again")
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


def corpus_fingerprint(clips: Sequence[Clip], kind: str = CONTENT) -> str:
    """sha256 over the training clips' names, sizes and (``CONTENT``) each clip's own sha256.
    Names and sizes alone do not tell two synthetic corpora of one layout apart (every clip
    has the same name and length); hashing the bytes does, at disk speed (a DCASE machine
    type's 1000 ten-second clips are 320 MB: about a second). ``NAMES_SIZES``: how runs
    before version 3 were fingerprinted."""
    if kind not in (CONTENT, NAMES_SIZES):
        raise RunError(f"corpus fingerprint kind {kind!r} unknown (this release knows "
                       f"{CONTENT!r} and {NAMES_SIZES!r})")
    h = hashlib.sha256()
    for c in sorted(clips, key=lambda c: (c.machine, c.name)):
        line = f"{c.machine}/{c.split}/{c.name}:{c.path.stat().st_size}"
        if kind == CONTENT:
            with open(c.path, "rb") as f:
                line += ":" + hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{line}\n".encode())
    return h.hexdigest()


def check_corpus(run_dir: Path, info: RunInfo, data: Path | None = None,
                 other_corpus: bool = False, flag: str | None = "--other-corpus",
                 test_clips: bool = True, data_flag: str | None = "--data") -> dict:
    """The corpus to use with a run: ``data`` if given, else the path run.json names (a
    hint only). It is accepted when its training clips of the run's machine type have the
    run's fingerprint; otherwise refused in one line, unless ``other_corpus`` (a deliberate
    evaluation on other data, recorded as such). The test clips are checked too where the
    run recorded their fingerprint (``test_clips``: False for a command that reads only the
    training clips, int8 calibration). A run trained with ``--skip-bad-clips`` is checked
    with the same clips left out. An old run's relative corpus path is refused (``--data``).
    ``data_flag`` and ``flag`` are the calling command's options for the corpus and for
    another corpus on purpose (None: it has none; the refusal says so, not a flag).
    Returns what an evaluation records: {"path", "fingerprint", "run_fingerprint",
    "matches_run", ...}."""
    if data is None and info.corpus.root and not Path(info.corpus.root).is_absolute():
        # an old run (before version 3) may name its corpus relative to the folder it was
        # trained from: read against the current one it would name another corpus
        raise RunError(f"{run_dir}/run.json: an old run with a relative corpus path "
                       f"({info.corpus.root!r}); " + (f"give its corpus with {data_flag}"
                                                     if data_flag else "retrain it"))
    root = Path(os.path.abspath(data if data is not None else info.corpus.root or "."))
    where = data_flag if data is not None else f"the corpus {run_dir}/run.json names"
    give = (f"give the run's corpus with {data_flag}" if data_flag else
            f"put the run's corpus back at {info.corpus.root}")
    anyway = f", or {flag} to use this one on purpose" if flag else ""
    if not root.is_dir():
        raise RunError(f"{root}: {where} is not there; " + (
            f"give the corpus {run_dir} was trained on with {data_flag}" if data_flag else
            f"put the corpus {run_dir} was trained on back there"))
    kind = info.corpus.fingerprint_kind
    skip_bad = skipped_bad_clips(info)
    try:
        fingerprint = corpus_fingerprint(run_training_clips(root, info), kind)
    except CorpusError as exc:
        if not other_corpus:
            raise RunError(f"{exc}; cannot check it is the corpus {run_dir} was trained on"
                           + (f" ({flag} to use it anyway)" if flag else "")) from None
        fingerprint = None
    record = {"path": str(root), "fingerprint": fingerprint, "fingerprint_kind": kind,
              "run_fingerprint": info.corpus.fingerprint,
              "matches_run": fingerprint == info.corpus.fingerprint}
    if skip_bad:
        record["skip_bad_clips"] = True
    if not record["matches_run"] and not other_corpus:
        raise RunError(f"{root}: not the corpus {run_dir} was trained on (its '{info.machine}' "
                       f"training clips have fingerprint {str(fingerprint)[:12]}, the run's "
                       f"{info.corpus.fingerprint[:12]}); {give}{anyway}")
    if test_clips and info.corpus.test_fingerprint is not None:
        test = corpus_test_fingerprint(root, info.machine)
        record["test_matches_run"] = test == info.corpus.test_fingerprint
        record["matches_run"] = record["matches_run"] and record["test_matches_run"]
        if not record["test_matches_run"] and not other_corpus:
            raise RunError(f"{root}: its '{info.machine}' test clips are not the ones {run_dir} "
                           f"recorded at training (fingerprint {str(test)[:12]}, the run's "
                           f"{info.corpus.test_fingerprint[:12]}); {give}{anyway}")
    return record


def skipped_bad_clips(info: RunInfo) -> bool:
    """Whether the run was trained with ``--skip-bad-clips`` leaving clips out (its
    ``corpus.scan``): checking its corpus must leave out the same ones, or the fingerprint
    would be over other clips and the run's own corpus refused."""
    found = getattr(info.corpus, "scan", None)
    skipped = found.get("skipped") if isinstance(found, dict) else None
    return isinstance(skipped, dict) and any(r in REFUSED and n for r, n in skipped.items())


def run_training_clips(root: str | Path, info: RunInfo, skip_bad: bool = False) -> list[Clip]:
    """The run's training clips under ``root``, as training saw them: a run trained with
    ``--skip-bad-clips`` leaves the same clips out, so what reads them again (the corpus
    check, a refit, int8 calibration, the rule arrays per artifact) neither stops on a
    clip training passed over nor splits them otherwise than training did. ``skip_bad``
    passes damaged clips over whatever the run did (another corpus, on purpose)."""
    return scan(root, [info.machine], split="train",
                skip_bad=skip_bad or skipped_bad_clips(info))


def corpus_test_fingerprint(root: Path, machine: str) -> str | None:
    """The content fingerprint of ``machine``'s test clips under ``root`` (None: none there,
    or a test folder the scan refuses)."""
    try:
        clips = scan_corpus(root, [machine], split="test").clips
    except CorpusError:
        return None
    return corpus_fingerprint(clips) if clips else None


def weights_digest(run_dir: Path, info: RunInfo | None = None) -> str:
    """sha256 over the run's own files (name and content), run.json and sub-folders (an
    evaluation kept inside the run) left out, a fusion's member runs included: what a
    bundle records of the run it came from, so that verify can tell that run from another
    (docs/export.md)."""
    run_dir = Path(run_dir)
    info = info or read_run(run_dir)
    folders = [("", run_dir)] + [(f"{m.run}/", run_dir / m.run) for m in info.members or []]
    h = hashlib.sha256()
    for prefix, folder in folders:
        if not folder.is_dir():
            raise RunError(f"{folder}: a member run of {run_dir} is missing")
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and \
                    not (prefix == "" and path.name == RUN_FILE):
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                h.update(f"{prefix}{path.name}:{digest}\n".encode())
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
        # unique even for two runs started in one second (evaluations and bundles name it)
        "run_id": f"{method}-{machine}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-"
                  f"{uuid.uuid4().hex[:6]}",
        "method": method,
        "machine": machine,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "feature_spec": spec.to_dict(),
        "params": params,
        "sections": sorted({c.section for c in train_clips}),
        # absolute: a relative path would name another corpus from another folder
        "corpus": {"root": str(train_clips[0].path.parents[2].absolute()) if train_clips
                   else "",
                   "fingerprint": corpus_fingerprint(train_clips),
                   "fingerprint_kind": CONTENT,
                   "n_train": len(train_clips),
                   "test_fingerprint": corpus_test_fingerprint(train_clips[0].path.parents[2], machine)
                   if train_clips else None},
        "normal_scores": normal_scores,
        "code_version": code_version(),
        **(extra or {}),
    }
    info = parse_run(json.loads(json.dumps(data)), str(run_dir / RUN_FILE))
    save_run(run_dir, info)
    return info


def save_run(run_dir: Path, info: RunInfo) -> None:
    """(Re)write run.json: after a refit or once the training time is known."""
    write_atomic(Path(run_dir) / RUN_FILE, info.to_json())


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
        _repair(Path(run_dir))
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no run.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RunError(f"{path}: not a run.json (JSON nested too deeply)") from None
    return parse_run(data, str(path))


def _repair(path: Path) -> None:
    """A run (or a folder of runs) that a killed ``train --force`` left mid-swap or half
    built is put right before it is read: the old run back, or the new one kept, a
    half-built one removed (harken/common/atomic.py)."""
    repair(path)
    if path.is_dir():
        repair_folder(path)


def find_runs(path: Path) -> list[Path]:
    """A run directory, or a folder of them (one per machine type): the one listing of runs
    (evaluate, describe, export). Hidden sub-folders are never runs: a ``.fan.new-PID`` a
    killed training left is removed first, or skipped while its builder still runs."""
    path = Path(path)
    _repair(path)
    if (path / "run.json").is_file():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/run.json")
                  if not p.parent.name.startswith(".")) if path.is_dir() else []
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
