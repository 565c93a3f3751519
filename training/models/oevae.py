"""OEVAE networks (Hai et al., DCASE 2024): a ResNet-18-style feature extractor (one input
channel) with a binary outlier-exposure head, and a VAE over its embeddings whose latent is
split into a domain part z_d and a content part z_c."""

from __future__ import annotations

import torch
from torch import nn

from harken.common.errors import UsageError


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (7x7 stem, max-pool, four stages of two basic blocks, global
    average pooling) on a one-channel log-mel, at base width ``width`` (torchvision: 64).
    The embedding has 8 * width numbers; ``head`` gives the outlier-exposure logit."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_dim = cin
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outlier-exposure logit: high = the target machine type, embedding)."""
        e = self.features(x)
        return self.head(e).squeeze(1), e


class EmbeddingVae(nn.Module):
    """MLP VAE over extractor embeddings; the first ``domain_dims`` latent channels are z_d."""

    def __init__(self, dim: int, latent: int = 64, domain_dims: int = 8, hidden: int = 128) -> None:
        super().__init__()
        if not 0 < domain_dims < latent:
            raise UsageError(f"domain_dims must be between 1 and latent - 1 ({latent - 1}), "
                             f"got {domain_dims}")
        self.domain_dims = domain_dims
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, dim))

    def forward(self, e: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction from a reparameterised sample, posterior mean, log-variance)."""
        mu, logvar = self.encoder(e).chunk(2, dim=1)
        noise = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
        return self.decoder(mu + noise * (0.5 * logvar).exp()), mu, logvar


class Oevae(nn.Module):
    """Input standardisation (fixed, from the training segments) + extractor + VAE."""

    def __init__(self, width: int = 16, latent: int = 64, domain_dims: int = 8,
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.extractor = ResNet18(width)
        self.vae = EmbeddingVae(self.extractor.embedding_dim, latent, domain_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.extractor((x - self.mean) / self.std)


class OevaeDevice(nn.Module):
    """What a device runs of a trained OEVAE (docs/export.md "OEVAE"): the standardisation,
    the extractor's features (the outlier-exposure head is training only) and the VAE
    encoder's posterior mean of z_c. The encoder's last Linear keeps only the rows of
    mu[:, domain_dims:], so no slice is exported and nothing random is (scoring reads the
    posterior mean, never a sample). Returns (embedding, latent) in that order."""

    def __init__(self, net: Oevae) -> None:
        super().__init__()
        self.register_buffer("mean", net.mean.detach().clone())
        self.register_buffer("std", net.std.detach().clone())
        self.features = net.extractor.features
        first, relu, last = net.vae.encoder
        d, latent = net.vae.domain_dims, last.out_features // 2
        content = nn.Linear(last.in_features, latent - d)
        with torch.no_grad():
            content.weight.copy_(last.weight[d:latent])
            content.bias.copy_(last.bias[d:latent])
        self.encoder = nn.Sequential(first, nn.ReLU(), content)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.features((x - self.mean) / self.std)
        return e, self.encoder(e)
