"""Writes the synthetic corpus in the DCASE 2023 layout.

Each clip: a machine (one section = one unit) at an operating point, through a room,
with the factory background at some SNR, picked up by a microphone. The target domain
differs from the source in operating point, background, SNR and microphone, and has
only a few training clips (DCASE 2022+ style). Anomalies appear in test clips only.

Every clip is seeded from (seed, machine, section, domain, split, label, index), so the
corpus is identical whatever the number of worker processes.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harken.common.errors import UsageError
from harken.agent.sources.wavio import write_wav
from harken.training.synth import real_sounds
from harken.training.synth.acoustics import (
    SR, db, factory_background, microphone, rms, room,
)
from harken.training.synth.machines import MACHINES
from harken.training.synth.real_sounds import RealSounds
from harken.training.synth.roles import TEST_TYPES, TUNING_TYPES, VALIDATION_TYPES


@dataclass(frozen=True)
class CorpusSize:
    machines: tuple[str, ...]
    sections: int
    clip_seconds: float
    source_train: int     # per section
    target_train: int     # per section
    test_per_cell: int    # normals, and anomalies, per section and domain


# The six tuning types: tiny and large hold these, as before issue 39's types were added
# (roles.py: the other types are set apart for validation and test).
ALL_MACHINES = TUNING_TYPES
SIZES: dict[str, CorpusSize] = {
    "tiny": CorpusSize(ALL_MACHINES, 2, 2.0, 8, 2, 2),
    "small": CorpusSize(("fan", "gearbox", "bearing", "valve"), 2, 10.0, 40, 5, 10),
    "standard": CorpusSize(("fan", "gearbox", "bearing", "valve"), 2, 10.0, 100, 10, 50),
    "large": CorpusSize(ALL_MACHINES, 3, 10.0, 990, 10, 50),
    # docs/corpus.md: types nobody tuned for, the size of "standard"
    "validation": CorpusSize(VALIDATION_TYPES, 2, 10.0, 100, 10, 50),
    "unseen": CorpusSize(TEST_TYPES, 2, 10.0, 100, 10, 50),
}


@dataclass(frozen=True)
class DomainAcoustics:
    backgrounds: tuple[str, ...]
    snr_db: tuple[float, float]       # machine over background
    rt60: float
    wet: float
    mic: tuple[float, float, float]   # high-pass Hz, low-pass Hz, tilt dB/octave
    gain_db: float


DOMAINS = {
    "source": DomainAcoustics(("hall",), (2.0, 8.0), 0.35, 0.25, (40.0, 7600.0, 0.0), 0.0),
    "target": DomainAcoustics(("workshop",), (0.0, 5.0), 0.7, 0.4, (90.0, 6000.0, -1.5), -3.0),
}

# Anomaly-to-normal ratio range for additive faults, and severity range for parametric
# ones: most anomalies are subtle, as in DCASE.
ANR_DB = (-16.0, -4.0)
SEVERITY = (0.25, 1.0)
MACHINE_RMS = 0.06


def clip_rng(seed: int, *key: object) -> np.random.Generator:
    words = [seed] + [zlib.crc32(str(k).encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass(frozen=True)
class ClipJob:
    machine: str
    section: int
    domain: str
    split: str
    label: str
    index: int
    seconds: float
    seed: int

    def filename(self, attrs: dict) -> str:
        tail = "_".join(f"{k}_{v}" for k, v in attrs.items()) or "noAttribute"
        return (f"section_{self.section:02d}_{self.domain}_{self.split}_{self.label}_"
                f"{self.index:04d}_{tail}.wav")


def render_clip(job: ClipJob, real: RealSounds | None = None) -> tuple[np.ndarray, dict, dict]:
    """-> (samples, attributes, ground truth) for one clip. With ``real`` recordings, the
    background takes a real share and real events are added (real_sounds.py); they are
    drawn from a generator of their own, so the machine, fault and levels of the clip are
    the same as without them."""
    machine = MACHINES[job.machine]
    rng = clip_rng(job.seed, job.machine, job.section, job.domain, job.split, job.label, job.index)
    n = int(round(job.seconds * SR))
    geometry = machine.geometry(job.section)
    points = machine.operating_points(job.section, job.domain)
    op = points[int(rng.integers(len(points)))]
    fault, severity, anr = None, 0.0, None
    if job.label == "anomaly":
        fault = machine.faults[int(rng.integers(len(machine.faults)))]
        severity = float(rng.uniform(*SEVERITY))
    rendered = machine.render(rng, geometry, op, n, fault, severity)
    # Fixed gain per machine unit: a louder operating point stays louder.
    level = MACHINE_RMS / _reference_rms(job.machine, job.section)
    x = rendered.normal * level
    if rendered.added is not None:
        anr = float(rng.uniform(*ANR_DB)) + machine.anr_offset_db.get(fault, 0.0)
        x = x + rendered.added / rms(rendered.added) * rms(x) * db(anr)
    acoustic = DOMAINS[job.domain]
    x = room(x, rng, acoustic.rt60, acoustic.wet)
    bg = factory_background(n, rng, acoustic.backgrounds[int(rng.integers(len(acoustic.backgrounds)))])
    snr = float(rng.uniform(*acoustic.snr_db))
    used = {}
    if real is not None:
        real_rng = clip_rng(job.seed, "real-sounds", job.machine, job.section, job.domain, job.split,
                            job.label, job.index)
        bg, events, used = real.render(n, real_rng, bg)
        x = x + events * MACHINE_RMS
    x = x + bg / rms(bg) * MACHINE_RMS * db(-snr)
    x = microphone(x, *acoustic.mic) * db(acoustic.gain_db)
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:  # the recorder's limiter; rare at these levels
        x = x * (0.99 / peak)
    truth = {"fault": fault, "severity": round(severity, 3), "anr_db": None if anr is None else round(anr, 2),
             "snr_db": round(snr, 2), **used}
    return x.astype(np.float32), op, truth


_REF_CACHE: dict[tuple[str, int], float] = {}


def _reference_rms(machine: str, section: int) -> float:
    key = (machine, section)
    if key not in _REF_CACHE:
        m = MACHINES[machine]
        op = m.operating_points(section, "source")[0]
        out = m.render(np.random.default_rng(12345), m.geometry(section), op, 2 * SR, None, 0.0)
        _REF_CACHE[key] = float(np.sqrt(np.mean(out.normal ** 2)))
    return _REF_CACHE[key]


def plan(size: CorpusSize, seed: int, machines: tuple[str, ...] | None = None) -> list[ClipJob]:
    jobs = []
    for machine in machines or size.machines:
        if machine not in MACHINES:
            raise UsageError(f"unknown machine type '{machine}'; choose from {sorted(MACHINES)}")
        for section in range(size.sections):
            cells = [("source", "train", "normal", size.source_train),
                     ("target", "train", "normal", size.target_train)]
            for domain in ("source", "target"):
                cells += [(domain, "test", "normal", size.test_per_cell),
                          (domain, "test", "anomaly", size.test_per_cell)]
            index = {"train": 0, "test": 0}
            for domain, split, label, count in cells:
                for _ in range(count):
                    jobs.append(ClipJob(machine, section, domain, split, label, index[split],
                                        size.clip_seconds, seed))
                    index[split] += 1
    return jobs


def _write_one(args: tuple[ClipJob, str, str | None]) -> dict:
    job, root, real_dir = args
    x, attrs, truth = render_clip(job, real_sounds.load(real_dir) if real_dir else None)
    path = Path(root) / job.machine / job.split / job.filename(attrs)
    write_wav(path, x, SR)
    return {"file": f"{job.machine}/{job.split}/{path.name}", **asdict(job), **truth}


MARKER = ".harken-synth"       # written first: this folder is a synthetic corpus, ours to replace
IN_PROGRESS = "in progress"    # the marker's first line until corpus.json is written, last
DONE = "complete"


def _mark(root: Path, state: str) -> None:
    tmp = root / f"{MARKER}.tmp"
    tmp.write_text(f"{state}\na synthetic corpus written by 'harken-train synth'; "
                   "synth may replace what is in this folder\n")
    os.replace(tmp, root / MARKER)


def check_complete(root: Path, error: type[Exception] = UsageError) -> None:
    """Refuse a corpus that synth began and did not finish (killed, or failed midway):
    its clips are a part of the corpus, and training on them would give a run of other
    data than corpus.json would describe. corpus.json is written last, then the marker
    says it is complete (docs/reliability.md, workstation: corpora)."""
    marker = root / MARKER
    if not marker.is_file():
        return
    try:
        state = marker.read_text(errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return
    meta = "there" if (root / "corpus.json").is_file() else "missing"
    if state == IN_PROGRESS or meta == "missing":
        raise error(f"{root}: an incomplete synthetic corpus (synth did not finish: {MARKER} "
                    f"says {state!r}, corpus.json {meta}); run synth again into it")


def is_own_corpus(root: Path) -> bool:
    """A folder this command wrote: its marker, or (corpora written before the marker)
    a corpus.json that says ``"generator": "harken synth"``."""
    if (root / MARKER).is_file():
        return True
    try:
        meta = json.loads((root / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == "harken synth"


def claim_folder(root: Path) -> None:
    """Make ``root`` ours to write: create it, or check that it is empty or our own
    earlier corpus (whose clips and corpus.json are removed, so a corpus of another size
    or seed never mixes with the earlier one); refuse anything else in one line."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {root}: a file, not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not is_own_corpus(root):
            raise UsageError(f"--out {root}: the folder holds files that 'harken-train synth' "
                             "did not write (your recordings?); give an empty or new folder")
        for machine in MACHINES:
            for split in ("train", "test"):
                folder = root / machine / split
                if folder.is_dir() and not folder.is_symlink():
                    for clip in folder.glob("*.wav"):
                        clip.unlink()
        (root / "corpus.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    _mark(root, IN_PROGRESS)


def synthesize(out: str | Path, size: str = "tiny", seed: int = 0,
               machines: tuple[str, ...] | None = None, workers: int | None = None,
               progress: bool = True, real_dir: str | Path | None = None) -> Path:
    """Write the corpus under ``out`` and a ground-truth table (corpus.json). ``out`` must
    be empty (or not yet there) or a corpus this command wrote before (its marker file),
    whose clips are replaced: never a folder of the user's own recordings. ``real_dir``:
    real backgrounds and events mixed into every clip (real_sounds.py), read and checked
    before any clip is written."""
    if size not in SIZES:
        raise UsageError(f"unknown corpus size '{size}'; choose from {list(SIZES)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a whole number from 0 to 2**63 - 1, got {seed}")
    spec = SIZES[size]
    jobs = plan(spec, seed, machines)
    real = real_sounds.load(real_dir) if real_dir is not None else None
    real_arg = str(real.folder.resolve()) if real is not None else None
    root = Path(out)
    claim_folder(root)
    for job in {(j.machine, j.split) for j in jobs}:
        (root / job[0] / job[1]).mkdir(parents=True, exist_ok=True)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = tqdm(total=len(jobs), desc=f"synth {size}", unit="clip", disable=not progress)
    records = []
    if workers == 1:
        for job in jobs:
            records.append(_write_one((job, str(root), real_arg)))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for rec in pool.map(_write_one, [(j, str(root), real_arg) for j in jobs], chunksize=8):
                records.append(rec)
                bar.update()
    bar.close()
    meta = {"generator": "harken synth", "size": size, "seed": seed, "sample_rate": SR,
            "machines": sorted({j.machine for j in jobs}), "sections": spec.sections,
            "clip_seconds": spec.clip_seconds,
            "real_sounds": real.describe() if real is not None else None, "clips": records}
    tmp = root / "corpus.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / "corpus.json")         # last: the corpus is whole
    _mark(root, DONE)
    return root
