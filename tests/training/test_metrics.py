import dataclasses
import warnings

import numpy as np
import pytest

from harken.common.errors import DataError
from harken.training.metrics import hmean, machine_hmean, official_score, section_result

# One section worked by hand (see the comments): 3 source normals, 2 target normals,
# one anomaly from each domain.
SCORES = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3]
ANOMALY = [False, False, False, False, False, True, True]
DOMAIN = ["source", "source", "source", "target", "target", "source", "target"]


def test_section_metrics_by_hand():
    r = section_result("fan", 0, SCORES, ANOMALY, DOMAIN)
    # AUC_s: anomalies {0.9, 0.3} vs source normals {0.1, 0.4, 0.35}: 4 of 6 pairs ordered.
    assert r.auc_source == pytest.approx(4 / 6)
    # AUC_t: anomalies vs target normals {0.8, 0.2}: 3 of 4 pairs.
    assert r.auc_target == pytest.approx(3 / 4)
    # pAUC (FPR <= 0.1, all 5 normals): TPR is 0.5 on [0, 0.2], raw area 0.05; McClish:
    # 0.5 * (1 + (0.05 - 0.005) / (0.1 - 0.005)).
    assert r.pauc == pytest.approx(0.5 * (1 + 0.045 / 0.095))
    assert r.hmean == pytest.approx(3 / (6 / 4 + 4 / 3 + 1 / (0.5 * (1 + 0.045 / 0.095))))
    assert (r.n_source_normal, r.n_target_normal, r.n_anomaly) == (3, 2, 2)


def test_perfect_and_inverted_detectors():
    perfect = section_result("fan", 0, [0, 0, 0, 0, 0, 1, 1], ANOMALY, DOMAIN)
    assert (perfect.auc_source, perfect.auc_target, perfect.pauc) == (1.0, 1.0, 1.0)
    inverted = section_result("fan", 0, [1, 1, 1, 1, 1, 0, 0], ANOMALY, DOMAIN)
    assert inverted.auc_source == 0.0
    # The evaluator floors zeros so the harmonic mean stays defined.
    assert 0 < inverted.hmean < 1e-6


def test_official_score_is_hmean_over_all_values():
    a = section_result("fan", 0, SCORES, ANOMALY, DOMAIN)
    b = section_result("pump", 1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.45, 0.6], ANOMALY, DOMAIN)
    values = [a.auc_source, a.auc_target, a.pauc, b.auc_source, b.auc_target, b.pauc]
    assert official_score([a, b]) == pytest.approx(len(values) / sum(1 / v for v in values))
    assert machine_hmean([a, b], "pump") == pytest.approx(b.hmean)
    assert hmean([0.5, 1.0]) == pytest.approx(2 / 3)


def test_bad_sections_are_refused():
    with pytest.raises(DataError, match=r"fan section 03: needs both normal and anomalous test "
                                        r"clips \(has 2 normal, 0 anomalous\)"):
        section_result("fan", 3, [0.1, 0.2], [False, False], ["source", "target"])
    with pytest.raises(DataError, match=r"\(has 0 normal, 3 anomalous\)"):
        section_result("fan", 3, [0.1, 0.2, 0.3], [True, True, True], ["source"] * 3)
    # the module's own message, not sklearn's "Input contains NaN"
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="fan section 03: scores contain NaN or inf"):
            section_result("fan", 3, [bad, 0.2], [False, True], ["source", "target"])


def test_a_domain_without_normals_gets_nan_and_the_rest_still_counts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # NaN by design, not sklearn's undefined-metric warning
        r = section_result("fan", 0, [0.1, 0.2, 0.9, 0.15], [False, False, True, True],
                           ["source"] * 4)
    assert r.auc_source == pytest.approx(3 / 4)
    assert np.isnan(r.auc_target) and r.n_target_normal == 0
    assert r.hmean == pytest.approx(hmean([r.auc_source, r.pauc]))


def test_hmean_skips_nan_and_is_nan_when_nothing_is_left():
    assert hmean([0.5, np.nan, 1.0]) == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(hmean([])) and np.isnan(hmean([np.nan, np.nan]))


def test_results_are_immutable_records_with_their_hmean():
    r = section_result("fan", 0, SCORES, ANOMALY, DOMAIN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.auc_source = 1.0
    d = r.to_dict()
    assert d["hmean"] == r.hmean and d["machine"] == "fan" and d["n_anomaly"] == 2
