"""spectral-knn's device graph: a window's per-value mean and standard deviation."""

from __future__ import annotations

import torch
from torch import nn


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
