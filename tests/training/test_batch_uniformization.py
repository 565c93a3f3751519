"""Koizumi et al.'s verification experiment for batch uniformization, in 2-D.

Normal data lie on a curve; 97 % of them in a frequent region, 3 % in a rare one. A plain
mean-loss AE reconstructs the rare region badly, so rare normals look anomalous; BU
weights samples by 1/p(x) and must bring the rare region's worst score down, while real
anomalies (points off the curve) still score above the rare normals.
"""

import numpy as np
import torch

from harken.training.models.dense_ae import DenseAE, per_sample_mse
from harken.training.models.losses import kde_weights, weighted_mean

SEED = 1


def curve(t):
    return np.stack([t, np.sin(3 * t)], axis=1).astype(np.float32)


def train(x: np.ndarray, bu: bool, steps: int = 1500) -> DenseAE:
    torch.manual_seed(SEED)
    ae = DenseAE(2, hidden=32, bottleneck=1, depth=2)
    opt = torch.optim.Adam(ae.parameters(), 3e-3)
    g = torch.Generator().manual_seed(SEED)
    xt = torch.from_numpy(x)
    for _ in range(steps):
        b = xt[torch.randint(0, len(xt), (256,), generator=g)]
        a = per_sample_mse(b, ae(b))
        loss = weighted_mean(a, kde_weights(b)) if bu else a.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae.eval()


def test_bu_lowers_the_worst_score_of_rare_normals():
    rng = np.random.default_rng(SEED)
    n = 4000
    rare = rng.random(n) < 0.03
    t = np.where(rare, rng.uniform(0.5, 1.0, n), rng.uniform(-1.0, 0.3, n))
    x = curve(t) + rng.normal(0, 0.02, (n, 2)).astype(np.float32)
    rare_region = curve(np.linspace(0.5, 1.0, 200))
    ta = rng.uniform(-1, 1, 200)
    anomalies = curve(ta) + np.stack([np.zeros(200), rng.choice([-0.8, 0.8], 200)], 1).astype(
        np.float32)

    worst_rare, anomaly_median = {}, {}
    for bu in (False, True):
        ae = train(x, bu)
        with torch.no_grad():
            def score(v):
                return per_sample_mse(torch.from_numpy(v), ae(torch.from_numpy(v))).numpy()
            worst_rare[bu] = score(rare_region).max()
            anomaly_median[bu] = np.median(score(anomalies))

    assert worst_rare[True] < 0.5 * worst_rare[False]
    assert anomaly_median[True] > 5 * worst_rare[True]
    assert anomaly_median[True] > 0.5 * anomaly_median[False]   # anomalies stay detectable
