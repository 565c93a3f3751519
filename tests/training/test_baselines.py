"""baseline-knn and its density-normalised rule on the tiny corpus."""

import json

import numpy as np
import pytest

from harken.agent.model.rules.density import local_densities
from harken.training.baselines import (DENSITY_K_CHOICES, domain_balanced_auc,
                                       folds_by_group)
from harken.training.data.corpus import scan
from harken.training.methods import METHODS, make_method


def test_knn_density_rule_divides_each_distance_by_the_clips_local_density(tiny_corpus, tmp_path):
    train = scan(tiny_corpus, ["fan"], "train")
    test = scan(tiny_corpus, ["fan"], "test")
    make_method("baseline-knn").train(train, tmp_path / "knn", progress=False)
    model = METHODS["baseline-knn"].load(tmp_path / "knn")
    k = model.density_k
    assert model.score_rules == ("knn", "knn-density", "knn-fused") and k in DENSITY_K_CHOICES
    # the k was chosen on training data: the best of the recorded pseudo-anomaly AUCs
    choice = json.loads((tmp_path / "knn" / "run.json").read_text())["params"]["density_k_choice"]
    assert sorted(choice["auc"]) == sorted(str(c) for c in DENSITY_K_CHOICES)
    assert choice["auc"][str(k)] == max(choice["auc"].values())
    vectors = model.vectors(test, progress=False)
    z = (vectors - model.mean) / model.std
    plain = model.score(test, progress=False)
    dense = model.score(test, progress=False, rule="knn-density")
    fused = model.score(test, progress=False, rule="knn-fused")
    for i, c in enumerate(test):
        bank = model.bank[c.section]
        d = np.linalg.norm(bank - z[i], axis=1)
        density = local_densities(bank, k, "euclidean")
        assert plain[i] == pytest.approx(d.min())
        assert dense[i] == pytest.approx((d / density).min())
        # fusion: each rule standardised by its leave-one-out training scores, averaged
        own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
        np.fill_diagonal(own, np.inf)
        loo_a, loo_b = own.min(axis=1), (own / density[None, :]).min(axis=1)
        assert fused[i] == pytest.approx(0.5 * ((d.min() - loo_a.mean()) / loo_a.std()
                                                + (dense[i] - loo_b.mean()) / loo_b.std()))
    with pytest.raises(ValueError, match="score rules \\['knn', 'knn-density', 'knn-fused'\\]"):
        model.score(test, progress=False, rule="logit")


def test_choice_folds_hold_out_every_section_and_domain():
    sections = [0] * 7 + [1] * 3
    domains = ["source"] * 5 + ["target"] * 2 + ["source"] * 3
    fold = folds_by_group(sections, domains, 2, seed=3)
    for key in {(0, "source"), (0, "target"), (1, "source")}:
        idx = [i for i, k in enumerate(zip(sections, domains)) if k == key]
        assert sorted(np.bincount(fold[idx], minlength=2)) == sorted(
            [len(idx) // 2, len(idx) - len(idx) // 2])      # dealt evenly
    np.testing.assert_array_equal(fold, folds_by_group(sections, domains, 2, seed=3))


def test_domain_balanced_auc_is_the_harmonic_mean_over_sections_and_domains():
    normal = np.array([0.1, 0.2, 0.9, 0.3])                   # section 0: 2 source, 1 target
    sections, domains = np.array([0, 0, 0, 1]), np.array(["source", "source", "target", "source"])
    pseudo, pseudo_sections = np.array([0.5, 0.6, 0.4]), np.array([0, 0, 1])
    # section 0 source: both normals below both pseudo -> 1; target: 0.9 above both -> 0;
    # section 1 source: 0.3 below 0.4 -> 1; the harmonic mean floors the 0
    from harken.training.metrics import hmean
    assert domain_balanced_auc(normal, pseudo, sections, domains, pseudo_sections) == \
        pytest.approx(hmean([1.0, 0.0, 1.0]))
