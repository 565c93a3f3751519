"""The DCASE 2020-2024 baseline autoencoder, layer for layer.

640 -> 128 -> 128 -> 128 -> 128 -> 8 -> 128 -> 128 -> 128 -> 128 -> 640; every hidden
Linear (the bottleneck included) is followed by BatchNorm1d and ReLU, the output Linear is
plain. Static shapes and only Linear/BN/ReLU, so it folds and quantises cleanly to int8.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


class DenseAE(nn.Module):
    def __init__(self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8,
                 depth: int = 4) -> None:
        super().__init__()
        self.input_dim = input_dim
        enc: list[nn.Module] = _block(input_dim, hidden)
        for _ in range(depth - 1):
            enc += _block(hidden, hidden)
        enc += _block(hidden, bottleneck)
        dec: list[nn.Module] = _block(bottleneck, hidden)
        for _ in range(depth - 1):
            dec += _block(hidden, hidden)
        dec.append(nn.Linear(hidden, input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bottleneck code, reconstruction): the contrastive method needs both."""
        z = self.encoder(x)
        return z, self.decoder(z)


def per_sample_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The baseline's anomaly score of one vector: mean squared error over its dimensions."""
    return ((x - x_hat) ** 2).flatten(1).mean(dim=1)
