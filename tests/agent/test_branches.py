"""spectral-knn's frame branches (modulation, temporal, cepstrum; agent/features/): pooled
over windows they are the statistics of all the interval's frames; streamed through the
agent they equal training's batch clip statistics; the rule refuses arrays that do not
agree; a bundle written before them scores exactly as before (docs/architecture.md
"spectral-knn")."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harken.agent.features import LogMelExtractor
from harken.agent.features.bands import band_power
from harken.agent.model.rules import RuleError, make_rule
from harken.agent.model.rules.spectral_knn import (ALL_BRANCHES, branch_statistics, fit_bank,
                                                   interval_vectors, window_evidence,
                                                   window_moments)
from harken.agent.sources.wavio import read_wav

N_MELS, N_FREQS = 128, 513


def _vectors(windows_db):
    ev = window_evidence(window_moments(windows_db), windows_db, N_MELS, ALL_BRANCHES)
    return interval_vectors(ev, N_MELS, N_MELS + N_FREQS, ALL_BRANCHES)


def test_pooled_frame_branches_are_the_statistics_of_all_the_frames(rng):
    """Kurtosis, crest, percentiles and the cepstrum's mean of 4 windows pooled equal those of
    their 128 frames computed at once (written out here; the cepstrum's spread is over the
    windows); modulation is
    the mean over windows of each window's envelope spectrum, also written out."""
    w = rng.normal(-50, 6, size=(4, 32, N_MELS + N_FREQS)) + np.arange(4)[:, None, None] * 3
    w[2, 7, :N_MELS] += 25                       # an impact in one frame
    v = _vectors(w)
    frames = w.reshape(-1, N_MELS + N_FREQS)
    p = band_power(frames[:, :N_MELS])           # (128 frames, 16 groups)
    c = p - p.mean(axis=0)
    kurt = (c ** 4).mean(axis=0) / (c ** 2).mean(axis=0) ** 2
    crest = 10 * np.log10(p.max(axis=0) / p.mean(axis=0))
    e = 10 * np.log10(p)
    q50, q90, q99 = (np.percentile(e, q, axis=0) for q in (50, 90, 99))
    # (float64 here; the branches exponentiate and transform in float32, the features' own
    # precision: agreement to 1e-5)
    np.testing.assert_allclose(v["temporal"], np.r_[np.log10(kurt), crest, q90 - q50, q99 - q50],
                               rtol=1e-5, atol=1e-5)
    # the cepstrum: mean over all frames, spread of the windows' mean cepstra
    ceps = np.fft.irfft(frames[:, N_MELS:], n=1024, axis=1)[:, 8:129]
    per_window = ceps.reshape(4, 32, -1).mean(axis=1)
    np.testing.assert_allclose(v["cepstrum"], np.r_[ceps.mean(axis=0), per_window.std(axis=0)],
                               rtol=1e-5, atol=1e-5)
    depth = []
    for win in w:
        env = band_power(win[:, :N_MELS])
        taper = np.hanning(33)[:32]              # the periodic Hann window
        spec = np.fft.rfft((env - env.mean(axis=0)) * taper[:, None], axis=0)[1:17]
        depth.append(np.abs(spec) ** 2 / ((env * taper[:, None]).sum(axis=0) ** 2))
    np.testing.assert_allclose(v["modulation"], np.log10(np.mean(depth, axis=0).ravel() + 1e-10),
                               rtol=1e-5, atol=1e-5)
    assert {b: len(x) for b, x in v.items()} == {"mel": 256, "spectrum": 513, "modulation": 256,
                                                 "temporal": 64, "cepstrum": 242}
    # the impact shows: kurtosis of its bands far above steady noise's (about 9 for the
    # exponential power of Gaussian dB values at this spread)
    assert v["temporal"][:16].max() > np.log10(20)


def _all_branch_bundle(general_bundle: Path, out: Path) -> Path:
    """The general bundle, its enrollment naming every branch (what `harken-export general
    --variant all` writes; the graph is the same)."""
    shutil.copytree(general_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    m["enrollment"] |= {"branches": list(ALL_BRANCHES), "weights": [1.0] * 10}
    m["model"]["id"] += "-all"
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.mark.parametrize("interval_s, chunk", [(10.0, 1600), (2.0, 4096), (1.5, 333)])
def test_streamed_intervals_equal_the_batch_statistics_of_their_frames(
        general_bundle, small_fan, tmp_path, monkeypatch, interval_s, chunk):
    """Every branch of every interval, streamed through the agent's front end, model and
    rule in chunks, equals training's clip statistics of the same frames (1e-4)."""
    from harken.agent.decision import Decision
    from harken.agent.model.bundle import open_bundle
    from harken.agent.pipeline import Pipeline
    from harken.agent.site.enroll import IntervalStatistics
    from harken.agent.sources.dc import DCRemover
    from harken.training.spectral_knn import clip_statistics
    # training has no DC removal (docs/agent.md "Audio health"); these are the statistics
    monkeypatch.setattr(DCRemover, "push", lambda self, chunk: np.asarray(chunk, np.float32))
    bundle = open_bundle(_all_branch_bundle(general_bundle, tmp_path / "b"))
    stats = IntervalStatistics(bundle, None, 1)
    pipeline = Pipeline(stats, Decision(float("inf")), interval_s)
    wav = sorted((small_fan / "fan" / "train").glob("*.wav"))[0]
    x, _ = read_wav(wav, 16000)
    for i in range(0, len(x), chunk):
        pipeline.push(x[i:i + chunk])
    pipeline.finish()
    spec = bundle.spec
    frames = LogMelExtractor(spec)(x)
    s, hop = pipeline.interval_samples, spec.hop_length
    assert stats.count == len(x) // s >= 1
    for k in range(stats.count):
        lo, hi = -(-k * s // hop), min(-(-(k + 1) * s // hop), len(frames))
        want = clip_statistics([frames[lo:hi]], spec, spec.n_mels)
        for b in ALL_BRANCHES:
            np.testing.assert_allclose(stats.vectors[b][k], want[b][0], rtol=1e-4, atol=1e-4,
                                       err_msg=f"interval {k}, branch {b}")


def _arrays(rng, branches=ALL_BRANCHES):
    widths = {"mel": 2 * N_MELS, "spectrum": N_FREQS, "modulation": 256, "temporal": 64,
              "cepstrum": 242}
    vectors = {b: rng.normal(size=(9, widths[b])) for b in branches}
    arrays, _ = fit_bank(vectors, branch_statistics(vectors), 3, [1.0] * (2 * len(branches)))
    return arrays | {"fusion_weights": np.ones(2 * len(branches)), "n_mels": np.asarray(N_MELS)}


def test_the_rule_scores_any_set_of_branches_and_refuses_arrays_that_disagree(rng):
    arrays = _arrays(rng)
    rule = make_rule("spectral-knn", arrays)
    assert rule.check_model(32 * 641, 2 * 641) is None
    w = rng.normal(-50, 6, size=(3, 32, 641))
    score = rule.reduce(rule.evidence(w.reshape(3, -1), window_moments(w)))
    assert np.isfinite(score)
    # the frame branches alone (no spectrum arrays): the window width comes from the model
    alone = {k: v for k, v in _arrays(rng, ("modulation", "temporal")).items()}
    rule = make_rule("spectral-knn", alone)
    assert rule.check_model(32 * 641, 2 * 641) is None
    assert np.isfinite(rule.reduce(rule.evidence(w.reshape(3, -1), window_moments(w))))
    bad = [
        (dict(fusion_weights=np.ones(4)), "array 'fusion_weights' has 4 values .*; expected 10"),
        (dict(modulation_bank=arrays["modulation_bank"][:, :-1]),
         r"array 'modulation_bank' has 255 columns \(as modulation_mean\); expected 256"),
        (dict(temporal_mean=arrays["temporal_mean"][:-2]),
         "array 'temporal_mean' has 62 values; expected 4 per band group"),
        (dict(cepstrum_fusion=np.ones(3)), "array 'cepstrum_fusion' has 3 values"),
        (dict(cepstrum_density=np.zeros(9)), "array 'cepstrum_density' must be above 0"),
    ]
    for change, why in bad:
        with pytest.raises(RuleError, match=why):
            make_rule("spectral-knn", arrays | change)
    partial = {k: v for k, v in arrays.items() if k != "temporal_std"}
    with pytest.raises(RuleError, match=r"needs arrays \['temporal_std'\] \(branch temporal\)"):
        make_rule("spectral-knn", partial)
    # a model window the vectors were not made from: 16-frame windows give 8 modulation lines
    assert "modulation vector has 256 values" in make_rule("spectral-knn", arrays).check_model(
        16 * 641, 2 * 641)


# The score of these frames with the bundle below, by the code before the frame branches
# existed (commit bcc9c58, run through /work/main's agent): old bundles score exactly so.
OLD_SCORE = 9440.900340147347


def test_a_bundle_written_before_the_frame_branches_scores_exactly_as_before(general_bundle,
                                                                             tmp_path):
    from harken.agent.model.bundle import open_bundle
    from harken.agent.model.factory import make_scorer
    from tests.agent.test_bundle_numbers import spectral_bundle
    b = open_bundle(spectral_bundle(general_bundle, tmp_path / "b"))
    scorer = make_scorer(b, 0)
    assert scorer.rule.branches == ("mel", "spectrum")
    rng = np.random.default_rng(39)
    frames = rng.normal(-40, 5, size=(320, b.spec.n_features)) + np.linspace(0, 6,
                                                                             b.spec.n_features)
    assert scorer.score_frames(frames)[0] == pytest.approx(OLD_SCORE, rel=1e-12)


def test_enrollment_fits_every_branch_the_general_bundle_names_and_scores_as_training(
        general_bundle, small_fan, tmp_path, monkeypatch):
    """`harken enroll` with an all-branch general bundle keeps every branch's statistics and
    fits its bank; the enrolled agent scores a clip as training's spectral-knn with the
    `all` variant on the same clips does (DC removal left out, as in test_enroll.py)."""
    from harken.agent.build import build
    from harken.agent.config import load_config
    from harken.agent.site.enroll import enroll
    from harken.agent.sources.dc import DCRemover
    from harken.testkit.files import write_agent_config
    from harken.training.data.corpus import scan
    from harken.training.spectral_knn import SpectralKnn
    from tests import prebuilt
    prebuilt.workstation_or_skip()
    monkeypatch.setattr(DCRemover, "push", lambda self, chunk: np.asarray(chunk, np.float32))
    train = [c for c in scan(small_fan, ["fan"], "train") if c.section == 0][:8]
    test = [c for c in scan(small_fan, ["fan"], "test") if c.section == 0][:3]
    bundle = _all_branch_bundle(general_bundle, tmp_path / "b")
    cfg = load_config(write_agent_config(
        tmp_path / "agent.toml", agent={"node": "site", "machine": "fan",
                                        "state_dir": tmp_path / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": tmp_path / "x.wav"},
        decision={"interval_s": 10}))
    enroll(cfg, files=[str(c.path) for c in train], progress=False)
    with np.load(cfg.bank_file, allow_pickle=False) as z:
        assert {k for k in z.files if k.startswith("raw_")} == {f"raw_{b}" for b in ALL_BRANCHES}
        assert z["cepstrum_bank"].shape == (8, 242) and z["temporal_bank"].shape == (8, 64)
    _, pipeline = build(cfg)
    model = SpectralKnn(overrides=["score=all"])
    model.train(train, tmp_path / "run", progress=False)
    want = model.score(test, progress=False)
    extract = LogMelExtractor(pipeline.spec)
    for c, w in zip(test, want):
        got = pipeline.scorer.score_logmel(extract(read_wav(c.path, 16000)[0]))
        assert got == pytest.approx(w, rel=1e-4, abs=1e-4)
