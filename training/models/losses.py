"""Loss functions of the edge scorers, each small enough to check by hand (tests do)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views: row i of ``a`` and row i of ``b`` are positives,
    every other row of either view is a negative. Mean over the 2N anchors."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, d) views of one shape, got {a.shape}, {b.shape}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def scott_bandwidth(n: int, d: int) -> float:
    """Scott's rule for a d-dimensional Gaussian KDE on standardised data."""
    return n ** (-1.0 / (d + 4))


def kde_weights(x: torch.Tensor, bandwidth: float | str = "scott",
                eps: float = 1e-3) -> torch.Tensor:
    """Batch-uniformization weights (Koizumi et al., 2019): proportional to 1/p(x).

    p is a Gaussian KDE over the minibatch itself on standardised inputs (per-dimension
    batch mean and std). It is taken relative to its batch mean before ``eps`` is added, so
    the result does not depend on the dimension's normalising constant (which underflows
    for 640-d inputs); weights are normalised to mean 1 and carry no gradient.
    """
    x = x.detach().flatten(1).double()
    n, d = x.shape
    z = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-8)
    h = scott_bandwidth(n, d) if bandwidth == "scott" else float(bandwidth)
    if h <= 0:
        raise ValueError(f"KDE bandwidth must be positive, got {bandwidth}")
    log_k = -torch.cdist(z, z).pow(2) / (2 * h * h)
    log_p = torch.logsumexp(log_k, dim=1) - math.log(n)
    p_rel = torch.exp(log_p - torch.logsumexp(log_p, dim=0) + math.log(n))   # mean 1
    w = 1.0 / (p_rel + eps)
    return (w / w.mean()).float()


def weighted_mean(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The BU objective: weighted mean of per-sample anomaly scores."""
    return (weights * scores).mean()


def snp_loss(normal_scores: torch.Tensor, pseudo_scores: torch.Tensor,
             clip: float | torch.Tensor) -> torch.Tensor:
    """Simplified Neyman-Pearson loss: low scores on normals, high (up to ``clip``) on
    pseudo-anomalies. Clipping keeps the AE from winning by blowing pseudo scores up."""
    return normal_scores.mean() - torch.clamp(pseudo_scores, max=clip).mean()
