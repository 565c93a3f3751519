"""GMGAN networks (Chen et al., 2020): a GANomaly-style compression network (encoder G_e,
decoder G_d, auxiliary encoder G_e' that encodes the reconstruction, discriminator D) and a
DAGMM-style estimation network (MLP + softmax over K mixture components on the latent z).

The convolutional parts reuse the DCGAN pyramid of AEGAN-AD (training/models/aegan.py), with
LayerNorm; the input is a square log-mel patch scaled to [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from harken.training.models.aegan import AeganGenerator, DbRange, pyramid


class GmganDiscriminator(nn.Module):
    """Pyramid features (what the adversarial feature-matching term compares) and a 4x4
    convolution to the real/fake logit."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.features, top = pyramid(size, channels)
        self.classify = nn.Conv2d(top, 1, 4, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.classify(f).flatten(), f


class Gmgan(DbRange):
    def __init__(self, size: int = 64, channels: int = 16, latent: int = 16, mixtures: int = 4,
                 estimator_hidden: int = 10, dropout: float = 0.5,
                 low: float = -100.0, high: float = 0.0) -> None:
        super().__init__(low, high)
        self.generator = AeganGenerator(size, channels, latent)       # G_e and G_d
        body, top = pyramid(size, channels)
        self.aux_encoder = nn.Sequential(body, nn.Conv2d(top, latent, 4, 1, 0))      # G_e'
        self.discriminator = GmganDiscriminator(size, channels)
        self.estimator = nn.Sequential(nn.Linear(latent, estimator_hidden), nn.Tanh(),
                                       nn.Dropout(dropout), nn.Linear(estimator_hidden, mixtures))

    def forward(self, x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z = G_e(x), x' = G_d(z), z' = G_e'(x'), memberships gamma = softmax(est(z)))."""
        z = self.generator.encode(x)
        recon = self.generator.decode(z)
        z_aux = self.aux_encoder(recon).flatten(1)
        return z, recon, z_aux, torch.softmax(self.estimator(z), dim=1)


class GmganDevice(DbRange):
    """What a device runs for GMGAN (docs/export.md "GMGAN"): dB patch -> the [-1, 1]
    scaling -> ``latent`` z = G_e(x); with ``aux`` also ``latent_aux`` z' = G_e'(G_d(z)),
    which only the ``latent`` score reads. The discriminator and the estimation network are
    training only (the scoring GMM is fitted once after training and ships as arrays)."""

    def __init__(self, net: Gmgan, aux: bool) -> None:
        super().__init__(float(net.low), float(net.high))
        self.encoder = net.generator.encoder
        self.decoder = net.generator.decoder if aux else None
        self.aux_encoder = net.aux_encoder if aux else None

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("latent", "latent_aux") if self.decoder is not None else ("latent",)

    def forward(self, logmel_db: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.encoder(self.scale(logmel_db)).flatten(1)
        if self.decoder is None:
            return (z,)
        z_aux = self.aux_encoder(self.decoder(z[:, :, None, None])).flatten(1)
        return z, z_aux
