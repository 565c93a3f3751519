"""DCASE-format corpora (2020-2025 layouts, real or synthetic) as clip records.

Layout: ``<root>/<machine>/{train,test}/<clip>.wav`` with clip names

* 2020: ``{normal,anomaly}_id_XX_NNNNNNNN.wav`` (evaluation sets: ``id_XX_NNNNNNNN.wav``)
* 2021-2025: ``section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_attrs].wav``,
  attributes as ``key_value`` pairs or ``noAttribute`` (evaluation sets drop the label,
  2023+ evaluation sets are ``section_XX_NNNN.wav``).
"""

from __future__ import annotations

import re
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
    r"(?:_(?P<label>normal|anomaly))?_(?P<index>\d+)(?:_(?P<attrs>.+))?\.wav$")
_RE_2023_EVAL = re.compile(r"^section_(?P<section>\d+)_(?P<index>\d+)\.wav$")
_RE_2020 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<section>\d+)_(?P<index>\d+)\.wav$")


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
    found = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and any((p / s).is_dir() for s in SPLITS))
    if not found:
        raise CorpusError(
            f"{root}: no machine types found; expected <root>/<machine>/train/*.wav "
            "(run 'harken-train synth' to make a corpus)")
    return found


def scan(root: str | Path, machines: list[str] | None = None,
         split: str | None = None) -> list[Clip]:
    """All clips of the corpus (optionally of some machine types / one split), sorted."""
    root = Path(root)
    available = machine_types(root)
    chosen = machines or available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise CorpusError(f"{root}: machine type(s) {unknown} not in corpus (has {available})")
    clips = []
    for machine in chosen:
        for s in ([split] if split else SPLITS):
            folder = root / machine / s
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.wav")):
                clips.append(parse_clip_name(path, machine, s))
    if not clips:
        raise CorpusError(f"{root}: no .wav clips for machine(s) {chosen}")
    return clips


def load(clip: Clip, sample_rate: int) -> np.ndarray:
    """Samples of a clip as float32 mono at ``sample_rate``."""
    try:
        return read_wav(clip.path, sample_rate)[0]
    except WavError as exc:
        raise CorpusError(str(exc)) from None
