"""Score rules (agent/rules/) against values worked out by hand."""

import numpy as np
import pytest

from harken.agent.rules import make_rule as Rule, bank_distance, section_log_odds, softmax, unit_embedding


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
    from harken.agent.rules import output_of
    from harken.agent.rules.base import REGISTRY, ScoreRule, register

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
