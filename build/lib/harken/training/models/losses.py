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


# -- generative detectors (AEGAN-AD, GMGAN, OEVAE) ---------------------------------------------

def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None,
                     mix: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): mean (||grad critic(x_hat)||_2 - 1)^2 at random
    points x_hat = mix * real + (1 - mix) * fake on the lines between the two batches.
    ``mix`` (one value per sample) is drawn uniformly unless given."""
    if mix is None:
        mix = torch.rand(real.shape[0], generator=generator).to(real.device, real.dtype)
    m = mix.view(-1, *([1] * (real.ndim - 1)))
    x_hat = (m * real.detach() + (1 - m) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def feature_matching(real: torch.Tensor, fake: torch.Tensor, match_std: bool = False
                     ) -> torch.Tensor:
    """AEGAN-AD's generator term: squared distance between the batch means (and, with
    ``match_std``, the batch standard deviations) of discriminator embeddings, averaged
    over the embedding dimensions."""
    loss = (real.mean(0) - fake.mean(0)).pow(2).mean()
    if match_std:
        loss = loss + (real.std(0) - fake.std(0)).pow(2).mean()
    return loss


def gmm_parameters(z: torch.Tensor, gamma: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DAGMM's GMM from soft memberships: weights phi (K), means mu (K, d), covariances
    Sigma (K, d, d), each a membership-weighted batch statistic."""
    weight = gamma.sum(0).clamp_min(1e-12)                       # (K,)
    phi = weight / gamma.shape[0]
    mu = gamma.T @ z / weight[:, None]
    diff = z[:, None, :] - mu[None]                              # (N, K, d)
    cov = torch.einsum("nk,nki,nkj->kij", gamma, diff, diff) / weight[:, None, None]
    return phi, mu, cov


def gmm_energy(z: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor,
               jitter: float = 1e-6) -> torch.Tensor:
    """Sample energy E(z) = -log sum_k phi_k N(z; mu_k, Sigma_k), per sample. Stable: the
    densities come from a Cholesky factor of Sigma_k + jitter * I (no inverse, no
    determinant of a near-singular matrix) and are summed with log-sum-exp."""
    d = z.shape[1]
    chol = torch.linalg.cholesky(cov + jitter * torch.eye(d, dtype=cov.dtype, device=cov.device))
    diff = (z[:, None, :] - mu[None]).unsqueeze(-1)              # (N, K, d, 1)
    white = torch.linalg.solve_triangular(chol[None], diff, upper=False).squeeze(-1)
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)       # (K,)
    log_normal = -0.5 * (white.pow(2).sum(-1) + log_det + d * math.log(2 * math.pi))
    return -torch.logsumexp(torch.log(phi.clamp_min(1e-12)) + log_normal, dim=1)


def gmm_covariance_penalty(cov: torch.Tensor) -> torch.Tensor:
    """DAGMM's singularity penalty: sum_k sum_j 1 / Sigma_k,jj."""
    return (1.0 / torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12)).sum()


def kl_to_normal(mu: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor | float = 0.0
                 ) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mean, 1)) per sample, summed over dimensions."""
    return 0.5 * (logvar.exp() + (mu - prior_mean).pow(2) - 1.0 - logvar).sum(dim=1)
