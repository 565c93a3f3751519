"""The spectrum branch of the dual-input classifier (Wilkinghoff's DCASE systems): an
embedding of the window's mean log power spectrum at full linear resolution.

Why a second branch: MobileNetV2 over the log-mel image pools over frequency at the end
(GAMP), and its training task (section and attribute) never needs the level of the
spectral envelope, so its embedding loses what broadband faults change
(bench/probe_embeddings.py). The mean spectrum keeps every one of the 513 bins: tonal
lines, narrow resonances and the envelope, and a small network on it is cheap.

Per-bin standardisation with the training windows' statistics (fixed buffers), then three
Linear + BatchNorm + ReLU layers and a linear embedding. Every op (Linear, folded BN, ReLU,
mean over the window's frames) exports to ONNX and int8 TFLite with static shapes.
"""

from __future__ import annotations

import torch
from torch import nn


class SpectrumBranch(nn.Module):
    """(batch, n_freqs) mean log power spectra -> (batch, embedding_dim)."""

    def __init__(self, n_freqs: int, embedding_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_freqs))
        self.register_buffer("std", torch.ones(n_freqs))
        self.body = nn.Sequential(
            nn.Linear(n_freqs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, embedding_dim))

    def set_statistics(self, spectra: torch.Tensor) -> None:
        """Per-bin mean and spread of the training windows' mean spectra; a bin that never
        varies gets the median spread, so it cannot blow up."""
        std = spectra.std(dim=0)
        self.mean.copy_(spectra.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-6, std, std.median().clamp_min(1e-6)))

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.body((spectra - self.mean) / self.std)
