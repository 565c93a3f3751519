"""The inference graph of a run: the network the device runs, batch norm folded, with the
input shape of one device window and named outputs.

AE runs export the dense AE (output ``reconstruction``); classifier runs export
standardisation + MobileNetV2 + head (outputs ``logits`` and ``embedding``; the dual-input
network adds its spectrum branch and reads the spectrum rows of the image); spectral-knn
runs export the window moments (output ``moments``: per-value mean and standard deviation
over the window's frames; no weights). Training-only parts (the contrastive AE and
projection heads, dropout) are not in the graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from harken.common.errors import HarkenError
from harken.agent.features import FeatureSpec, windows
from harken.agent.model.scorer import model_input
from harken.training.autoencoder import AutoencoderMethod
from harken.training.classifier import ClassifierMethod
from harken.training.data.corpus import CorpusError, scan
from harken.training.data.windows import clip_features
from harken.training.methods import METHODS
from harken.training.runs import read_run
from harken.training.spectral_knn import SpectralKnn

EXPORTABLE = (AutoencoderMethod, ClassifierMethod, SpectralKnn)


class ExportError(HarkenError, ValueError):
    """A run or request that cannot be exported; the message says which and why."""


@dataclass
class InferenceGraph:
    module: nn.Module            # eval mode, BN folded
    input_shape: tuple[int, ...]  # one window, batch 1 (torch layout)
    outputs: tuple[str, ...]     # output semantics, in the module's output order
    method: object               # the loaded training method (for its scoring arrays)

    def model_input(self, window: np.ndarray) -> np.ndarray:
        """One (frames, mels) feature window in this graph's input layout."""
        return model_input(window, self.input_shape)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy with every Conv2d/Linear -> BatchNorm pair inside a Sequential fused into the
    Conv2d/Linear (torch's own fusion functions), the BatchNorm replaced by Identity."""
    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            a, b = seq[i], seq[i + 1]
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(a, b), nn.Identity()
            elif isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d):
                seq[i], seq[i + 1] = fuse_linear_bn_eval(a, b), nn.Identity()
    return module


class WindowMoments(nn.Module):
    """(1, frames * values) window, frame-major -> (1, 2 * values): each value's mean and
    (population) standard deviation over the frames. agent/model/rules/spectral_knn.py's
    ``window_moments`` is its numpy reference."""

    def __init__(self, frames: int, values: int) -> None:
        super().__init__()
        self.frames, self.values = frames, values

    def forward(self, x):
        w = x.reshape(self.frames, self.values)
        mean = w.mean(dim=0, keepdim=True)
        std = ((w - mean) ** 2).mean(dim=0, keepdim=True).sqrt()
        return torch.cat([mean, std], dim=1)


def load_graph(run_dir: Path) -> InferenceGraph:
    info = read_run(run_dir)
    cls = METHODS.get(info["method"])
    if cls is None or not issubclass(cls, EXPORTABLE):
        exportable = sorted(n for n, c in METHODS.items() if issubclass(c, EXPORTABLE))
        raise ExportError(f"{run_dir}: method '{info['method']}' has no device graph; "
                          f"exportable methods: {exportable}")
    method = cls.load(run_dir)
    spec = method.spec
    if isinstance(method, SpectralKnn):
        return InferenceGraph(WindowMoments(spec.window_frames, spec.n_features).eval(),
                              (1, spec.window_frames * spec.n_features), ("moments",), method)
    folded = fold_batchnorm(method.model)
    if isinstance(method, AutoencoderMethod):
        return InferenceGraph(folded, (1, spec.window_frames * spec.n_mels), ("reconstruction",),
                              method)
    # the image's rows: the mels, then the spectrum's bins for the dual-input network
    return InferenceGraph(folded, (1, 1, spec.n_features, spec.window_frames),
                          ("logits", "embedding"), method)


def calibration_windows(root: Path, machine: str, spec: FeatureSpec, n: int, seed: int = 0
                        ) -> np.ndarray:
    """``n`` feature windows (frames, mels) drawn from the TRAINING clips of ``machine``
    under the corpus ``root`` (never test clips): what int8 calibration sees."""
    try:
        clips = scan(Path(root), [machine], split="train")
    except CorpusError as exc:
        raise ExportError(f"calibration data: {exc}") from None
    rng = np.random.default_rng(seed)
    picked = [clips[i] for i in sorted(rng.choice(len(clips), min(len(clips), 40), replace=False))]
    feats = clip_features(picked, spec, progress=False)
    all_windows = np.concatenate([windows(f, spec) for f in feats])
    if len(all_windows) < n:
        raise ExportError(f"calibration data: only {len(all_windows)} windows in "
                          f"{len(picked)} training clips of '{machine}' under {root}; "
                          f"{n} needed")
    return all_windows[np.sort(rng.choice(len(all_windows), n, replace=False))]
