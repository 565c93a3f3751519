"""A section's reference bank of normal embeddings, as the classifiers keep it: what the
``embedding`` and ``embedding-density`` rules need (agent/model/rules/), saved as plain .npy
files in the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harken.training.torch_method import load_array

PARTS = ("", "_target", "_scale")          # file suffixes every bank has


@dataclass
class SectionBank:
    entries: np.ndarray           # unit embeddings: source k-means centres, then target clips
    is_target: np.ndarray         # per entry: a target-domain clip
    scale: np.ndarray             # (source, target): a domain's typical unseen distance
    clips: np.ndarray | None      # every training clip's unit embedding (density rule)

    def save(self, run_dir: Path, section: int) -> None:
        stem = run_dir / f"bank_section_{section:02d}"
        np.save(f"{stem}.npy", self.entries)
        np.save(f"{stem}_target.npy", self.is_target)
        np.save(f"{stem}_scale.npy", self.scale)
        if self.clips is not None:
            np.save(f"{stem}_clips.npy", self.clips)

    @staticmethod
    def missing(run_dir: Path, section: int) -> str | None:
        """The first file of the bank that is not there (None if it is complete)."""
        return next((f"bank_section_{section:02d}{p}.npy" for p in PARTS
                     if not (run_dir / f"bank_section_{section:02d}{p}.npy").is_file()), None)

    @classmethod
    def load(cls, run_dir: Path, section: int) -> SectionBank:
        """Runs made before the density rule have no clip bank: ``clips`` is then None."""
        stem = f"bank_section_{section:02d}"
        clips = load_array(run_dir, f"{stem}_clips.npy") \
            if (run_dir / f"{stem}_clips.npy").is_file() else None
        return cls(load_array(run_dir, f"{stem}.npy"), load_array(run_dir, f"{stem}_target.npy"),
                   load_array(run_dir, f"{stem}_scale.npy"), clips)
