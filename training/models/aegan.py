"""AEGAN-AD networks (Jiang et al., ICASSP 2023): a DCGAN-style convolutional autoencoder as
the generator and a discriminator built on the same pyramid whose last layer is a
depth-wise convolution, so its embedding keeps one number per channel.

LayerNorm replaces BatchNorm, as in the paper (a WGAN-GP critic must not mix the samples of
a batch). It is GroupNorm with one group: the layer norm over (channels, height, width)
with a per-channel affine, which works for any patch size.

``AeganDevice`` is what a bundle runs (docs/export.md "AEGAN-AD"): the dB scaling and the
part of the networks the run's score family reads, nothing more.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harken.common.errors import UsageError


def _stages(size: int) -> int:
    """Stride-2 stages from ``size`` down to 4 x 4."""
    stages = int(round(math.log2(size / 4)))
    if size < 8 or 4 * 2 ** stages != size:
        raise UsageError(f"AEGAN-AD patches must be square with a power-of-two side >= 8, "
                         f"got {size}")
    return stages


def pyramid(size: int, channels: int) -> tuple[nn.Sequential, int]:
    """1 x size x size -> C x 4 x 4 by stride-2 4x4 convolutions, channels doubling; no norm
    on the first layer (DCGAN). Returns the layers and C."""
    layers: list[nn.Module] = []
    cin, cout = 1, channels
    for i in range(_stages(size)):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=i == 0)]
        layers += [nn.GroupNorm(1, cout)] if i else []
        layers += [nn.LeakyReLU(0.2, inplace=True)]
        cin, cout = cout, cout * 2
    return nn.Sequential(*layers), cin


class AeganGenerator(nn.Module):
    """Convolutional autoencoder: patch -> latent (``latent`` numbers) -> patch in [-1, 1]."""

    def __init__(self, size: int = 128, channels: int = 32, latent: int = 256) -> None:
        super().__init__()
        body, top = pyramid(size, channels)
        self.encoder = nn.Sequential(body, nn.Conv2d(top, latent, 4, 1, 0))
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent, top, 4, 1, 0, bias=False),
                                   nn.GroupNorm(1, top), nn.ReLU(inplace=True)]
        c = top
        for _ in range(_stages(size) - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.GroupNorm(1, c // 2),
                       nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class AeganDiscriminator(nn.Module):
    """The same pyramid, then a depth-wise 4x4 convolution to one value per channel (the
    embedding the detection scores read) and a linear head to the WGAN critic value."""

    def __init__(self, size: int = 128, channels: int = 32) -> None:
        super().__init__()
        body, top = pyramid(size, channels)
        self.features = nn.Sequential(body, nn.Conv2d(top, top, 4, 1, 0, groups=top))
        self.embedding_dim = top
        self.head = nn.Linear(top, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)).squeeze(1)


class DbRange(nn.Module):
    """The fixed [-1, 1] scaling of the training set's dB range, stored with the weights so a
    run scores exactly as it trained (the generators end in Tanh)."""

    def __init__(self, low: float = -100.0, high: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))

    def scale(self, logmel_db: torch.Tensor) -> torch.Tensor:
        """dB -> [-1, 1] with the training min/max (test values outside are clamped)."""
        x = 2.0 * (logmel_db - self.low) / (self.high - self.low) - 1.0
        return x.clamp(-1.0, 1.0)

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) / 2.0 * (self.high - self.low) + self.low


class Aegan(DbRange):
    """Generator + discriminator over scaled patches."""

    def __init__(self, size: int = 128, channels: int = 32, latent: int = 256,
                 low: float = -100.0, high: float = 0.0) -> None:
        super().__init__(low, high)
        self.generator = AeganGenerator(size, channels, latent)
        self.discriminator = AeganDiscriminator(size, channels)


# what a bundle's graph outputs for each family of AEGAN-AD's scores (training/aegan.py)
FAMILY_OUTPUTS: dict[str, tuple[str, ...]] = {
    "x": ("reconstruction",),           # G(p), p = the scaled patch, flattened
    "z": ("latent", "latent_aux"),      # E(p) and E(G(p))
    "d": ("embedding",),                # the discriminator's features of p
}


class AeganDevice(DbRange):
    """The device graph of a trained ``Aegan`` for one score family (``x``, ``z`` or ``d``,
    the first letter of the run's score): dB patch -> scale and clamp -> only the networks
    that family reads, so a ``d-*`` bundle carries no generator and an ``x-*`` one no
    discriminator. Returns a tuple in ``FAMILY_OUTPUTS[family]`` order, each (batch, values),
    in the scaled space the training scores are computed in."""

    def __init__(self, net: Aegan, family: str) -> None:
        if family not in FAMILY_OUTPUTS:
            raise UsageError(f"AEGAN-AD score family must be one of {list(FAMILY_OUTPUTS)}, "
                             f"got {family!r}")
        super().__init__(float(net.low), float(net.high))
        self.family = family
        if family == "d":
            self.features = net.discriminator.features
        else:
            self.generator = net.generator

    @property
    def outputs(self) -> tuple[str, ...]:
        return FAMILY_OUTPUTS[self.family]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.scale(x)
        if self.family == "d":
            return (self.features(p).flatten(1),)
        z = self.generator.encode(p)
        r = self.generator.decode(z)
        if self.family == "x":
            return (r.flatten(1),)
        return z, self.generator.encode(r)
