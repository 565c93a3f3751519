"""DCASE-format corpora (2020-2025 layouts, real or synthetic) as clip records.

Layout: ``<root>/<machine>/{train,test}/<clip>.wav`` with clip names

* 2020: ``{normal,anomaly}_id_XX_NNNNNNNN.wav`` (evaluation sets: ``id_XX_NNNNNNNN.wav``)
* 2021-2025: ``section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_attrs].wav``,
  attributes as ``key_value`` pairs or ``noAttribute`` (evaluation sets drop the label,
  2023+ evaluation sets are ``section_XX_NNNN.wav``).
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harken.common.errors import HarkenError
from harken.agent.sources.wavio import WavError, read_wav

SPLITS = ("train", "test")


class CorpusError(HarkenError, ValueError):
    """A corpus that does not follow the DCASE layout; the message names the path."""


@dataclass(frozen=True)
class Clip:
    path: Path
    machine: str
    section: int
    domain: str                 # "source" | "target"
    split: str                  # "train" | "test"
    label: str | None           # "normal" | "anomaly" | None (unlabelled evaluation data)
    index: int
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_anomaly(self) -> bool:
        return self.label == "anomaly"

    @property
    def name(self) -> str:
        return self.path.name


_RE_2021 = re.compile(
    r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)"
    r"(?:_(?P<label>normal|anomaly))?_(?P<index>\d+)(?:_(?P<attrs>.+))?\.(?i:wav)$")
_RE_2023_EVAL = re.compile(r"^section_(?P<section>\d+)_(?P<index>\d+)\.(?i:wav)$")
_RE_2020 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<section>\d+)_(?P<index>\d+)\.(?i:wav)$")


def parse_attributes(text: str | None) -> dict[str, str]:
    """``car_A1_spd_28V`` -> {"car": "A1", "spd": "28V"}; ``noAttribute`` -> {}.

    A trailing token without a value (DCASE 2021 names such as ``..._strength_1_ambient``)
    is kept with an empty value, so no information is dropped.
    """
    if not text or text == "noAttribute":
        return {}
    tokens = text.split("_")
    attrs = {}
    for i in range(0, len(tokens), 2):
        attrs[tokens[i]] = tokens[i + 1] if i + 1 < len(tokens) else ""
    return attrs


def parse_clip_name(path: str | Path, machine: str, split: str) -> Clip:
    """Parse one file name; ``split`` is the folder it lies in."""
    path = Path(path)
    name = path.name
    m = _RE_2021.match(name)
    if m:
        if m["split"] != split:
            raise CorpusError(
                f"{path}: file name says split '{m['split']}' but it lies in '{split}/'")
        return Clip(path, machine, int(m["section"]), m["domain"], split, m["label"],
                    int(m["index"]), parse_attributes(m["attrs"]))
    m = _RE_2023_EVAL.match(name)
    if m:
        return Clip(path, machine, int(m["section"]), "source", split, None, int(m["index"]))
    m = _RE_2020.match(name)
    if m:
        return Clip(path, machine, int(m["section"]), "source", split, m["label"], int(m["index"]))
    raise CorpusError(
        f"{path}: not a DCASE clip name; expected "
        "'section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_key_value...].wav' "
        "(2021-2025) or '{normal,anomaly}_id_XX_NNNNNNNN.wav' (2020)")


def machine_types(root: str | Path) -> list[str]:
    """Machine types in a corpus: the folders that hold a train/ or test/ folder."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus folder does not exist")
    try:
        found = sorted(p.name for p in root.iterdir()
                       if _is_dir(p) and any(_is_dir(p / s) for s in SPLITS))
    except OSError as exc:
        raise CorpusError(f"{root}: cannot list the corpus folder ({exc.strerror or exc})") from None
    if not found:
        raise CorpusError(
            f"{root}: no machine types found; expected <root>/<machine>/train/*.wav "
            "(run 'harken-train synth' to make a corpus)")
    return found


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:            # a symlink loop, a name the file system refuses
        return False


# Why a file beside the clips was skipped or refused (the keys of CorpusScan.skipped).
ANOMALOUS_TRAIN = "labelled anomalous in train/"
DAMAGED = "damaged WAV"
NOT_A_FILE = "not a regular file"
HIDDEN = "hidden file"
OTHER = "not a .wav file"
DUPLICATE = "same clip name twice"
# refused unless the scan is told to skip them: each silently changes what a model learns
REFUSED = (ANOMALOUS_TRAIN, DAMAGED)
SHOWN = 5                 # file names a summary line or run.json lists per reason


@dataclass
class CorpusScan:
    """What a scan found: the clips, and every file it passed over with the reason (a
    corpus broken as real downloads are must say so, not train on less without a word;
    docs/reliability.md)."""
    root: Path
    clips: list[Clip]
    skipped: dict[str, list[Path]] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)     # channel count -> clips
    problems: dict[Path, str] = field(default_factory=dict)    # damaged WAV -> what is wrong

    def summary(self) -> dict:
        """For the run record: counts per reason and the first few names."""
        return {"clips": len(self.clips),
                "skipped": {r: len(p) for r, p in self.skipped.items()},
                "skipped_files": {r: [_rel(self.root, x) for x in p[:SHOWN]]
                                  for r, p in self.skipped.items()},
                "channels": {str(k): v for k, v in sorted(self.channels.items())}}

    def log(self, log: logging.Logger | None = None) -> None:
        """One warning line per reason files were skipped; stereo clips noted."""
        log = log or logging.getLogger(__name__)
        for reason, paths in self.skipped.items():
            if reason in (OTHER, HIDDEN):
                log.info(f"{self.root}: {len(paths)} {reason}(s) ignored, e.g. "
                         f"{_rel(self.root, paths[0])}")
                continue
            names = _names(self.root, paths)
            if reason == DAMAGED:
                names = "; ".join(f"{_rel(self.root, p)} ({self.problems[p]})" for p in paths[:SHOWN])
            log.warning(f"WARNING: {self.root}: skipped {len(paths)} clip(s), {reason}: {names}")
        multi = sum(n for c, n in self.channels.items() if c > 1)
        if multi:
            log.info(f"{self.root}: {multi} clip(s) with more than one channel, mixed to mono")


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _names(root: Path, paths: list[Path]) -> str:
    shown = ", ".join(_rel(root, p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def wav_problem(path: Path) -> tuple[str | None, int]:
    """What is wrong with a WAV file's header, read without reading its samples (None when
    nothing), and its channel count. A file cut short (the header says more sample bytes
    than the file holds) would train on less without a word: scipy only warns, and the
    reader hides that warning; a header with no samples made scipy raise struct.error."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:] != b"WAVE":
                return "not a WAV file (no RIFF/WAVE header)", 0
            if head[:4] == b"RF64":
                return None, 0                  # 64-bit sizes: the reader judges
            order = "<" if head[:4] == b"RIFF" else ">"
            pos, channels = 12, 0
            while True:
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return ("header only: no 'data' chunk" if channels else
                            "no 'fmt ' chunk"), channels
                kind, length = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
                if kind == b"fmt ":
                    fmt = f.read(min(length, 16))
                    if len(fmt) < 16:
                        return "cut short inside its 'fmt ' chunk", 0
                    channels = struct.unpack(order + "H", fmt[2:4])[0]
                    if channels == 0:
                        return "the header says 0 channels", 0
                elif kind == b"data":
                    if not channels:
                        return "'data' chunk before any 'fmt ' chunk", 0
                    held = size - pos - 8
                    if length == 0 or held <= 0:
                        return "header only: it holds no samples", channels
                    if held < length and length != 0xFFFFFFFF:   # 0xFFFFFFFF: a stream's "unknown"
                        return (f"cut short: the header says {length} bytes of samples, the file "
                                f"holds {held}"), channels
                    return None, channels
                pos += 8 + length + (length & 1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", 0


def _entries(folder: Path) -> list[tuple[str, Path, bool]]:
    """(name, path, is a regular file or a link to one) of a folder's entries, sorted."""
    try:
        with os.scandir(folder) as it:
            found = []
            for e in it:
                try:
                    regular = e.is_file()
                except OSError:
                    regular = False
                found.append((e.name, Path(e.path), regular))
    except OSError as exc:
        raise CorpusError(f"{folder}: cannot list it ({exc.strerror or exc})") from None
    return sorted(found, key=lambda e: e[1])


def scan_corpus(root: str | Path, machines: list[str] | None = None, split: str | None = None,
                skip_bad: bool = False) -> CorpusScan:
    """All clips of the corpus (optionally of some machine types / one split), sorted, and
    what was passed over. ``.wav`` is matched whatever its case; only regular files (or
    links to them) count. Train clips labelled anomalous and damaged WAVs are refused in
    one line naming them, or with ``skip_bad`` skipped and counted."""
    root = Path(root)
    from harken.training.synth.corpus import check_complete   # its marker's rule, in one place
    check_complete(root, CorpusError)
    available = machine_types(root)
    chosen = machines or available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise CorpusError(f"{root}: machine type(s) {unknown} not in corpus (has {available})")
    found = CorpusScan(root, [])
    skipped: dict[str, list[Path]] = defaultdict(list)
    for machine in chosen:
        splits = [split] if split else list(SPLITS)
        present = [s for s in splits if _is_dir(root / machine / s)]
        if split and not present:
            other = next(s for s in SPLITS if s != split)
            held = _count_wavs(root / machine / other)
            raise CorpusError(
                f"{root / machine}: no {split}/ folder" + (
                    f" (its {other}/ holds {held} .wav clip(s))" if held is not None else
                    f" (nor {other}/); expected {root / machine}/{split}/*.wav"))
        for s in present:
            names: dict[str, Path] = {}
            for name, path, regular in _entries(root / machine / s):
                if not name.lower().endswith(".wav"):
                    skipped[OTHER].append(path)
                elif name.startswith("."):        # macOS '._x.wav' resource forks and the like
                    skipped[HIDDEN].append(path)
                elif not regular:
                    skipped[NOT_A_FILE].append(path)
                else:
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:     # bytes the file system gave back as-is
                        raise CorpusError(f"{os.fsencode(path)!r}: the file name is not UTF-8 "
                                          "text; rename the file") from None
                    clip = parse_clip_name(path, machine, s)
                    if clip.name.lower() in names:
                        raise CorpusError(f"{path}: the same clip as {names[clip.name.lower()]} "
                                          "(names differ only in case); keep one of them")
                    names[clip.name.lower()] = path
                    problem, channels = wav_problem(path)
                    if problem:
                        skipped[DAMAGED].append(path)
                        found.problems[path] = problem
                    elif clip.split == "train" and clip.is_anomaly:
                        skipped[ANOMALOUS_TRAIN].append(path)
                    else:
                        found.clips.append(clip)
                        found.channels[channels] = found.channels.get(channels, 0) + 1
    found.skipped = dict(skipped)
    refused = [r for r in REFUSED if r in found.skipped]
    if refused and not skip_bad:
        reason = refused[0]
        paths = found.skipped[reason]
        detail = (found.problems[paths[0]] if reason == DAMAGED else
                  "a normal reference must not be a fault")
        # only training leaves clips out (evaluate, export and verify read what a run read)
        hint = (" (training with --skip-bad-clips leaves such clips out)"
                if paths[0].parent.name.lower() == "train" else "")
        raise CorpusError(
            f"{paths[0]}: {reason} ({detail})" + (f"; {len(paths) - 1} more alike" if len(paths) > 1
                                                  else "")
            + "; repair or remove it" + hint)
    if not found.clips:
        what = f"{split}/" if split else "train/ or test/"
        extra = ("; skipped: " + ", ".join(f"{len(p)} {r}" for r, p in found.skipped.items())
                 if found.skipped else "")
        raise CorpusError(f"{root}: no .wav clips in {what} of machine(s) {chosen}{extra}")
    return found


def _count_wavs(folder: Path) -> int | None:
    if not _is_dir(folder):
        return None
    try:
        return sum(1 for e in os.scandir(folder) if e.name.lower().endswith(".wav"))
    except OSError:
        return None


def scan(root: str | Path, machines: list[str] | None = None, split: str | None = None,
         skip_bad: bool = False) -> list[Clip]:
    """The clips of ``scan_corpus``; what it passed over is logged."""
    found = scan_corpus(root, machines, split, skip_bad)
    found.log()
    return found.clips


def load(clip: Clip, sample_rate: int) -> np.ndarray:
    """Samples of a clip as float32 mono at ``sample_rate``."""
    try:
        return read_wav(clip.path, sample_rate)[0]
    except WavError as exc:
        raise CorpusError(str(exc)) from None
    except struct.error:          # scipy's reader on a header cut short (docs/reliability.md)
        raise CorpusError(f"{clip.path}: not a readable WAV file (header cut short)") from None
