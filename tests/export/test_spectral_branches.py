"""spectral-knn's score variants over its five branches, from training to bundle: one run
scores every variant, a bundle ships only the branches its variant weighs and verifies,
custom weights and general bundles take any branch set, bad values are one line."""

import json
import shutil

import numpy as np
import pytest

from harken.agent.model.bundle import open_bundle
from harken.agent.model.rules.spectral_knn import ALL_BRANCHES
from harken.export.bundle import ExportOptions, write_bundle
from harken.export.cli import main as export_main
from harken.export.graphs import ExportError
from harken.export.verify import verify
from harken.training.data.corpus import scan
from harken.training.methods import METHODS, make_method


@pytest.fixture(scope="module")
def all_run(tiny_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("branches") / "run"
    make_method("spectral-knn", ["score=all"]).train(scan(tiny_corpus, ["fan"], "train"), run,
                                                     progress=False)
    return run


def test_one_run_scores_every_variant_and_the_fused_default_is_mel_and_spectrum(
        all_run, tiny_corpus):
    model = METHODS["spectral-knn"].load(all_run)
    for v in ("fused", "modulation", "temporal", "cepstrum", "all", "stats"):
        assert v in model.score_rules
    test = scan(tiny_corpus, ["fan"], "test")
    scores = model.score_all(test, progress=False)
    assert all(np.isfinite(s).all() for s in scores.values())
    # a variant is its weights: 'all' is the mean of the five one-branch variants
    one = np.mean([scores[b] for b in ALL_BRANCHES], axis=0)
    np.testing.assert_allclose(scores["all"], one, rtol=1e-9)
    # the chooser's API: any ten weights, here those of 'stats'
    from harken.training.spectral_knn import VARIANT_WEIGHTS, clip_statistics
    from harken.training.data.features import clip_logmels
    vectors = clip_statistics(clip_logmels(test, model.spec, False), model.spec, model.spec.n_mels)
    np.testing.assert_allclose(model.score_vectors(vectors, [c.section for c in test],
                                                   VARIANT_WEIGHTS["stats"]), scores["stats"])
    fused = model.rule_arrays(test[0].section, "fused")
    assert not any(k.startswith(("modulation", "temporal", "cepstrum")) for k in fused)
    assert len(fused["fusion_weights"]) == 4


def test_a_bundle_of_the_all_variant_carries_every_branch_and_verifies(all_run, tiny_corpus,
                                                                       tmp_path):
    bundle = open_bundle(write_bundle(all_run, tmp_path / "bundle", tiny_corpus,
                                      ExportOptions(formats=("onnx",))))
    section = next(iter(bundle.manifest.scoring.sections.values()))
    assert {k.partition("_")[0] for k in section if k.endswith("_bank")} == set(ALL_BRANCHES)
    checks = {c.artifact: c for c in verify(bundle, tiny_corpus, all_run, progress=False)}
    assert checks["onnx-fp32"].max_rel_error < 1e-3
    assert checks["onnx-fp32"].official == pytest.approx(checks["torch-fp32"].official, abs=1e-6)


@pytest.mark.parametrize("sets, why", [
    (["weights=1,2"], "weights must be 10 numbers >= 0, not all 0"),
    (["weights=1,1,1,1,1,1,1,1,1,-1"], "weights must be 10 numbers"),
    (["weights=0,0,0,0,0,0,0,0,0,0"], "weights must be 10 numbers"),
    (["score=custom"], "score=custom needs the weights setting"),
    (["score=loudest"], "score must be one of .*'all', 'stats'"),
])
def test_bad_weights_and_variants_are_refused_in_one_line(sets, why):
    with pytest.raises(ValueError, match=why):
        make_method("spectral-knn", sets)


def test_custom_weights_are_a_variant(all_run, tiny_corpus):
    model = METHODS["spectral-knn"].load(all_run)
    test = scan(tiny_corpus, ["fan"], "test")[:6]
    custom = make_method("spectral-knn", ["weights=0 0 0 0 1 1 0 0 0 0"])
    assert custom.score_rules[-1] == "custom"
    custom.banks, custom.stats, custom.spec = model.banks, model.stats, model.spec
    np.testing.assert_allclose(custom.score(test, progress=False, rule="custom"),
                               model.score(test, progress=False, rule="modulation"))


def test_a_general_bundle_takes_a_variant_and_refuses_an_unknown_one(tmp_path, capsys):
    assert export_main(["general", "--out", str(tmp_path / "g"), "--variant", "loudest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--variant loudest: expected one of fused" in err
    assert export_main(["general", "--out", str(tmp_path / "g"), "--variant", "stats"]) == 0
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["enrollment"]["branches"] == ["mel", "modulation", "temporal", "cepstrum"]
    assert m["enrollment"]["weights"] == [1.0] * 8
    assert m["model"]["id"].startswith("spectral-knn-general-stats-")


def test_a_run_trained_before_the_frame_branches_still_scores_fused_and_names_what_it_lacks(
        all_run):
    model = METHODS["spectral-knn"].load(all_run)
    model.banks = {s: {k: v for k, v in bank.items() if k.startswith(("mel_", "spectrum_"))}
                   for s, bank in model.banks.items()}         # what an older run holds
    s = next(iter(model.banks))
    assert len(model.rule_arrays(s, "fused")["fusion_weights"]) == 4
    with pytest.raises(ValueError, match=r"\(branch\(es\) \['modulation', 'temporal', "
                                         r"'cepstrum'\]: a run trained before they existed\)"):
        model.rule_arrays(s, "all")


def test_a_variant_given_with_a_learned_general_model_is_refused(tmp_path, capsys):
    """Was: --variant silently ignored beside --run (a learned model has no variants)."""
    assert export_main(["general", "--run", str(tmp_path / "run"), "--variant", "stats",
                        "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--variant stats: a spectral-knn setting" in err
    assert not (tmp_path / "g").exists()


def test_calib_without_a_learned_general_model_is_refused(tmp_path, capsys):
    """--calib and --other-corpus calibrate int8 of a learned model; spectral-knn's
    general bundle is float and reads no corpus."""
    assert export_main(["general", "--calib", str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--calib and --other-corpus" in err
    assert not (tmp_path / "g").exists()


def test_general_calibration_reads_only_the_runs_machine_types(tiny_corpus, tmp_path):
    """Was: every type of the corpus, those the general model never trained on included:
    a damaged clip of another type stopped the export of a run that never read it."""
    from harken.agent.features.spec import FeatureSpec
    from harken.export.general_bundle import general_calibration
    root = tmp_path / "tiny"
    shutil.copytree(tiny_corpus, root, symlinks=True)
    (root / "valve" / "train" / "section_00_source_train_normal_9999.wav").write_bytes(b"RIFF?")
    spec = FeatureSpec()
    with pytest.raises(ExportError, match=r"calibration data: .*normal_9999.wav: damaged WAV"):
        general_calibration(root, spec, 20)
    got = general_calibration(root, spec, 20, types=["fan", "gearbox"])
    assert got.shape == (20, spec.window_frames, spec.n_features)
    # another corpus on purpose: every type, its damaged clips passed over
    assert general_calibration(root, spec, 20, skip_bad=True).shape == got.shape
