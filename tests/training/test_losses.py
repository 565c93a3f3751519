"""Loss functions against values worked out by hand."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from harken.agent.model.rules.mahalanobis import mahalanobis
from harken.training.models.losses import (kde_weights, nt_xent, scott_bandwidth, snp_loss,
                                    weighted_mean)


def test_nt_xent_matches_hand_computed_value():
    # views: a = b = the two unit axes. Anchor 0 sees logits (0, 1/T, 0) over rows 1, 2, 3
    # with its positive at row 2, and every anchor is alike by symmetry.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0]])          # scale must not matter (cosine)
    for t in (1.0, 0.5, 0.07):
        expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
        assert nt_xent(a, b, t).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_nt_xent_rewards_aligned_views():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g)
    aligned = nt_xent(a, a + 0.01 * torch.randn(16, 8, generator=g))
    shuffled = nt_xent(a, a[torch.randperm(16, generator=g)])
    assert aligned < shuffled


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="two"):
        nt_xent(torch.zeros(4, 3), torch.zeros(5, 3))


def test_kde_weights_match_hand_computed_values():
    # points 0, 0, 3 -> standardised -1/sqrt2, -1/sqrt2, sqrt2; squared gaps 0 and 4.5.
    x = torch.tensor([[0.0], [0.0], [3.0]])
    k = math.exp(-4.5 / 2)                    # bandwidth 1
    p = np.array([2 + k, 2 + k, 1 + 2 * k]) / 3
    p_rel = p / p.mean()
    w = 1 / (p_rel + 1e-3)
    w = w / w.mean()
    np.testing.assert_allclose(kde_weights(x, bandwidth=1.0).numpy(), w, rtol=1e-5)
    assert w[2] > w[0]                        # the rare point weighs more


def test_kde_weights_mean_one_no_gradient_and_scott_default():
    x = torch.randn(64, 5, requires_grad=True)
    w = kde_weights(x)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert not w.requires_grad
    assert scott_bandwidth(64, 5) == pytest.approx(64 ** (-1 / 9))
    with pytest.raises(ValueError, match="bandwidth"):
        kde_weights(x, bandwidth=0.0)


def test_weighted_mean_and_snp_clipping():
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])).item() == 2.5
    normal = torch.tensor([1.0, 2.0, 3.0])
    pseudo = torch.tensor([0.5, 10.0])               # 10 is clipped to C = 4
    assert snp_loss(normal, pseudo, 4.0).item() == pytest.approx(2.0 - 2.25)
    pseudo.requires_grad_(True)
    snp_loss(normal, pseudo, 4.0).backward()
    assert pseudo.grad.tolist() == [-0.5, 0.0]       # no push past the clip


def test_mahalanobis_matches_hand_value_and_scipy():
    precision = np.linalg.inv(np.diag([4.0, 1.0]))
    assert mahalanobis(np.array([[1.0, 2.0]]), np.zeros(2), precision)[0] == pytest.approx(
        math.sqrt(1 / 4 + 4))
    rng = np.random.default_rng(0)
    cov = np.cov(rng.normal(size=(50, 3)), rowvar=False)
    x, mean = rng.normal(size=(4, 3)), rng.normal(size=3)
    ours = mahalanobis(x, mean, np.linalg.inv(cov))
    theirs = [scipy_mahalanobis(v, mean, np.linalg.inv(cov)) for v in x]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_scotts_rule_gives_uniform_weights_on_640_dimensional_inputs():
    """Why ae-bu trains exactly the plain AE by default (docs/results.md): between two
    different standardised 640-d inputs the kernel underflows, so every weight is 1; a
    bandwidth on the scale of the distances (~sqrt(d)) brings the weighting back."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(256, 1, generator=g)           # a dense and a sparse region
    x = torch.randn(256, 640, generator=g) + 3 * common * (torch.arange(256) < 32)[:, None]
    assert torch.equal(kde_weights(x), torch.ones(256))
    w = kde_weights(x, bandwidth=640 ** 0.5)
    assert w.std() > 0.05
