"""The pseudo-fault mixer of the label-free proxy: deterministic, length and finiteness
kept, and the fault added at the level asked for."""

import numpy as np
import pytest

from harken.common.errors import DataError, UsageError
from harken.training.data.fault_proxy import (ANR_DB, FAULT_KINDS, band_ratio, check_levels,
                                              mix_fault, pseudo_faults)

SR = 16000


@pytest.fixture(scope="module")
def machine_like() -> np.ndarray:
    """Two seconds of a machine-like sound: a 100-Hz harmonic family over pink-ish noise."""
    rng = np.random.default_rng(5)
    t = np.arange(2 * SR) / SR
    tones = sum(a * np.sin(2 * np.pi * 100 * k * t) for k, a in ((1, 0.3), (2, 0.2), (5, 0.1)))
    noise = np.cumsum(rng.standard_normal(len(t))) * 0.002
    noise -= np.convolve(noise, np.ones(401) / 401, mode="same")      # drop the drift
    return (0.1 * tones + noise + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_kind_is_deterministic_per_seed_and_keeps_length_and_finiteness(machine_like, kind):
    a, info_a = mix_fault(machine_like, SR, 7, kind)
    b, info_b = mix_fault(machine_like, SR, 7, kind)
    c, _ = mix_fault(machine_like, SR, 8, kind)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b and info_a.kind == kind
    assert not np.array_equal(a, c)
    assert a.shape == machine_like.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert ANR_DB[kind][0] <= info_a.anr_db <= ANR_DB[kind][1]
    assert not np.array_equal(a, machine_like)


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("anr", [-20.0, 3.0])
def test_the_fault_is_added_at_the_ratio_asked_for(machine_like, kind, anr):
    mixed, info = mix_fault(machine_like, SR, 3, kind, anr)
    added = mixed.astype(np.float64) - machine_like
    # in the fault's own band (the level's definition) ...
    measured = 10 * np.log10(band_ratio(added, machine_like, SR))
    assert measured == pytest.approx(anr, abs=0.05)
    # ... and over the whole clip, as recorded in the info
    whole = 10 * np.log10(np.sum(added ** 2) / np.sum(machine_like.astype(np.float64) ** 2))
    assert whole == pytest.approx(info.params["global_anr_db"], abs=0.05)


def test_band_ratio_of_broadband_sound_is_the_plain_energy_ratio():
    rng = np.random.default_rng(1)
    clip, added = rng.standard_normal(4 * SR), 0.1 * rng.standard_normal(4 * SR)
    assert 10 * np.log10(band_ratio(added, clip, SR)) == pytest.approx(-20.0, abs=0.3)
    # a tone is measured against the clip's power in its own bin, not the whole clip's
    tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(4 * SR) / SR)
    assert band_ratio(tone, clip, SR) > 10 * np.sum(tone ** 2) / np.sum(clip ** 2)


def test_pseudo_faults_cycle_the_kinds_and_a_copy_does_not_depend_on_the_other_clips(machine_like):
    other = np.roll(machine_like, 1000)
    out, infos, base = pseudo_faults([machine_like, other], SR, seed=4, per_clip=3)
    assert [i.kind for i in infos] == list(FAULT_KINDS)
    assert base.tolist() == [0, 0, 0, 1, 1, 1]
    again, _, _ = pseudo_faults([machine_like[::-1].copy(), other], SR, seed=4, per_clip=3)
    for j in range(3, 6):
        np.testing.assert_array_equal(out[j], again[j])


def test_bad_clips_and_settings_are_refused_in_one_line(machine_like):
    cases = [(lambda: mix_fault(np.zeros(SR, np.float32), SR, 0), DataError, "silent"),
             (lambda: mix_fault(machine_like[:100], SR, 0), DataError, "at least 0.25 s"),
             (lambda: mix_fault(np.r_[machine_like, np.nan], SR, 0), DataError, "NaN"),
             (lambda: mix_fault(machine_like, SR, 0, "squeal"), UsageError, "'squeal'"),
             (lambda: check_levels({"tone": (3.0, -3.0)}), UsageError, "low <= high"),
             (lambda: check_levels({"tone": "loud"}), UsageError, "(low, high)"),
             (lambda: pseudo_faults([machine_like], SR, per_clip=0), UsageError, "at least 1")]
    for call, error, text in cases:
        with pytest.raises(error) as exc:
            call()
        assert text in str(exc.value) and "\n" not in str(exc.value)
