"""Losses of the generative detectors (AEGAN-AD, GMGAN, OEVAE) against hand-computed and
closed-form values."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from harken.training.models.losses import (feature_matching, gmm_covariance_penalty, gmm_energy,
                                    gmm_parameters, gradient_penalty, kl_to_normal)


def test_gradient_penalty_of_a_linear_critic_is_one_number():
    # critic(x) = w . x has gradient w everywhere: penalty = (|w| - 1)^2 = (5 - 1)^2
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    assert gradient_penalty(lambda x: x @ w, real, fake).item() == pytest.approx(16.0)


def test_gradient_penalty_at_hand_picked_interpolates():
    # critic(x) = |x|^2 / 2 has gradient x: the penalty is mean (|x_hat| - 1)^2 at
    # x_hat = 0.5 * (2, 0) + 0.5 * (0, 0) = (1, 0) and 0.25 * (0, 4) + 0.75 * (0, 0) = (0, 1)
    # and 1 * (3, 4) + 0 * fake = (3, 4): (0 + 0 + 16) / 3
    real = torch.tensor([[2.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    mix = torch.tensor([0.5, 0.25, 1.0])
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).sum(1), real, fake, mix=mix)
    assert gp.item() == pytest.approx(16.0 / 3)


def test_gradient_penalty_carries_gradient_to_the_critic():
    critic = torch.nn.Linear(3, 1)
    gp = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(4, 3), torch.randn(4, 3))
    gp.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_feature_matching_is_zero_for_identical_batches_and_hand_value_otherwise():
    a = torch.randn(8, 5)
    assert feature_matching(a, a.clone()).item() == 0.0
    assert feature_matching(a, a.clone(), match_std=True).item() == 0.0
    # means differ by (1, 3): mean of squares = 5; stds equal (shift only)
    b = a + torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0])
    assert feature_matching(a, b).item() == pytest.approx(10.0 / 5)
    assert feature_matching(a, b, match_std=True).item() == pytest.approx(2.0, rel=1e-5)


def test_gmm_energy_of_one_component_is_the_gaussian_negative_log_density():
    rng = np.random.default_rng(0)
    mu = np.array([0.5, -1.0, 2.0])
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + 0.5 * np.eye(3)
    z = rng.normal(size=(7, 3))
    energy = gmm_energy(torch.from_numpy(z), torch.tensor([1.0], dtype=torch.float64),
                        torch.from_numpy(mu[None]), torch.from_numpy(cov[None]), jitter=0.0)
    expected = -multivariate_normal(mu, cov).logpdf(z)
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-10)


def test_gmm_energy_of_two_components_and_its_stability_far_away():
    phi = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mu = torch.tensor([[0.0], [4.0]], dtype=torch.float64)
    cov = torch.tensor([[[1.0]], [[0.25]]], dtype=torch.float64)
    z = torch.tensor([[1.0], [200.0]], dtype=torch.float64)
    energy = gmm_energy(z, phi, mu, cov, jitter=0.0)
    p1 = 0.3 * math.exp(-0.5) / math.sqrt(2 * math.pi) + \
        0.7 * math.exp(-0.5 * 9 / 0.25) / math.sqrt(2 * math.pi * 0.25)
    assert energy[0].item() == pytest.approx(-math.log(p1))
    # 200 is 196 / 0.5 = 392 standard deviations from the second mean: every density
    # underflows to 0 in float64, the log-sum-exp energy does not
    assert np.isfinite(energy[1].item()) and energy[1].item() > 1e4


def test_gmm_parameters_from_hard_memberships_are_the_cluster_statistics():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(10, 2))
    gamma = np.zeros((10, 2))
    gamma[:4, 0] = gamma[4:, 1] = 1.0
    phi, mu, cov = gmm_parameters(torch.from_numpy(z), torch.from_numpy(gamma))
    np.testing.assert_allclose(phi.numpy(), [0.4, 0.6])
    np.testing.assert_allclose(mu.numpy(), [z[:4].mean(0), z[4:].mean(0)])
    np.testing.assert_allclose(cov[1].numpy(), np.cov(z[4:].T, bias=True), atol=1e-12)
    assert gmm_covariance_penalty(cov).item() == pytest.approx(
        float((1 / np.diagonal(cov.numpy(), axis1=1, axis2=2)).sum()))


def test_singular_covariance_is_made_usable_by_the_jitter():
    z = torch.zeros(5, 2, dtype=torch.float64)            # every sample the same point
    phi, mu, cov = gmm_parameters(z, torch.ones(5, 1, dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError):
        gmm_energy(z, phi, mu, cov, jitter=0.0)
    assert torch.isfinite(gmm_energy(z, phi, mu, cov, jitter=1e-6)).all()


def test_kl_to_normal_matches_the_closed_form():
    mu = torch.tensor([[0.3, -1.2, 2.0]])
    logvar = torch.tensor([[0.0, -0.7, 0.4]])
    prior = torch.tensor([[1.0, 0.0, -0.5]])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(prior, 1.0)).sum()
    assert kl_to_normal(mu, logvar, prior).item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand, one dimension: KL(N(0.3, 1) || N(1, 1)) = (0.3 - 1)^2 / 2
    assert kl_to_normal(mu[:, :1], logvar[:, :1], 1.0).item() == pytest.approx(0.245)
    assert kl_to_normal(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max().item() == 0.0
