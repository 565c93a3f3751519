"""From clips to model inputs: per-clip log-mels, the validation split, window stacks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from harken.common.errors import DataError
from harken.agent.features import FeatureSpec, windows
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels


def fit_to_window(logmel: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Clips shorter than one window are wrapped around until they fill one, so every clip
    gets a score (the device does the same before its first full window)."""
    if len(logmel) >= spec.window_frames:
        return logmel
    if len(logmel) == 0:
        raise DataError("a clip with no frames cannot be scored")
    return np.pad(logmel, ((0, spec.window_frames - len(logmel)), (0, 0)), mode="wrap")


def clip_features(clips: Sequence[Clip], spec: FeatureSpec, progress: bool = True,
                  desc: str = "features") -> list[np.ndarray]:
    return [fit_to_window(m, spec) for m in clip_logmels(clips, spec, progress, desc)]


def validation_split(clips: Sequence[Clip], fraction: float, seed: int
                     ) -> tuple[list[int], list[int]]:
    """Indices (fit, validation): ``fraction`` of each (machine, section, domain) group, at least one
    clip from groups of 5 or more, drawn with ``seed``. Only training clips, never test."""
    if fraction <= 0:
        return list(range(len(clips))), []
    groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for i, c in enumerate(clips):
        groups[(c.machine, c.section, c.domain)].append(i)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        k = int(round(fraction * len(members)))
        if k == 0 and len(members) >= 5:
            k = 1
        val += [members[j] for j in rng.choice(len(members), size=k, replace=False)]
    val_set = set(val)
    return [i for i in range(len(clips)) if i not in val_set], sorted(val)


def stack_windows(logmels: Sequence[np.ndarray], spec: FeatureSpec
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All windows of the clips as one (n, frames, mels) float32 array, and each window's
    clip number."""
    parts = [windows(m, spec) for m in logmels]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), owner


def ae_vectors(logmels: Sequence[np.ndarray], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """DCASE AE inputs: (n, window_frames * n_mels) frame-major vectors and their clip number."""
    w, owner = stack_windows(logmels, spec)
    return w.reshape(len(w), -1), owner


def class_labels(clips: Sequence[Clip]) -> tuple[list[str], np.ndarray]:
    """Classes of the section classifier: machine type x section x attribute combination,
    where the corpus names attributes (``fan/section_00_spd_1500``), else the section alone."""
    def name(c: Clip) -> str:
        attrs = "_".join(f"{k}_{v}" for k, v in sorted(c.attributes.items()))
        return f"{c.machine}/section_{c.section:02d}" + (f"_{attrs}" if attrs else "")
    names = sorted({name(c) for c in clips})
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[name(c)] for c in clips])


def class_sections(names: Sequence[str], machine: str) -> np.ndarray:
    """Section number of each class of ``machine``; -1 for other machine types' classes."""
    return np.array([int(n.split("/")[1].split("_")[1]) if n.split("/")[0] == machine else -1
                     for n in names])


def as_images(windows_: np.ndarray):
    """(n, frames, mels) windows -> (n, 1, mels, frames) torch images (mels as height)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(windows_, dtype=np.float32)).transpose(
        1, 2).unsqueeze(1).contiguous()
