"""'Something else' sounds for the simplified Neyman-Pearson objective: pink noise and the
other machine types of the corpus, as log-mels (mixed into normal inputs during training)."""

from __future__ import annotations

import numpy as np
from scipy import signal

from agent.features import FeatureSpec, logmel
from training.data.corpus import CorpusError, Clip, machine_types, scan
from training.data.windows import clip_features


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise through Kellet's three-pole approximation of a -3 dB/octave
    filter (scipy.signal.lfilter), normalised to unit RMS."""
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1, -2.494956002, 2.017265875, -0.522189400]
    x = signal.lfilter(b, a, rng.standard_normal(n + 2000))[2000:]
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def pseudo_anomaly_pool(clips: list[Clip], spec: FeatureSpec, seed: int = 0,
                        per_type: int = 20, noise_clips: int = 10, noise_seconds: float = 10.0,
                        progress: bool = True
                        ) -> tuple[list[np.ndarray], list[str]]:
    """Log-mels of up to ``per_type`` training clips of every other machine type in the
    corpus of ``clips``, plus ``noise_clips`` pink-noise clips; and where each came from."""
    rng = np.random.default_rng(seed)
    machine = clips[0].machine
    root = clips[0].path.parents[2]
    pool_clips: list[Clip] = []
    try:
        others = [m for m in machine_types(root) if m != machine]
    except CorpusError:
        others = []
    for other in others:
        train = scan(root, [other], split="train")
        pool_clips += [train[i] for i in rng.choice(len(train), min(per_type, len(train)),
                                                    replace=False)]
    feats = clip_features(pool_clips, spec, progress, desc="pseudo-anomaly sources")
    sources = [c.machine for c in pool_clips]
    for _ in range(noise_clips):
        feats.append(logmel(pink_noise(int(noise_seconds * spec.sample_rate), rng), spec))
        sources.append("pink-noise")
    return feats, sources
