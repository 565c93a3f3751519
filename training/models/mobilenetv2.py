"""MobileNetV2 (Sandler et al., 2018) for 1 x mels x frames log-mel windows.

Inverted residual blocks with the paper's (t, c, n, s) table, a width multiplier
(0.35 / 0.5 / 1.0), global average + global max pooling (GAMP, summed) and a linear head
over the training classes (section x attribute combinations). Written out here rather
than taken from torchvision because the device side must not depend on torchvision, the
stem takes one channel, and GAMP replaces the classifier's pooling. Every op (Conv2d, BN,
ReLU6, add, pooling, Linear) exports to ONNX and int8 TFLite with static shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from harken.common.errors import DataError, UsageError

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
WIDTHS = (0.35, 0.5, 0.75, 1.0)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never down by more than 10 % (paper code)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(n_in: int, n_out: int, kernel: int, stride: int, groups: int = 1,
             act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(n_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, n_in: int, n_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = n_in * expand
        self.use_residual = stride == 1 and n_in == n_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(n_in, hidden, 1, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, n_out, 1, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Input (batch, 1, n_mels, frames); ``embed`` gives the GAMP embedding (1280 wide)."""

    def __init__(self, n_classes: int | None, width: float = 1.0, last_channels: int = 1280,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if width not in WIDTHS:
            raise UsageError(f"MobileNetV2 width {width} not supported; choose one of {WIDTHS}")
        if n_classes is not None and n_classes < 2:
            raise DataError(f"a section classifier needs at least 2 classes, got {n_classes}")
        channels = make_divisible(32 * width)
        self.embedding_dim = make_divisible(last_channels * max(1.0, width))
        layers: list[nn.Module] = _conv_bn(1, channels, 3, 2)
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers += _conv_bn(channels, self.embedding_dim, 1, 1)
        self.features = nn.Sequential(*layers)
        # n_classes None: features only, a caller supplies its own head (the cosine head)
        self.head = None if n_classes is None else nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.embedding_dim, n_classes))
        self.width = width
        self.n_classes = n_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """GAMP: global average plus global max over the feature map."""
        f = self.features(x)
        return f.mean(dim=(2, 3)) + f.amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding)."""
        if self.head is None:
            raise RuntimeError("this MobileNetV2 was built without a head (n_classes=None)")
        e = self.embed(x)
        return self.head(e), e
