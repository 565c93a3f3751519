"""'Something else' sounds: the other machine types of the corpus and pink noise. They are
extra classes for the classifiers, outliers for OEVAE's outlier exposure, mixed into normal
inputs for the simplified Neyman-Pearson objective, and mixed into held-out normal clips to
choose a score rule without test labels (``choose_rule``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import signal
from sklearn.metrics import roc_auc_score

from harken.agent.features import FeatureSpec, logmel
from harken.training.augment.mixing import mix_logmel
from harken.training.data.corpus import CorpusError, Clip, machine_types, scan
from harken.training.data.windows import clip_features


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise through Kellet's three-pole approximation of a -3 dB/octave
    filter (scipy.signal.lfilter), normalised to unit RMS."""
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1, -2.494956002, 2.017265875, -0.522189400]
    x = signal.lfilter(b, a, rng.standard_normal(n + 2000))[2000:]
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def other_machine_clips(clips: Sequence[Clip], per_type: int,
                        rng: np.random.Generator | int = 0, in_draw_order: bool = False
                        ) -> list[Clip]:
    """Up to ``per_type`` training clips (drawn with ``rng``, or a generator seeded with it)
    of every other machine type in the corpus of ``clips``, in file order per type (or in
    the order drawn); none when the corpus has one type or no corpus root."""
    if per_type <= 0:
        return []
    root, machine = clips[0].path.parents[2], clips[0].machine
    try:
        others = [m for m in machine_types(root) if m != machine]
    except CorpusError:
        return []
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    picked: list[Clip] = []
    for other in others:
        # other types' clips are only outliers: a damaged or anomalous one is left out (and
        # logged), not a reason to refuse training this type
        train = scan(root, [other], split="train", skip_bad=True)
        drawn = rng.choice(len(train), min(per_type, len(train)), replace=False)
        picked += [train[i] for i in (drawn if in_draw_order else sorted(drawn))]
    return picked


def pseudo_anomaly_pool(clips: list[Clip], spec: FeatureSpec, seed: int = 0,
                        per_type: int = 20, noise_clips: int = 10, noise_seconds: float = 10.0,
                        progress: bool = True
                        ) -> tuple[list[np.ndarray], list[str]]:
    """Log-mels of up to ``per_type`` training clips of every other machine type in the
    corpus of ``clips``, plus ``noise_clips`` pink-noise clips; and where each came from."""
    rng = np.random.default_rng(seed)
    pool_clips = other_machine_clips(clips, per_type, rng, in_draw_order=True)
    feats = clip_features(pool_clips, spec, progress, desc="pseudo-anomaly sources")
    sources = [c.machine for c in pool_clips]
    for _ in range(noise_clips):
        feats.append(logmel(pink_noise(int(noise_seconds * spec.sample_rate), rng), spec))
        sources.append("pink-noise")
    return feats, sources


def pseudo_anomalous(feats: Sequence[np.ndarray], pool: Sequence[np.ndarray], spec: FeatureSpec,
                     seed: int = 0, anr_db: tuple[float, float] = (-20.0, 0.0)
                     ) -> list[np.ndarray]:
    """Each log-mel of ``feats`` with a random ``pool`` sound (cropped or repeated to its
    length) added at an anomaly-to-normal ratio drawn uniformly from ``anr_db``."""
    rng = np.random.default_rng(seed)
    out = []
    for m in feats:
        other = pool[rng.integers(len(pool))]
        other = np.resize(other, (len(m), other.shape[1])) if len(other) < len(m) else \
            other[rng.integers(len(other) - len(m) + 1):][:len(m)]
        anr = torch.tensor([rng.uniform(*anr_db)], dtype=torch.float32)
        out.append(mix_logmel(torch.from_numpy(m[None]), torch.from_numpy(np.ascontiguousarray(
            other[None], dtype=np.float32)), anr, 20.0 / spec.power)[0].numpy())
    return out


def choose_rule(normal: Mapping[str, np.ndarray], pseudo: Mapping[str, np.ndarray]
                ) -> tuple[str, dict[str, float]]:
    """The rule whose scores best separate held-out normal clips from pseudo-anomalies (AUC),
    and every rule's AUC. No test clip is involved: this is how a user without labelled
    faults can pick a score."""
    aucs = {}
    for rule in normal:
        y = np.r_[np.zeros(len(normal[rule])), np.ones(len(pseudo[rule]))]
        aucs[rule] = float(roc_auc_score(y, np.r_[normal[rule], pseudo[rule]]))
    return max(aucs, key=aucs.get), aucs
