"""The label-free choice of spectral-knn's branches and weights: it finds the branch that
carries a planted fault, prefers the simpler variant on ties, scores as the method does,
works with any number of branches and refuses sections too small to split."""

import json

import numpy as np
import pytest

from harken.common.errors import DataError, UsageError
from harken.training.branch_choice import (assign_folds, balance_weights,
                                           balanced_section_result, choose_variant,
                                           component_matrix, copies_per_clip,
                                           default_candidates, proxy_table)
from harken.training.data.corpus import scan
from harken.training.metrics import section_result
from harken.agent.model.rules.spectral_knn import ALL_BRANCHES
from harken.training.spectral_knn import VARIANT_WEIGHTS, SpectralKnn, SpectralKnnConfig


def planted(rng, branches=("mel", "spectrum"), carrier="spectrum", shift=2.0, per_section=30):
    """Normal clip vectors of two sections (source and target), and one faulty copy of each
    clip that differs from it only in the ``carrier`` branch."""
    sections = np.repeat([0, 1], per_section)
    domains = np.tile(["source"] * (per_section - 6) + ["target"] * 6, 2)
    vectors = {b: rng.normal(size=(len(sections), 8)) + 3 * sections[:, None] for b in branches}
    pseudo = {b: v.copy() for b, v in vectors.items()}
    pseudo[carrier] = pseudo[carrier] + shift * rng.choice([-1, 1], size=pseudo[carrier].shape)
    return vectors, sections, domains, pseudo, np.arange(len(sections))


def test_the_branch_that_carries_the_fault_is_chosen_with_any_number_of_branches(rng):
    branches = ("mel", "spectrum", "cepstrum")
    vectors, sections, domains, pseudo, base = planted(rng, branches, carrier="cepstrum")
    candidates = {"mel": [1, 1, 0, 0, 0, 0], "spectrum": [0, 0, 1, 1, 0, 0],
                  "cepstrum": [0, 0, 0, 0, 1, 1], "all": [1] * 6}
    choice = proxy_table(vectors, sections, domains, pseudo, base, candidates, rounds=5)
    assert choice.chosen == "cepstrum"
    assert choice.row("cepstrum").proxy > 0.9
    assert choice.row("cepstrum").proxy > choice.row("all").proxy > choice.row("mel").proxy
    assert choice.row("mel").proxy < 0.7
    assert choice.row("all").branches == list(branches)
    assert choice.settings["held_out_normals"] == choice.settings["pseudo_faults"] == len(sections)
    json.dumps(choice.to_dict(), allow_nan=False)                 # storable in run.json params
    assert "cepstrum" in choice.format_table()


def test_ties_go_to_the_simpler_variant_whatever_the_order(rng):
    # the fault is so large that every variant with the spectrum branch separates it fully
    vectors, sections, domains, pseudo, base = planted(rng, shift=50.0)
    candidates = {"fused": (1, 1, 1, 1), "plain": (1, 0, 1, 0), "spectrum": (0, 0, 1, 1),
                  "spectrum-knn": (0, 0, 1, 0)}
    choice = proxy_table(vectors, sections, domains, pseudo, base, candidates, tie=0.0)
    assert {r.variant: r.proxy for r in choice.rows} == pytest.approx(
        dict.fromkeys(candidates, 1.0))
    assert choice.chosen == "spectrum"              # one branch; then the order given
    # within the tie margin the simpler one wins over a slightly better one
    vectors, sections, domains, pseudo, base = planted(rng, shift=0.6)
    candidates = {"fused": (1, 1, 1, 1), "spectrum": (0, 0, 1, 1)}
    scores = {r.variant: r.proxy for r in
              proxy_table(vectors, sections, domains, pseudo, base, candidates).rows}
    wide = abs(scores["fused"] - scores["spectrum"]) + 0.01
    choice = proxy_table(vectors, sections, domains, pseudo, base, candidates, tie=wide)
    assert choice.chosen == "spectrum"


def test_component_matrix_scores_every_variant_as_the_method_does(rng):
    vectors, sections, _, pseudo, _ = planted(rng, ALL_BRANCHES)
    model = SpectralKnn(SpectralKnnConfig(score="fused"))
    model.fit(vectors, sections)
    comp = component_matrix(model, pseudo, sections)
    for variant, w in VARIANT_WEIGHTS.items():
        w = np.asarray(w, float)
        np.testing.assert_allclose(comp @ w / w.sum(),
                                   model.score_vectors(pseudo, sections, variant), rtol=1e-10)


def test_folds_split_each_section_and_domain_evenly_and_deterministically():
    sections = np.repeat([0, 1], 12)
    domains = np.tile(["source"] * 10 + ["target"] * 2, 2)
    fold = assign_folds(sections, domains, folds=5, seed=3)
    np.testing.assert_array_equal(fold, assign_folds(sections, domains, folds=5, seed=3))
    for s in (0, 1):
        here = sections == s
        assert sorted(np.bincount(fold[here & (domains == "source")], minlength=5)) == [2] * 5
        # the two target clips of a section fall in different folds: both parts keep one
        assert len(set(fold[here & (domains == "target")])) == 2


def test_too_small_sections_and_bad_candidates_are_refused_in_one_line(rng):
    vectors, sections, domains, pseudo, base = planted(rng)
    cases = [
        (lambda: assign_folds([0, 0, 1, 1, 1], ["source"] * 5), DataError,
         "section 00 has 2 training clip(s)"),
        (lambda: assign_folds([0] * 9, ["source"] * 9, folds=1), UsageError, "folds must be"),
        (lambda: proxy_table(vectors, sections, domains, pseudo, base, {"x": (1, 1)}),
         UsageError, "expected 4"),
        (lambda: proxy_table(vectors, sections, domains, pseudo, base, {"x": (0, 0, 0, 0)}),
         UsageError, "do not sum to 0"),
        (lambda: proxy_table(vectors, sections, domains, pseudo, base, {}), UsageError,
         "no candidate"),
        (lambda: proxy_table(vectors, sections, domains, pseudo, base, {"fused": (1,) * 4},
                             rounds=6), UsageError, "rounds must be 1..5")]
    for call, error, text in cases:
        with pytest.raises(error) as exc:
            call()
        assert text in str(exc.value) and "\n" not in str(exc.value)


def test_default_candidates_are_the_methods_variants_plus_each_branch_and_all():
    assert default_candidates(list(ALL_BRANCHES)) == VARIANT_WEIGHTS     # all are there
    two = default_candidates(["mel", "spectrum"])       # fewer branches: each alone, and all
    assert two == {"mel": (1, 1, 0, 0), "spectrum": (0, 0, 1, 1), "all": (1, 1, 1, 1)}
    three = default_candidates(["mel", "spectrum", "cepstrum"])
    assert three["cepstrum"] == (0, 0, 0, 0, 1, 1) and three["all"] == (1,) * 6


def test_choosing_on_a_corpus_needs_only_its_training_clips(tiny_corpus):
    clips = scan(tiny_corpus, ["fan"], "train")
    choice = choose_variant(clips, per_clip=1, rounds=2)
    assert choice.chosen in VARIANT_WEIGHTS
    # per section and fold: one of the 2 target clips (dealt first) and one of the 8 source
    assert choice.settings["held_out_normals"] == 8
    assert choice.settings["pseudo_faults"] == 8            # domains even: one copy each
    assert all(0.0 <= r.proxy <= 1.0 for r in choice.rows)
    assert all(r.auc_target == r.auc_target for r in choice.rows)     # target held out too
    again = choose_variant(clips, per_clip=1, rounds=2)
    assert json.dumps(again.to_dict(), allow_nan=False) == json.dumps(choice.to_dict())


def test_source_and_target_count_equally_as_in_dcase_test_sets(rng):
    sections = np.repeat([0, 1], 30)
    domains = np.tile(["source"] * 24 + ["target"] * 6, 2)
    faulty = rng.random(60) < 0.5
    w = balance_weights(sections, domains, faulty)
    for s in (0, 1):
        for d in ("source", "target"):
            for f in (False, True):
                group = (sections == s) & (domains == d) & (faulty == f)
                assert w[group].sum() == pytest.approx(1.0 if group.any() else 0.0)
    # with equal weights it is the evaluator's own section result
    scores = rng.normal(size=60) + faulty
    here = sections == 0
    ours = balanced_section_result("m", 0, scores[here], faulty[here], domains[here],
                                   np.ones(30))
    assert ours == section_result("m", 0, scores[here], faulty[here], domains[here])
    # the rarer domain gets more faulty copies, up to the cap
    assert copies_per_clip(sections, domains, 2) == [2] * 24 + [8] * 6 + [2] * 24 + [8] * 6
    assert copies_per_clip(sections, domains, 1, most=3)[-1] == 3


def test_score_auto_chooses_weights_per_machine_keeps_them_in_the_run_and_exports_them(
        tiny_corpus, tmp_path):
    """``--set score=auto``: the run records the proxy's choice and its weights, loads back
    scoring with them, lists ``auto`` among its rules, and its bundle carries those weights."""
    from harken.agent.model.bundle import open_bundle
    from harken.export.bundle import ExportOptions, write_bundle
    from harken.training.spectral_knn import SpectralKnnConfig

    clips = scan(tiny_corpus, ["fan"], "train")
    run = tmp_path / "fan"
    SpectralKnn(SpectralKnnConfig(score="auto")).train(clips, run, progress=False)
    params = json.loads((run / "run.json").read_text())["params"]
    chosen = params["chosen"]
    assert chosen in VARIANT_WEIGHTS and params["proxy"]["chosen"] == chosen
    weights = params["chosen_weights"]
    assert weights == list(VARIANT_WEIGHTS[chosen])
    model = SpectralKnn.load(run)
    assert model.default_rule == "auto" and "auto" in model.score_rules
    test = scan(tiny_corpus, ["fan"], "test")
    scores = model.score_all(test, progress=False, rules=["auto", chosen])
    assert np.allclose(scores["auto"], scores[chosen])
    bundle = write_bundle(run, tmp_path / "bundle", tiny_corpus, ExportOptions())
    open_bundle(bundle)
    used = [w for w in weights if w > 0]             # the weighed branches' weights
    assert np.load(bundle / "arrays" / "fusion_weights_00.npy").tolist() == used


def test_auto_that_cannot_choose_falls_back_to_fused_and_says_so(tmp_path, capsys):
    """Was: a bare chooser message (no machine, and a false 'copies' diagnosis) refusing a
    section too small to hold clips out, where fixed weights train fine."""
    from harken.training import cli
    from tests.training.test_corpus_scan import corpus
    corpus(tmp_path / "c", train=3, test=1)
    assert cli.main(["train", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "r"),
                     "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: fan: score=auto could not choose" in err and "using 'fused'" in err
    params = json.loads((tmp_path / "r" / "fan" / "run.json").read_text())["params"]
    assert params["chosen"] == "fused" and params["proxy"]["fallback"]
    assert params["chosen_weights"] == list(VARIANT_WEIGHTS["fused"])


def test_weights_that_overflow_and_chosen_weights_that_are_not_numbers_are_refused(
        tiny_corpus, tmp_path):
    from harken.training.runs import RunError
    from harken.training.spectral_knn import parse_weights
    with pytest.raises(UsageError, match="finite sum"):
        parse_weights(",".join(["1e308"] * 10))
    run = tmp_path / "fan"
    SpectralKnn(SpectralKnnConfig(score="auto")).train(scan(tiny_corpus, ["fan"], "train"),
                                                       run, progress=False)
    info = json.loads((run / "run.json").read_text())
    for bad in ("1100111111", [True] * 10, [1e308] * 10):
        info["params"]["chosen_weights"] = bad
        (run / "run.json").write_text(json.dumps(info))
        with pytest.raises(RunError, match="chosen_weights") as exc:
            SpectralKnn.load(run)
        assert "\n" not in str(exc.value)
