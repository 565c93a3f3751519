"""Sample-mixing augmentations: mixup and SMOTE."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from harken.common.errors import DataError


def mixup(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, alpha: float = 0.2
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup (Zhang et al., 2018): convex mixes of sample pairs and of their label vectors.

    ``y`` holds one-hot (or soft) labels, shape (batch, classes). One lambda per sample.
    """
    if alpha <= 0:
        return x, y
    b = x.shape[0]
    # torch's Beta sampler takes no generator; draw lambda from numpy seeded by it instead.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, b)).to(x.device, x.dtype)
    perm = torch.randperm(b, generator=generator).to(x.device)
    lx = lam.view(-1, *([1] * (x.ndim - 1)))
    ly = lam.view(-1, 1).to(y.dtype)
    return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


def smote(x: np.ndarray, n_new: int, rng: np.random.Generator, k: int = 5) -> np.ndarray:
    """SMOTE (Chawla et al., 2002): ``n_new`` points on segments between a sample and one of
    its k nearest neighbours. Used to fill the target domain, which has ~10 clips per
    section against ~100 source clips (Hai et al.)."""
    x = np.asarray(x)
    flat = x.reshape(len(x), -1)
    if len(flat) < 2:
        raise DataError(f"SMOTE needs at least 2 samples, got {len(flat)}")
    if n_new <= 0:
        return np.empty((0, *x.shape[1:]), dtype=x.dtype)
    k = min(k, len(flat) - 1)
    _, nn_idx = NearestNeighbors(n_neighbors=k + 1).fit(flat).kneighbors(flat)
    base = rng.integers(0, len(flat), n_new)
    neighbour = nn_idx[base, rng.integers(1, k + 1, n_new)]
    gap = rng.random((n_new, 1)).astype(flat.dtype)
    new = flat[base] + gap * (flat[neighbour] - flat[base])
    return new.reshape(n_new, *x.shape[1:]).astype(x.dtype)


def smote_target(x: np.ndarray, member_key: np.ndarray, count_key: np.ndarray,
                 is_target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fill the target domain up to the source count with SMOTE, the one way every method
    does it. For each key of the target rows (``member_key``: a section, or a class;
    negative keys are skipped), SMOTE among that key's target rows makes as many new rows
    as the source rows of its ``count_key`` group outnumber them. Returns the new rows and
    their member keys (keys in ascending order, so a seeded ``rng`` gives the same rows)."""
    new_x, new_key = [], []
    for key in np.unique(member_key[is_target]):
        if key < 0:
            continue
        members = (member_key == key) & is_target
        group = count_key[np.flatnonzero(members)[0]]
        n_new = int((~is_target & (count_key == group)).sum()) - int(members.sum())
        if members.sum() >= 2 and n_new > 0:
            new_x.append(smote(x[members], n_new, rng))
            new_key.append(np.full(n_new, key))
    if not new_x:
        return np.empty((0, *x.shape[1:]), x.dtype), np.empty(0, member_key.dtype)
    return np.concatenate(new_x), np.concatenate(new_key).astype(member_key.dtype)


def mix_logmel(x: torch.Tensor, other: torch.Tensor, anr_db: torch.Tensor,
               db_per_decade: float = 10.0) -> torch.Tensor:
    """Log-mel of ``x`` with ``other`` added at an anomaly-to-normal power ratio (dB per
    sample). Sums mel powers, as uncorrelated sounds do; ``db_per_decade`` is 20/power of
    the feature spec (10 for power spectra)."""
    px = torch.pow(10.0, x / db_per_decade)
    po = torch.pow(10.0, other / db_per_decade)
    dims = tuple(range(1, x.ndim))
    gain = torch.pow(10.0, anr_db / 10.0).view(-1, *([1] * (x.ndim - 1))) \
        * px.mean(dim=dims, keepdim=True) / po.mean(dim=dims, keepdim=True).clamp_min(1e-30)
    return db_per_decade * torch.log10(px + gain * po + 1e-30)
