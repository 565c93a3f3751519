"""baseline-knn and its density-normalised rule on the tiny corpus."""

import numpy as np
import pytest

from harken.agent.rules.density import local_densities
from harken.training.data.corpus import scan
from harken.training.methods import METHODS, make_method


def test_knn_density_rule_divides_each_distance_by_the_clips_local_density(tiny_corpus, tmp_path):
    train = scan(tiny_corpus, ["fan"], "train")
    test = scan(tiny_corpus, ["fan"], "test")
    make_method("baseline-knn").train(train, tmp_path / "knn", progress=False)
    model = METHODS["baseline-knn"].load(tmp_path / "knn")
    assert model.score_rules == ("knn", "knn-density") and model.density_k == 4
    vectors = model.vectors(test, progress=False)
    z = (vectors - model.mean) / model.std
    plain = model.score(test, progress=False)
    dense = model.score(test, progress=False, rule="knn-density")
    for i, c in enumerate(test):
        bank = model.bank[c.section]
        d = np.linalg.norm(bank - z[i], axis=1)
        assert plain[i] == pytest.approx(d.min())
        assert dense[i] == pytest.approx((d / local_densities(bank, 4, "euclidean")).min())
    with pytest.raises(ValueError, match="score rules \\['knn', 'knn-density'\\]"):
        model.score(test, progress=False, rule="logit")
