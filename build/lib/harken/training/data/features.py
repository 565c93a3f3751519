"""Log-mel features of corpus clips, through the one front end in agent.features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from harken.agent.features import FeatureSpec, LogMelExtractor
from harken.training.data.corpus import Clip, load


def clip_logmels(clips: Sequence[Clip], spec: FeatureSpec, progress: bool = True,
                 desc: str = "features") -> list[np.ndarray]:
    """(n_frames, n_mels) float32 log-mel per clip, in order."""
    extract = LogMelExtractor(spec)
    return [extract(load(c, spec.sample_rate))
            for c in tqdm(clips, desc=desc, unit="clip", disable=not progress, leave=False)]
