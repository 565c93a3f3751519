"""Augmentations: shapes and the invariants each one promises."""

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter

from harken.training.augment import frame_shift, median_filter_time, mixup, smote, spec_augment
from harken.training.augment.mixing import mix_logmel


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(seed=0, b=8, mels=32, frames=40):
    return torch.randn(b, 1, mels, frames, generator=gen(seed))


def test_spec_augment_masks_bands_with_the_sample_mean():
    x = batch()
    y = spec_augment(x, gen(1), time_masks=2, max_time=8, freq_masks=2, max_freq=8)
    assert y.shape == x.shape
    changed = y != x
    means = x.mean(dim=(1, 2, 3))
    for i in range(len(x)):
        assert torch.allclose(y[i][changed[i]], means[i].expand(int(changed[i].sum())))
    # a time mask spans every mel band of its frames, a frequency mask every frame
    assert changed.any()
    assert torch.equal(spec_augment(x, gen(1), 0, 8, 0, 8), x)
    assert torch.equal(spec_augment(x, gen(5)), spec_augment(x, gen(5)))   # seeded


def test_frame_shift_is_a_circular_roll_per_sample():
    x = batch()
    y = frame_shift(x, gen(2), max_shift=5)
    assert y.shape == x.shape
    for i in range(len(x)):
        assert any(torch.equal(y[i], torch.roll(x[i], s, dims=-1)) for s in range(-5, 6))


def test_median_filter_matches_scipy_mirror_mode_and_keeps_stationary_parts():
    x = batch(frames=64)
    y = median_filter_time(x, 31)
    expected = median_filter(x.numpy(), size=(1, 1, 1, 31), mode="mirror")
    np.testing.assert_allclose(y.numpy(), expected)
    flat = torch.ones(1, 1, 4, 64) * 3.0
    spike = flat.clone()
    spike[..., 20] = 50.0
    assert torch.equal(median_filter_time(spike, 31), flat)      # transient removed
    with pytest.raises(ValueError, match="odd"):
        median_filter_time(x, 30)


def test_mixup_makes_convex_mixes_of_inputs_and_labels():
    x = batch()
    labels = torch.eye(8)                       # every sample its own class: lambda recoverable
    xm, ym = mixup(x, labels, gen(3), alpha=0.4)
    assert torch.allclose(ym.sum(dim=1), torch.ones(8))
    for i in range(8):
        lam = ym[i, i]
        j = int(torch.argmax(ym[i] - lam * labels[i])) if lam < 1 else i
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
    same_x, same_y = mixup(x, labels, gen(3), alpha=0.0)
    assert same_x is x and same_y is labels


def test_smote_puts_new_points_on_segments_between_neighbours():
    rng = np.random.default_rng(0)
    two = np.array([[0.0, 0.0], [2.0, 4.0]])
    new = smote(two, 50, rng)
    assert new.shape == (50, 2)
    np.testing.assert_allclose(new[:, 1], 2 * new[:, 0])          # on the segment
    assert (new[:, 0] >= 0).all() and (new[:, 0] <= 2).all()
    windows = rng.normal(size=(10, 4, 3)).astype(np.float32)      # works on any shape
    out = smote(windows, 7, rng, k=3)
    assert out.shape == (7, 4, 3) and out.dtype == np.float32
    assert (out >= windows.min(axis=0)).all() and (out <= windows.max(axis=0)).all()
    with pytest.raises(ValueError, match="at least 2"):
        smote(two[:1], 3, rng)


def test_mix_logmel_adds_powers():
    x = torch.full((2, 640), -30.0)
    same = mix_logmel(x, x, torch.zeros(2))                       # equal power, 0 dB ANR
    assert torch.allclose(same, x + 10 * np.log10(2.0), atol=1e-4)
    quiet = mix_logmel(x, torch.randn(2, 640) * 5, torch.full((2,), -120.0))
    assert torch.allclose(quiet, x, atol=1e-4)


def test_smote_target_fills_each_target_group_up_to_its_source_count():
    from harken.training.augment import smote_target
    rng = np.random.default_rng(0)
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    # section 0: 8 source, 3 target; section 1: 5 source, 1 target (too few to SMOTE);
    # section 2 (key -1: not ours): 1 source, 2 target
    section = np.array([0] * 11 + [1] * 6 + [2] * 3)
    target = np.array([False] * 8 + [True] * 3 + [False] * 5 + [True] + [False] + [True] * 2)
    key = np.where(section == 2, -1, section)
    new, keys = smote_target(x, key, section, target, rng)
    assert keys.tolist() == [0] * 5 and new.shape == (5, 2) and new.dtype == np.float32
    # every new row lies on a segment between two of section 0's target rows (rows 8-10)
    lo, hi = x[8:11].min(axis=0), x[8:11].max(axis=0)
    assert ((new >= lo) & (new <= hi)).all()
    again, _ = smote_target(x, key, section, target, np.random.default_rng(0))
    np.testing.assert_array_equal(new, again)
    none, none_keys = smote_target(x, key, section, np.zeros(20, bool), rng)
    assert none.shape == (0, 2) and none_keys.size == 0
