"""spectral-knn: the statistics, the pooling, the fused rule against a numpy reference, and
the detector catching an easy fault."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harken.agent.features import LogMelExtractor, preset, windows
from harken.agent.model.rules import make_rule
from harken.agent.model.rules.spectral_knn import pooled_moments, window_moments
from harken.training.data.corpus import scan
from harken.training.data.features import clip_logmels
from harken.training.methods import METHODS, make_method
from harken.training.spectral_knn import VARIANT_WEIGHTS as RULE_WEIGHTS, clip_statistics

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_spectral_knn")


def test_pooled_window_moments_are_the_statistics_of_all_their_frames(rng):
    frames = rng.normal(size=(96, 7)) * rng.uniform(0.5, 3.0, 7) + rng.normal(size=7) * 20
    mean, std = pooled_moments(window_moments(frames.reshape(3, 32, 7)))
    np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-10)


def test_spectrum_frames_are_the_mels_then_the_log_power_spectrum(rng):
    spec = preset("spectral-knn")
    x = rng.normal(size=spec.sample_rate).astype(np.float32)
    both = LogMelExtractor(spec)(x)
    mels = LogMelExtractor(spec.replace(spectrum=False))(x)
    assert both.shape == (mels.shape[0], spec.n_mels + spec.n_fft // 2 + 1)
    np.testing.assert_array_equal(both[:, :spec.n_mels], mels)
    # frame 5, by hand: centre padding of n_fft/2, periodic Hann, 10 log10(|X|^2 + eps)
    padded = np.pad(x.astype(np.float64), spec.n_fft // 2)
    t = 5 * spec.hop_length
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.n_fft) / spec.n_fft)
    power = np.abs(np.fft.rfft(padded[t:t + spec.n_fft] * win)) ** 2
    np.testing.assert_allclose(both[5, spec.n_mels:], 10 * np.log10(power + spec.log_eps),
                               atol=2e-3)


@pytest.fixture(scope="module")
def fan_run(small_fan, tmp_path_factory):
    run = tmp_path_factory.mktemp("spectral") / "fan"
    make_method("spectral-knn").train(scan(small_fan, ["fan"], "train"), run, progress=False)
    return run


def test_fused_score_is_the_mean_of_standardised_nearest_and_density_distances(small_fan,
                                                                              fan_run):
    model = METHODS["spectral-knn"].load(fan_run)
    test = scan(small_fan, ["fan"], "test")[::7]
    spec = model.spec
    logmels = clip_logmels(test, spec, progress=False)
    stats = clip_statistics(logmels, spec, spec.n_mels)
    scores = {r: model.score(test, progress=False, rule=r) for r in RULE_WEIGHTS}
    for i, c in enumerate(test):
        a = model.rule_arrays(c.section)
        parts = []
        for b in ("mel", "spectrum"):
            z = (stats[b][i] - a[f"{b}_mean"]) / a[f"{b}_std"]
            bank = a[f"{b}_bank"]
            own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
            np.fill_diagonal(own, np.inf)
            density = np.sort(own, axis=1)[:, :model.config.density_k].mean(axis=1)
            d = np.linalg.norm(bank - z, axis=1)
            raw = np.array([d.min(), (d / density).min()])
            loo = np.stack([own.min(axis=1), (own / density[None, :]).min(axis=1)], axis=1)
            parts.append((raw - loo.mean(axis=0)) / loo.std(axis=0))
        parts = np.concatenate(parts)          # mel-knn, mel-density, spectrum-knn, spectrum-density
        for rule, w in RULE_WEIGHTS.items():
            if any(w[4:]):                 # the frame branches: tests/agent/test_branches.py
                continue
            assert scores[rule][i] == pytest.approx(parts @ np.array(w[:4]) / sum(w), rel=1e-9)
        # the agent's rule, fed the windows' moments, gives the default score
        rule = make_rule("spectral-knn", a)
        evidence = rule.evidence(None, window_moments(windows(logmels[i], spec)))
        assert rule.reduce(evidence) == pytest.approx(scores["fused"][i], rel=1e-9)


def test_spectral_knn_catches_an_easy_fault(fan_run, easy_test_set):
    clips, labels = easy_test_set
    scores = METHODS["spectral-knn"].load(fan_run).score(clips, progress=False)
    assert roc_auc_score(labels, scores) > 0.9


def test_unknown_rule_and_bad_settings_are_refused_clearly(fan_run):
    model = METHODS["spectral-knn"].load(fan_run)
    with pytest.raises(ValueError, match="score rules \\['fused', 'plain'"):
        model.rule_arrays(0, "logit")
    with pytest.raises(ValueError, match="density_k must be at least 1"):
        make_method("spectral-knn", ["density_k=0"])
    with pytest.raises(ValueError, match="score must be one of"):
        make_method("spectral-knn", ["score=loudest"])


def test_a_clip_shorter_than_one_window_is_refused_by_name():
    spec = preset("spectral-knn")
    with pytest.raises(ValueError, match=r"a\.wav: 10 frames, shorter than one 32-frame window"):
        clip_statistics([np.zeros((10, spec.n_features), np.float32)], spec, spec.n_mels,
                        names=["a.wav"])
