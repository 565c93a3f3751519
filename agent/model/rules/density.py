"""Local density-based score normalisation (LDN; Wilkinghoff et al., "Local Density-Based
Anomaly Score Normalization for Domain Generalization", 2025).

A distance to a reference counts in units of that reference's own neighbourhood: the
mean distance from the reference to its ``k`` nearest other references. A test point's
score is the minimum over the references of distance / density. A sparse domain (the
few target clips) has large local distances and a dense one (many source clips) small
ones, so one threshold serves both, with no domain label at test time; this is what
lets an on-site enrolled bank work without knowing its operating conditions.

``k`` must stay below the size of the smallest cluster of references (a DCASE target
domain has 10 clips per section): a neighbourhood that crosses into another cluster
measures the gap between clusters, not the cluster's density. Hence the default 4.

Written with numpy alone (the device has no sklearn); the distance matrices are a few
hundred by a few hundred.
"""

from __future__ import annotations

import numpy as np

from harken.common.errors import DataError, UsageError

DEFAULT_K = 4
METRICS = ("cosine", "euclidean")


def distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(len(a), len(b)) distances: cosine distance of unit rows, or Euclidean."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    if metric == "cosine":
        return 1.0 - a @ b.T
    if metric == "euclidean":
        sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")


def local_densities(bank: np.ndarray, k: int = DEFAULT_K, metric: str = "cosine") -> np.ndarray:
    """Each reference's mean distance to its ``k`` nearest other references (``k`` is
    capped at len(bank) - 1); floored at a tiny positive value so no division explodes."""
    n = len(bank)
    if n < 2:
        raise DataError(f"local density needs at least 2 references, got {n}")
    if k < 1:
        raise UsageError(f"density k must be at least 1, got {k}")
    k = min(k, n - 1)
    d = distances(bank, bank, metric)
    np.fill_diagonal(d, np.inf)
    nearest = np.partition(d, k - 1, axis=1)[:, :k]
    return np.maximum(nearest.mean(axis=1), 1e-9)


def joined_densities(bank: np.ndarray, own_density: np.ndarray, k: int = DEFAULT_K,
                     metric: str = "cosine") -> np.ndarray:
    """The densities of a bank whose first ``len(own_density)`` rows were there before the
    rest joined (feedback): the first rows KEEP theirs (never recomputed), each joined row
    gets its own local density over the union, held between the smallest and the largest
    of the first rows'. With the first rows' densities (and the fusion scales) unchanged,
    every score is a minimum over more rows: feedback can only lower scores, and only near
    the sounds fed back. Recomputing the first rows' densities shrank them where near-copies
    joined, every score rose, and the machine alarmed more after "normal" feedback; a
    joined row's density left unbounded made everything near it score low (docs/agent.md
    "Feedback: how the bank and threshold change")."""
    own_density = np.asarray(own_density, dtype=np.float64)
    own, n = len(own_density), len(bank)
    if own < 1:
        raise DataError("joined densities need the bank's own rows' densities")
    if k < 1:
        raise UsageError(f"density k must be at least 1, got {k}")
    density = np.empty(n, dtype=np.float64)
    density[:own] = own_density
    if n > own:
        k = min(k, n - 1)
        d = distances(bank[own:], bank, metric)
        d[np.arange(n - own), np.arange(own, n)] = np.inf
        nearest = np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)
        density[own:] = np.clip(nearest, own_density.min(), own_density.max())
    return density


def normalised_min_distance(points: np.ndarray, bank: np.ndarray, density: np.ndarray,
                            metric: str = "cosine") -> np.ndarray:
    """Per point: min over references of distance(point, reference) / density(reference)."""
    return (distances(points, bank, metric) / density[None, :]).min(axis=1)
