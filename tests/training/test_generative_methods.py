"""The generative detectors' own parts: AEGAN-AD's score choice without test labels and its
localisation map, GMGAN's scoring GMM, OEVAE's domain-shift value and outlier needs."""

import json

import numpy as np
import pytest
import torch

from harken.common.errors import DataError
from harken.training.cli import main
from harken.training.data.corpus import scan
from harken.training.data.pseudo_anomalies import choose_rule, pseudo_anomalous
from harken.training.methods import METHODS, make_method
from harken.training.oevae import shift_values

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_generative_methods")


@pytest.fixture(scope="module")
def aegan_run(small_fan, tmp_path_factory):
    run = tmp_path_factory.mktemp("aegan") / "fan"
    make_method("aegan-ad", ["epochs=1"]).train(scan(small_fan, ["fan"], "train"), run,
                                                progress=False)
    return run


def test_aegan_chooses_its_score_on_training_data_and_records_why(aegan_run):
    info = json.loads((aegan_run / "run.json").read_text())
    choice = info["score_choice"]
    assert info["score_rule"] == choice["rule"] in METHODS["aegan-ad"].score_rules
    assert set(choice["pseudo_anomaly_auc"]) == set(METHODS["aegan-ad"].score_rules)
    assert choice["pseudo_anomaly_auc"][choice["rule"]] == max(choice["pseudo_anomaly_auc"].values())
    assert METHODS["aegan-ad"].load(aegan_run).default_rule == choice["rule"]


def test_choose_rule_takes_the_rule_that_separates_pseudo_anomalies():
    normal = {"flat": np.zeros(5) + np.arange(5), "good": np.arange(5.0)}
    pseudo = {"flat": np.arange(5.0), "good": np.arange(5.0) + 10}
    rule, aucs = choose_rule(normal, pseudo)
    assert rule == "good" and aucs == {"flat": 0.5, "good": 1.0}


def test_pseudo_anomalous_clips_keep_their_shape_and_gain_the_added_power(small_fan):
    from harken.training.data.windows import clip_features
    from harken.agent.features import preset
    spec = preset("aegan-ad")
    feats = clip_features(scan(small_fan, ["fan"], "train")[:3], spec, False)
    noise = [np.full((40, spec.n_mels), 20.0, np.float32)]      # loud and short: repeated
    mixed = pseudo_anomalous(feats, noise, spec, anr_db=(0.0, 0.0))
    for m, x in zip(feats, mixed):
        assert x.shape == m.shape
        # ANR 0 dB: as much power added as the clip has, so twice its mean power
        assert (x >= m - 1e-4).all()
        assert np.mean(10 ** (x / 10)) / np.mean(10 ** (m / 10)) == pytest.approx(2.0, rel=1e-3)


def test_localize_draws_the_four_maps(aegan_run, small_fan, tmp_path, capsys):
    clip = next(c for c in scan(small_fan, ["fan"], "test") if c.is_anomaly)
    out = tmp_path / "map.png"
    assert main(["localize", str(aegan_run), str(clip.path), "--out", str(out)]) == 0
    assert out.stat().st_size > 20_000 and "wrote" in capsys.readouterr().out
    maps = METHODS["aegan-ad"].load(aegan_run).localization_maps(
        np.random.default_rng(0).normal(-20, 5, (200, 128)).astype(np.float32))
    assert {k: v.shape for k, v in maps.items()} == {k: (128, 192) for k in
                                                     ("query", "reconstruction", "mean",
                                                      "difference")}
    np.testing.assert_allclose(maps["difference"], np.abs(maps["reconstruction"] - maps["mean"]))


def test_localize_refuses_other_methods_and_missing_clips(small_fan, tmp_path, capsys, aegan_run):
    run = tmp_path / "ae" / "fan"
    make_method("ae", ["epochs=1"]).train(scan(small_fan, ["fan"], "train"), run, progress=False)
    clip = scan(small_fan, ["fan"], "test")[0].path
    assert main(["localize", str(run), str(clip), "--out", str(tmp_path / "m.png")]) == 2
    assert "cannot localise; train aegan-ad" in capsys.readouterr().err
    assert main(["localize", str(aegan_run), str(tmp_path / "nope.wav"),
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "nope.wav" in capsys.readouterr().err and not (tmp_path / "m.png").exists()


@pytest.fixture(scope="module")
def gmgan_run(small_fan, tmp_path_factory):
    run = tmp_path_factory.mktemp("gmgan") / "fan"
    make_method("gmgan", ["epochs=1", "mixtures=3"]).train(scan(small_fan, ["fan"], "train"),
                                                           run, progress=False)
    return run


def test_gmgan_scoring_gmm_is_the_training_windows_mixture(gmgan_run):
    model = METHODS["gmgan"].load(gmgan_run)
    phi, mu, cov = (model.gmm[k].numpy() for k in ("phi", "mu", "cov"))
    assert phi.shape == (3,) and phi.sum() == pytest.approx(1.0)
    assert mu.shape == (3, 16) and cov.shape == (3, 16, 16)
    np.testing.assert_allclose(cov, np.transpose(cov, (0, 2, 1)))
    assert (np.linalg.eigvalsh(cov) > -1e-9).all()                  # covariances, PSD


def test_gmgan_latent_ldn_is_the_density_normalised_distance_to_the_sections_codes(
        gmgan_run, small_fan):
    from harken.training.data.windows import clip_features
    model = METHODS["gmgan"].load(gmgan_run)
    train = scan(small_fan, ["fan"], "train")
    test = scan(small_fan, ["fan"], "test")[::9]
    # the bank: every training clip's mean code, standardised over all of them
    codes = model._scores(clip_features(train, model.spec, False))["code"]
    mean, std = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    got = model.score(test, progress=False, rule="latent-ldn")
    test_codes = model._scores(clip_features(test, model.spec, False))["code"]
    for c, code, score in zip(test, test_codes, got):
        bank = (codes[[t.section == c.section for t in train]] - mean) / std
        own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
        np.fill_diagonal(own, np.inf)
        density = np.sort(own, axis=1)[:, :4].mean(axis=1)
        expected = (np.linalg.norm(bank - (code - mean) / std, axis=1) / density).min()
        assert score == pytest.approx(expected, rel=1e-6)
    with pytest.raises(DataError, match="section 07 was not in the training data"):
        model._ldn(test_codes[:1], [7])
    # with score=latent-ldn the threshold's normal scores leave each training clip out of
    # the bank it is scored against (else every one would be 0)
    import dataclasses
    scores = model._scores(clip_features(train, model.spec, False))
    sections = [c.section for c in train]
    rows = model._fit_code_bank(scores["code"], sections)
    model.config = dataclasses.replace(model.config, score="latent-ldn")
    held = [0, 5, len(train) - 1]
    loo = model._held_out_normal(scores, sections, rows, held)
    for i, score in zip(held, loo):
        rows = [j for j, t in enumerate(train) if t.section == train[i].section]
        bank = (codes[rows] - mean) / std
        own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
        np.fill_diagonal(own, np.inf)
        density = np.sort(own, axis=1)[:, :4].mean(axis=1)
        r = rows.index(i)
        d = np.linalg.norm(bank - bank[r], axis=1) / density
        d[r] = np.inf
        assert score == pytest.approx(d.min(), rel=1e-6) and score > 0


def test_evaluate_every_rule_in_one_pass_equals_each_rule_alone(gmgan_run, tmp_path, capsys):
    every = tmp_path / "every"
    assert main(["evaluate", str(gmgan_run.parent), "--score", "all", "--out", str(every),
                 "--no-baseline", "--no-plots", "--quiet"]) == 0
    assert "latent" in capsys.readouterr().out
    for rule in ("latent", "energy", "latent-ldn"):
        assert main(["evaluate", str(gmgan_run.parent), "--score", rule, "--json",
                     "--out", str(tmp_path / rule), "--no-baseline", "--no-plots", "--quiet"]) == 0
        alone = json.loads(capsys.readouterr().out)
        together = json.loads((every / rule / "metrics.json").read_text())
        assert together["official_score"] == pytest.approx(alone["official_score"])
        assert together["methods"] == {"fan": f"gmgan ({rule} score)"}


def test_an_unexportable_run_is_refused_by_export_with_the_reason(small_fan, tmp_path, capsys):
    """A run of a method without a device graph is refused by name. baseline-knn stays
    unexportable (a workstation baseline), so this keeps testing the refusal once the
    generative detectors export (issue 42)."""
    from harken.export.cli import main as export_main
    from harken.export.graphs import exportable_methods
    assert "baseline-knn" not in exportable_methods()
    run = tmp_path / "knn"
    make_method("baseline-knn").train(scan(small_fan, ["fan"], "train"), run, progress=False)
    assert export_main([str(run), "--out", str(tmp_path / "b")]) == 2
    assert "method 'baseline-knn' has no device graph" in capsys.readouterr().err


def test_oevae_shift_value_is_the_numeric_attribute_or_the_mean_power(tiny_corpus):
    clips = scan(tiny_corpus, ["fan"], "train")
    feats = [np.full((10, 4), float(i)) for i in range(len(clips))]
    values, source = shift_values(clips, feats, "")
    assert source == "attribute 'spd'"
    np.testing.assert_array_equal(values, [float(c.attributes["spd"]) for c in clips])
    no_attr = [type(c)(c.path, c.machine, c.section, c.domain, c.split, c.label, c.index, {})
               for c in clips]
    values, source = shift_values(no_attr, feats, "")
    assert source == "mean power (dB)" and values.tolist() == list(range(len(clips)))
    with pytest.raises(ValueError, match="no numeric attribute 'load'"):
        shift_values(clips, feats, "load")


def test_oevae_needs_other_machine_types(small_fan, tmp_path):
    with pytest.raises(ValueError, match="needs other machine types"):
        make_method("oevae", ["epochs=1"]).train(scan(small_fan, ["fan"], "train"),
                                                 tmp_path / "r", progress=False)


def test_oevae_vae_loss_pulls_the_domain_latent_towards_k_times_v(fan_with_outliers, tmp_path):
    run = tmp_path / "oevae" / "fan"
    make_method("oevae", ["epochs=1", "segments_per_epoch=64"]).train(
        scan(fan_with_outliers, ["fan"], "train"), run, progress=False)
    model = METHODS["oevae"].load(run)
    vae = model.model.vae
    emb = torch.randn(4, vae.encoder[0].in_features)
    with torch.no_grad():
        mu, logvar = vae.encoder(emb).chunk(2, dim=1)
        g = torch.Generator().manual_seed(0)
        near = model.vae_loss(emb, mu[:, 0].clone() / model.config.k_shift,
                              torch.Generator().manual_seed(0))
        far = model.vae_loss(emb, mu[:, 0].clone() / model.config.k_shift + 5.0, g)
    # moving every z_d prior mean by 5 / k adds 8 channels x 25 / 2 to the KL
    assert (far - near).numpy() == pytest.approx(
        [0.5 * ((mu[i, :8] - mu[i, 0] - 5.0) ** 2 - (mu[i, :8] - mu[i, 0]) ** 2).sum().item()
         for i in range(4)], rel=1e-4)


def test_aegan_d_lof_with_too_few_clips_per_section_is_refused_before_training(small_fan, tmp_path):
    """Two clips of a section: a local outlier factor on them would score every clip 0."""
    clips = [c for c in scan(small_fan, ["fan"], "train") if c.section == 0][:2]
    with pytest.raises(DataError, match=r"score=d-lof needs at least 3 training clips per "
                                        r"section .* section 00 has [0-2] after the validation "
                                        r"split \(of its 2\)"):
        make_method("aegan-ad", ["score=d-lof", "epochs=1"]).train(clips, tmp_path / "r",
                                                                 progress=False)
    assert not (tmp_path / "r").exists()
