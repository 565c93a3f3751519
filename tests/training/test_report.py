"""The results page's per-fault table: scores read back from DCASE result files and AUCs per
fault kind computed against the section's normals."""

import csv

import pytest

from harken.training.evaluate import read_result_scores
from harken.training.report import fault_aucs, fault_lines


def _clip(machine, section, name, label, fault=None):
    return {"file": f"{machine}/test/{name}", "machine": machine, "section": section,
            "split": "test", "label": label, "fault": fault}


def _write_scores(folder, machine, section, rows):
    with open(folder / f"anomaly_score_{machine}_section_{section:02d}_test.csv", "w",
              newline="") as f:
        csv.writer(f).writerows(rows)


def test_result_files_are_read_back_per_machine_even_with_underscores(tmp_path):
    _write_scores(tmp_path, "toy_car", 0, [("a.wav", "0.5"), ("b.wav", "2")])
    _write_scores(tmp_path, "fan", 1, [("a.wav", "7")])
    (tmp_path / "decision_result_fan_section_01_test.csv").write_text("a.wav,1\n")
    assert read_result_scores(tmp_path) == {("toy_car", "a.wav"): 0.5, ("toy_car", "b.wav"): 2.0,
                                          ("fan", "a.wav"): 7.0}


def test_fault_auc_separates_fault_kinds_and_averages_sections():
    clips, scores = [], {}
    for section in (0, 1):
        for i, s in enumerate((1.0, 2.0, 3.0)):             # normals score 1..3
            name = f"s{section}_normal_{i}.wav"
            clips.append(_clip("fan", section, name, "normal"))
            scores[("fan", name)] = s
        # 'leak' scores above every normal in both sections: AUC 1
        name = f"s{section}_leak.wav"
        clips.append(_clip("fan", section, name, "anomaly", "leak"))
        scores[("fan", name)] = 10.0
        # 'hum' scores below all normals in section 0 (AUC 0), between 2 and 3 in section 1
        # (2 of 3 normals below it: AUC 2/3); mean 1/3
        name = f"s{section}_hum.wav"
        clips.append(_clip("fan", section, name, "anomaly", "hum"))
        scores[("fan", name)] = 0.0 if section == 0 else 2.5
    clips.append(_clip("fan", 0, "train_clip.wav", "normal") | {"split": "train"})
    aucs = fault_aucs(scores, {"clips": clips})
    assert aucs == {("fan", "hum"): pytest.approx(1 / 3), ("fan", "leak"): 1.0}
    lines = fault_lines({"m": scores, "m [other rule]": scores}, {"clips": clips})
    assert "| machine | fault | m |" in lines
    assert "| fan | hum | 0.33 |" in lines and "| fan | leak | 1.00 |" in lines


def test_no_table_without_fault_names():
    clips = [_clip("fan", 0, "a.wav", "normal")]
    assert fault_lines({"m": {("fan", "a.wav"): 1.0}}, {"clips": clips}) == []
    assert fault_lines({"m": {("fan", "a.wav"): 1.0}}, {}) == []


def test_faults_missed_against_baseline_knn_are_listed():
    clips = [_clip("fan", 0, f"n{i}.wav", "normal") for i in range(3)] + [
        _clip("fan", 0, "leak.wav", "anomaly", "leak"), _clip("fan", 0, "hum.wav", "anomaly", "hum")]
    knn = {("fan", "n0.wav"): 1, ("fan", "n1.wav"): 2, ("fan", "n2.wav"): 3,
           ("fan", "leak.wav"): 9, ("fan", "hum.wav"): 9}
    cnn = dict(knn) | {("fan", "leak.wav"): 0}            # misses the leak, finds the hum
    lines = fault_lines({"baseline-knn": knn, "cnn": cnn}, {"clips": clips})
    assert "- cnn: fan leak (0.00 vs 1.00)" in lines
    lines = fault_lines({"baseline-knn": knn, "same": knn}, {"clips": clips})
    assert "- same: none" in lines


def _evaluation(official, machines, source, target):
    return {"official_score": official, "machines": machines,
            "sections": [{"auc_source": source, "auc_target": target}]}


def test_default_paragraph_says_whether_the_figures_bear_the_default_out():
    from harken.training.methods import DEFAULT_METHOD
    from harken.training.report import _default_lines, _variant_lines
    knn = _evaluation(0.6, {"fan": 0.6, "valve": 0.5}, 0.8, 0.5)
    good = _evaluation(0.7, {"fan": 0.7, "valve": 0.6}, 0.75, 0.7)
    text = "\n".join(_default_lines({DEFAULT_METHOD: good, "baseline-knn": knn}))
    assert f"trains **{DEFAULT_METHOD}**" in text and "highest official score" in text
    assert "highest mean target-domain AUC" in text and "No machine type" in text
    # a better method on the page, a better target AUC elsewhere, a machine below the floor
    worse = _evaluation(0.62, {"fan": 0.7, "valve": 0.45}, 0.9, 0.6)
    text = "\n".join(_default_lines({DEFAULT_METHOD: worse, "baseline-knn": knn, "x": good}))
    assert "**x scores higher (0.7000)**" in text and "x has a higher mean target" in text
    assert "**Below baseline-knn on valve.**" in text
    assert _default_lines({"baseline-knn": knn}) == []
    # the ablation rows name what each one switches
    fused = f"{DEFAULT_METHOD} [fused]"
    rows = "\n".join(_variant_lines({fused: good, f"{DEFAULT_METHOD} [plain]": knn}))
    assert f"| {fused} | {DEFAULT_METHOD} [plain] | local density normalisation, " \
           "on vs off | 0.7000 | 0.6000 | +0.1000 | helped |" in rows
    # the default rule (auto) against the fixed fusion it replaced
    rows = "\n".join(_variant_lines({DEFAULT_METHOD: good, fused: knn}))
    assert f"| {DEFAULT_METHOD} | {fused} | branch weights chosen per machine type" in rows
