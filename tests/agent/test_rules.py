"""Score rules (agent/model/rules/) against values worked out by hand."""

import numpy as np
import pytest

from harken.agent.model.rules import (make_rule as Rule, bank_distance, section_log_odds, softmax,
                                       unit_embedding)


def test_mse_is_the_mean_squared_residual_and_the_interval_mean():
    rule = Rule("mse")
    x = np.array([[1.0, 2.0], [0.0, 0.0]])
    recon = np.array([[1.0, 0.0], [3.0, 1.0]])
    ev = rule.evidence(x, recon)
    np.testing.assert_allclose(ev[:, 0], [2.0, 5.0])        # (0 + 4) / 2, (9 + 1) / 2
    assert rule.reduce(ev) == 3.5


def test_mahalanobis_takes_the_closer_domain():
    # two domains, 2-D residuals; identity precision in one, 4 x identity in the other
    means = np.array([[0.0, 0.0], [1.0, 1.0]])
    precisions = np.stack([np.eye(2), 4 * np.eye(2)])
    rule = Rule("mahalanobis", {"means": means, "precisions": precisions})
    x, recon = np.array([[3.0, 4.0]]), np.zeros((1, 2))     # residual (3, 4)
    ev = rule.evidence(x, recon)
    # domain 0: |(3, 4)| = 5; domain 1: 2 * |(2, 3)| = 2 * sqrt(13)
    np.testing.assert_allclose(ev, [[5.0, 2 * np.sqrt(13)]])
    assert rule.reduce(np.array([[5.0, 9.0], [7.0, 1.0]])) == 5.0    # means 6 and 5 -> 5


def test_logit_rule_uses_the_best_class_of_the_section():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    probs = softmax(logits)
    np.testing.assert_allclose(probs, np.exp(logits), rtol=1e-12)
    mask = np.array([False, True, True])                      # classes 1 and 2 are our section
    np.testing.assert_allclose(section_log_odds(probs, mask), [np.log(3.0), np.log(0.25)])
    rule = Rule("logit", {"section_classes": mask})
    assert rule.reduce(rule.evidence(np.zeros((2, 4)), logits)) == pytest.approx(
        (np.log(3.0) + np.log(0.25)) / 2)


def test_embedding_rule_scales_each_domain_and_takes_the_minimum():
    bank = np.array([[1.0, 0.0], [0.0, 1.0]])
    is_target = np.array([False, True])
    scale = np.array([0.5, 0.1])                              # (source, target)
    unit = np.array([np.sqrt(0.5), np.sqrt(0.5)])             # 45 degrees from both entries
    d = 1 - np.sqrt(0.5)
    assert bank_distance(unit, bank, is_target, scale) == pytest.approx(d / 0.5)
    rule = Rule("embedding", {"bank": bank, "bank_target": is_target, "bank_scale": scale,
                              "embedding_mean": np.zeros(2), "embedding_std": np.ones(2)})
    # the interval's mean embedding is (2, 2): the same direction
    ev = rule.evidence(np.zeros((2, 1)), np.array([[4.0, 0.0], [0.0, 4.0]]))
    assert rule.reduce(ev) == pytest.approx(d / 0.5)
    np.testing.assert_allclose(unit_embedding(np.array([3.0, 5.0]), np.array([1.0, 1.0]),
                                              np.array([1.0, 2.0])), [[np.sqrt(0.5)] * 2])


def test_rules_refuse_missing_arrays_and_empty_intervals():
    with pytest.raises(ValueError, match="unknown score rule 'vibes'"):
        Rule("vibes")
    with pytest.raises(ValueError, match=r"needs arrays \['precisions'\]"):
        Rule("mahalanobis", {"means": np.zeros((1, 2))})
    with pytest.raises(ValueError, match="no windows"):
        Rule("mse").reduce(np.empty((0, 1)))


def test_a_new_rule_plugs_in_by_registering_one_class():
    """The seam: a ScoreRule subclass with @register is found by name, with its output
    and array checks, and a second rule of the same name is refused."""
    from harken.agent.model.rules import output_of
    from harken.agent.model.rules.base import REGISTRY, ScoreRule, register

    @register
    class MaxRule(ScoreRule):
        name, output, needs = "test-max", "energy", ("offset",)

        def evidence(self, inputs, output):
            return np.asarray(output, dtype=np.float64).reshape(len(output), -1)

        def combine(self, evidence):
            return float(evidence.max() + self.arrays["offset"])

    try:
        assert output_of("test-max") == "energy"
        rule = Rule("test-max", {"offset": np.array(1.0)})
        assert rule.reduce(rule.evidence(None, np.array([[1.0], [3.0]]))) == 4.0
        with pytest.raises(ValueError, match=r"needs arrays \['offset'\]"):
            Rule("test-max")
        with pytest.raises(ValueError, match="registered twice"):
            register(MaxRule)
    finally:
        REGISTRY.pop("test-max", None)


def _reference_ldn(points, bank, k, dist):
    """Local density normalisation written out with loops (the paper's definition)."""
    dens = []
    for i, r in enumerate(bank):
        others = sorted(dist(r, o) for j, o in enumerate(bank) if j != i)
        dens.append(np.mean(others[:k]))
    return np.array([min(dist(p, r) / dens[i] for i, r in enumerate(bank)) for p in points])


def test_local_density_normalisation_equals_the_definition_written_out(rng):
    from harken.agent.model.rules.density import local_densities, normalised_min_distance
    bank = rng.normal(size=(12, 5))
    points = rng.normal(size=(4, 5))
    euclid = lambda a, b: float(np.linalg.norm(a - b))                 # noqa: E731
    for k in (1, 3, 11):
        got = normalised_min_distance(points, bank, local_densities(bank, k, "euclidean"),
                                      "euclidean")
        np.testing.assert_allclose(got, _reference_ldn(points, bank, k, euclid), rtol=1e-9)
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    pts = points / np.linalg.norm(points, axis=1, keepdims=True)
    cos = lambda a, b: float(1 - a @ b)                                # noqa: E731
    got = normalised_min_distance(pts, unit, local_densities(unit, 4, "cosine"), "cosine")
    np.testing.assert_allclose(got, _reference_ldn(pts, unit, 4, cos), rtol=1e-9)
    # k larger than the bank allows: capped at n - 1 (every other reference)
    np.testing.assert_allclose(local_densities(bank, 50, "euclidean"),
                               local_densities(bank, 11, "euclidean"))
    with pytest.raises(ValueError, match="at least 2 references"):
        local_densities(bank[:1])


def test_density_puts_a_sparse_and_a_dense_domain_on_one_scale():
    """A point as far out (in local units) from a sparse cluster as another is from a dense
    one gets the same score: what a single threshold over two domains needs."""
    from harken.agent.model.rules.density import local_densities, normalised_min_distance
    dense = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    sparse = 100.0 + 10.0 * dense                     # same shape, 10x the spacing
    bank = np.concatenate([dense, sparse])
    scores = normalised_min_distance(np.array([[-0.2, 0.0], [98.0, 100.0]]), bank,
                                     local_densities(bank, 2, "euclidean"), "euclidean")
    assert scores[0] == pytest.approx(scores[1])
    raw = np.linalg.norm(np.array([[-0.2, 0.0], [98.0, 100.0]]) - [[0, 0], [100, 100]], axis=1)
    assert raw[1] == pytest.approx(10 * raw[0])        # unnormalised: 10x apart


def test_embedding_density_rule_is_the_normalised_cosine_distance_of_the_mean_embedding(rng):
    from harken.agent.model.rules.density import local_densities
    bank = rng.normal(size=(6, 3))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    dens = local_densities(bank, 2, "cosine")
    rule = Rule("embedding-density", {"bank": bank, "bank_density": dens,
                                      "embedding_mean": np.zeros(3), "embedding_std": np.ones(3)})
    windows = rng.normal(size=(5, 3))
    mean = windows.mean(axis=0)
    unit = mean / np.linalg.norm(mean)
    cos = lambda a, b: float(1 - a @ b)                                # noqa: E731
    expected = _reference_ldn(unit[None], bank, 2, cos)[0]
    assert rule.reduce(rule.evidence(None, windows)) == pytest.approx(expected, rel=1e-9)


def _spectral_reference(frames_by_window, bank_vectors, stats, k, weights, n_mels):
    """The spectral-knn score written out: pool the frames, branch vectors, standardise,
    nearest and LDN distances, each standardised on the bank's leave-one-out scores."""
    frames = np.concatenate(frames_by_window)
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    vec = {"mel": np.r_[mean[:n_mels], std[:n_mels]], "spectrum": mean[n_mels:]}
    parts, loo_parts = [], []
    for b in ("mel", "spectrum"):
        mu, sd = stats[b]
        bank = (bank_vectors[b] - mu) / sd
        z = (vec[b] - mu) / sd
        own = np.array([[np.linalg.norm(p - q) for q in bank] for p in bank])
        np.fill_diagonal(own, np.inf)
        density = np.maximum(np.sort(own, axis=1)[:, :k].mean(axis=1), 1e-9)
        d = np.linalg.norm(bank - z, axis=1)
        loo = np.stack([own.min(axis=1), (own / density[None, :]).min(axis=1)], axis=1)
        loc, scale = loo.mean(axis=0), loo.std(axis=0)
        parts.append((np.array([d.min(), (d / density).min()]) - loc) / scale)
        loo_parts.append((loo - loc) / scale)
    w = np.asarray(weights, dtype=float)
    return np.concatenate(parts) @ w / w.sum(), np.concatenate(loo_parts, axis=1) @ w / w.sum()


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 0, 0, 0), (0, 2, 0, 1), (0, 0, 0, 1)])
def test_spectral_knn_rule_equals_the_definition_written_out(rng, weights):
    from harken.agent.model.rules.spectral_knn import branch_statistics, fit_bank, window_moments
    n_mels, n_bins, k = 3, 4, 2
    # a bank of 7 clips: per branch, the vectors of 7 clips' pooled statistics
    bank_vectors = {"mel": rng.normal(size=(7, 2 * n_mels)),
                    "spectrum": rng.normal(size=(7, n_bins)) * 3.0 + 1.0}
    stats = branch_statistics(bank_vectors)
    arrays, loo = fit_bank(bank_vectors, stats, k, weights)
    rule = Rule("spectral-knn", {**arrays, "fusion_weights": np.asarray(weights, float),
                                 "n_mels": np.array(n_mels)})
    windows = rng.normal(size=(5, 6, n_mels + n_bins))
    expected, expected_loo = _spectral_reference(list(windows), bank_vectors, stats, k,
                                                 weights, n_mels)
    assert rule.reduce(rule.evidence(None, window_moments(windows))) == pytest.approx(
        expected, rel=1e-9)
    np.testing.assert_allclose(loo, expected_loo, rtol=1e-9)
    for b, (mu, sd) in stats.items():
        np.testing.assert_allclose(mu, bank_vectors[b].mean(axis=0))
        np.testing.assert_allclose(sd, bank_vectors[b].std(axis=0) + 1e-6)


def test_pooled_moments_of_equal_windows_are_those_of_all_frames(rng):
    from harken.agent.model.rules.spectral_knn import branch_vectors, pooled_moments, window_moments
    windows = rng.normal(size=(4, 8, 5)) + np.arange(4)[:, None, None]    # windows differ
    mean, std = pooled_moments(window_moments(windows))
    frames = windows.reshape(-1, 5)
    np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-12)
    m = window_moments(windows)
    assert m.shape == (4, 10)
    np.testing.assert_allclose(m[:, 5:], windows.std(axis=1))
    v = branch_vectors(mean, std, 2)
    np.testing.assert_array_equal(v["mel"], np.r_[mean[:2], std[:2]])
    np.testing.assert_array_equal(v["spectrum"], mean[2:])


def test_a_spectral_bank_needs_two_clips_and_identical_clips_are_refused_with_a_reason(rng):
    """Identical clips once gave a 1e-12 scale (every normal interval then scored ~1e8):
    a spread that does not vary, or references on top of each other, is refused saying
    why (docs/reliability.md)."""
    from harken.common.errors import DataError
    from harken.agent.model.rules.spectral_knn import branch_statistics, fit_bank
    one = {"mel": rng.normal(size=(1, 4)), "spectrum": rng.normal(size=(1, 3))}
    with pytest.raises(DataError, match="a reference bank needs at least 2 clips or "
                                        "intervals, got 1"):
        fit_bank(one, branch_statistics(one), 2, (1, 1, 1, 1))
    same = {"mel": np.ones((3, 4)), "spectrum": np.ones((3, 3))}
    with pytest.raises(DataError, match="mel-knn leave-one-out scores that do not vary"):
        fit_bank(same, branch_statistics(same), 2, (1, 1, 1, 1))
    # every clip given twice: each scores 0 held out
    twice = {b: np.concatenate([v, v]) for b, v in
             {"mel": rng.normal(size=(8, 4)), "spectrum": rng.normal(size=(8, 3))}.items()}
    with pytest.raises(DataError, match="do not vary|nearest neighbours at \\(almost\\) zero"):
        fit_bank(twice, branch_statistics(twice), 2, (1, 1, 1, 1))
    # a few copies among distinct clips: their density is zero
    some = {b: np.concatenate([v, v[:3]]) for b, v in
            {"mel": rng.normal(size=(12, 4)), "spectrum": rng.normal(size=(12, 3))}.items()}
    with pytest.raises(DataError, match="nearest neighbours at \\(almost\\) zero distance"):
        fit_bank(some, branch_statistics(some), 1, (1, 1, 1, 1))


def test_local_densities_are_the_mean_of_the_k_nearest_others(rng):
    from harken.agent.model.rules.density import DEFAULT_K, local_densities
    for _ in range(5):
        bank = rng.normal(size=(9, 3))
        own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
        np.fill_diagonal(own, np.inf)
        for k in (1, 2, 5):
            np.testing.assert_allclose(local_densities(bank, k, "euclidean"),
                                       np.sort(own, axis=1)[:, :k].mean(axis=1), rtol=1e-9)
    assert DEFAULT_K == 4                                  # the documented default
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    np.testing.assert_array_equal(local_densities(unit), local_densities(unit, 4, "cosine"))


def test_two_references_are_enough_and_k_below_one_is_refused(rng):
    """Two references give densities; a bank of two is refused: each is the other's
    nearest, so their held-out scores are equal and have no spread to scale by (it once
    made a 1e-12 scale)."""
    from harken.common.errors import DataError, UsageError
    from harken.agent.model.rules.density import local_densities
    from harken.agent.model.rules.spectral_knn import branch_statistics, fit_bank
    two = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(local_densities(two, 4, "euclidean"), [5.0, 5.0])
    with pytest.raises(UsageError, match="density k must be at least 1, got 0"):
        local_densities(two, 0, "euclidean")
    pair = {"mel": rng.normal(size=(2, 4)), "spectrum": rng.normal(size=(2, 3))}
    with pytest.raises(DataError, match="the 2 clips or intervals give mel-knn leave-one-out "
                                        "scores that do not vary"):
        fit_bank(pair, branch_statistics(pair), 4, (1, 1, 1, 1))
    three = {"mel": rng.normal(size=(3, 4)), "spectrum": rng.normal(size=(3, 3))}
    arrays, loo = fit_bank(three, branch_statistics(three), 4, (1, 1, 1, 1))
    assert loo.shape == (3,) and arrays["mel_bank"].shape == (3, 4)


def test_unit_embeddings_are_standardised_rows_of_length_one(rng):
    emb = rng.normal(size=(3, 5)) * 4 + 2
    mean, std = np.full(5, 2.0), np.full(5, 4.0)
    unit = unit_embedding(emb, mean, std)
    z = (emb - mean) / std
    np.testing.assert_allclose(unit, z / np.linalg.norm(z, axis=1, keepdims=True))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)


def test_softmax_and_log_odds_stay_finite_for_extreme_logits():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    odds = section_log_odds(probs, np.array([True, True, False]))
    # a certain prediction is clipped to p = 1 - 1e-7, not log(0)
    assert odds[0] == pytest.approx(np.log(1e-7 / (1 - 1e-7)))
    assert odds[1] == pytest.approx(np.log(2.0))


def test_small_mahalanobis_distances_are_not_floored():
    rule = Rule("mahalanobis", {"means": np.zeros((1, 2)), "precisions": np.eye(2)[None]})
    ev = rule.evidence(np.array([[0.3, 0.4]]), np.zeros((1, 2)))
    np.testing.assert_allclose(ev, [[0.5]])


def test_embedding_rule_averages_windows_not_dimensions():
    bank = np.array([[1.0, 0.0], [0.0, 1.0]])
    rule = Rule("embedding", {"bank": bank, "bank_target": np.array([False, False]),
                              "bank_scale": np.array([1.0, 1.0]),
                              "embedding_mean": np.zeros(2), "embedding_std": np.ones(2)})
    windows = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])     # mean (8/3, 4/3)
    unit = np.array([2.0, 1.0]) / np.sqrt(5.0)
    assert rule.reduce(rule.evidence(None, windows)) == pytest.approx(1 - unit.max())


def test_local_densities_of_a_large_bank(rng):
    from harken.agent.model.rules.density import local_densities
    bank = rng.normal(size=(300, 4))            # large enough that partition does not sort
    own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
    np.fill_diagonal(own, np.inf)
    for k in (1, 2, 7):
        np.testing.assert_allclose(local_densities(bank, k, "euclidean"),
                                   np.sort(own, axis=1)[:, :k].mean(axis=1), rtol=1e-9)
