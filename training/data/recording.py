"""A continuous recording of one machine going from normal to faulty, stitched from a
corpus's test clips (normal clips of a section, then its anomalous clips): the input of
the README's end-to-end demo and of anyone's first `harken run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harken.agent.sources.wavio import read_wav, write_wav
from harken.common.errors import UsageError
from harken.training.data.corpus import CorpusError, scan


def normal_then_faulty(root: Path, machine: str, section: int, out: Path, normal: int = 6,
                       faulty: int = 6, domain: str = "source", rate: int = 16000) -> dict:
    for key, value, least in (("--normal", normal, 1), ("--faulty", faulty, 1), ("--section", section, 0)):
        if value < least:
            raise UsageError(f"{key} must be at least {least}, got {value}")
    clips = [c for c in scan(root, [machine], split="test")
             if c.section == section and c.domain == domain]
    normals = [c for c in clips if c.label == "normal"][:normal]
    faults = [c for c in clips if c.label == "anomaly"][:faulty]
    if len(normals) < normal or len(faults) < faulty:
        raise CorpusError(f"{root}/{machine}/test: section {section:02d} ({domain}) has "
                          f"{len(normals)} normal and {len(faults)} anomalous labelled clips; "
                          f"{normal} and {faulty} wanted")
    parts = [read_wav(c.path, rate)[0] for c in normals + faults]
    change = sum(len(p) for p in parts[:normal]) / rate
    write_wav(out, np.concatenate(parts), rate)
    return {"file": str(out), "seconds": sum(len(p) for p in parts) / rate,
            "fault_starts_at_s": change, "normal_clips": [c.name for c in normals],
            "faulty_clips": [c.name for c in faults]}
