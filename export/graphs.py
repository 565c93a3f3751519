"""The inference graph of a run: the network the device runs, batch norm folded, with the
input shape of one device window and named outputs.

Each exportable method gives its own (training/method.py's ``Exportable.device_graph``): AE
runs the dense AE (output ``reconstruction``); classifier runs standardisation + MobileNetV2
+ head (outputs ``logits`` and ``embedding``; the dual-input network adds its spectrum branch
and reads the spectrum rows of the image); spectral-knn runs the window moments (output
``moments``: per-value mean and standard deviation over the window's frames; no weights).
Training-only parts (the contrastive AE and projection heads, dropout) are not in the graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from harken.common.errors import HarkenError
from harken.agent.features import FeatureSpec, windows
from harken.agent.model.scorer import model_input
from harken.training.data.corpus import CorpusError, scan
from harken.training.data.windows import clip_features
from harken.training.method import Exportable
from harken.training.methods import METHODS
from harken.training.models.window_moments import WindowMoments
from harken.training.runs import read_run

__all__ = ["ExportError", "InferenceGraph", "WindowMoments", "calibration_windows",
           "exportable_methods", "fold_batchnorm", "load_graph"]


class ExportError(HarkenError, ValueError):
    """A run or request that cannot be exported; the message says which and why."""


@dataclass
class InferenceGraph:
    module: nn.Module            # eval mode, BN folded
    input_shape: tuple[int, ...]  # one window, batch 1 (torch layout)
    outputs: tuple[str, ...]     # output semantics, in the module's output order
    method: Exportable | None    # the loaded training method (its rule and arrays)
    # int8 TFLite may keep float builtins for the ops whose int8 kernels would not stay
    # accurate (export/tflite_export.py ``_quantized``, docs/export.md); the method's
    # DeviceGraph says so
    tflite_float_fallback: bool = False

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


def exportable_methods() -> list[str]:
    """The methods with a device graph (training/method.py's ``Exportable``)."""
    return sorted(n for n, c in METHODS.items() if issubclass(c, Exportable))


def load_graph(run_dir: Path) -> InferenceGraph:
    info = read_run(run_dir)
    cls = METHODS.get(info.method)
    if cls is None or not issubclass(cls, Exportable):
        raise ExportError(f"{run_dir}: method '{info.method}' has no device graph; "
                          f"exportable methods: {exportable_methods()}")
    method = cls.load(run_dir)
    graph = method.device_graph()
    return InferenceGraph(fold_batchnorm(graph.module), graph.input_shape, graph.outputs, method,
                          graph.tflite_float_fallback)


CALIBRATION_CLIPS = 40      # clips read at a time for calibration windows


def calibration_windows(root: Path, machine: str, spec: FeatureSpec, n: int, seed: int = 0,
                        skip_bad: bool = False) -> np.ndarray:
    """``n`` feature windows (frames, mels) drawn from the TRAINING clips of ``machine``
    under the corpus ``root`` (never test clips): what int8 calibration sees. 40 clips
    drawn with the seed; 40 more at a time while they hold fewer than ``n`` windows (a
    network with long windows, AEGAN-AD's 128-frame patches, gets few from each clip).
    ``skip_bad``: damaged clips left out (a run trained with ``--skip-bad-clips``, or
    another corpus read for calibration only), not refused."""
    try:
        clips = scan(Path(root), [machine], split="train", skip_bad=skip_bad)
    except CorpusError as exc:
        raise ExportError(f"calibration data: {exc}") from None
    rng = np.random.default_rng(seed)
    first = rng.choice(len(clips), min(len(clips), CALIBRATION_CLIPS), replace=False)
    picked = [clips[i] for i in sorted(first)]
    parts = [windows(f, spec) for f in clip_features(picked, spec, progress=False)]
    used = len(picked)
    # more clips in an order of their own (``rng``'s draws, and so the windows of a corpus
    # where 40 clips suffice, stay what they were)
    taken = set(first.tolist())
    rest = [int(i) for i in np.random.default_rng(seed + 1).permutation(len(clips))
            if int(i) not in taken]
    while sum(len(w) for w in parts) < n and rest:
        batch, rest = sorted(rest[:CALIBRATION_CLIPS]), rest[CALIBRATION_CLIPS:]
        picked = [clips[i] for i in batch]
        parts += [windows(f, spec) for f in clip_features(picked, spec, progress=False)]
        used += len(picked)
    all_windows = np.concatenate(parts)
    if len(all_windows) < n:
        raise ExportError(f"calibration data: only {len(all_windows)} windows in all "
                          f"{used} training clips of '{machine}' under {root}; {n} needed")
    return all_windows[np.sort(rng.choice(len(all_windows), n, replace=False))]
