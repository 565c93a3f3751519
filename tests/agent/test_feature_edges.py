"""The feature front end at its edges: when the streaming extractor hands frames out, exact
frame and window counts, the shortest signals, and the presets' defining numbers."""

import dataclasses

import numpy as np
import pytest

from harken.agent.errors import DataError
from harken.agent.features import (
    PRESETS, FeatureSpec, FeatureSpecError, LogMelExtractor, StreamingLogMel, preset, windows,
)
from harken.agent.features.windows import n_windows

SPEC = FeatureSpec(n_fft=256, win_length=256, hop_length=64, n_mels=16, fmax=8000.0)


def test_a_group_of_frames_is_handed_out_as_soon_as_its_samples_are_in(rng):
    spec = SPEC.replace(center=False)
    stream = StreamingLogMel(spec, max_delay_frames=4)
    span = spec.n_fft + 3 * spec.hop_length                # samples for a group of 4 frames
    x = (rng.standard_normal(3 * span) * 0.1).astype(np.float32)
    got = [len(stream.push(x[i:i + 1])) for i in range(span)]
    assert got[:-1] == [0] * (span - 1) and got[-1] == 4    # not one sample late or early
    assert stream.samples_seen == span


def test_pushing_non_float32_chunks_takes_the_same_path_to_the_same_frames(rng):
    spec = SPEC.replace(center=False)
    x = (rng.standard_normal(4000) * 0.1).astype(np.float32)
    fast, slow = StreamingLogMel(spec, 2), StreamingLogMel(spec, 2)
    a = [fast.push(x[i:i + 100]) for i in range(0, x.size, 100)]
    b = [slow.push(x[i:i + 100].astype(np.float64)) for i in range(0, x.size, 100)]
    assert [len(f) for f in a] == [len(f) for f in b]
    np.testing.assert_allclose(np.concatenate(a + [fast.finish()]),
                               np.concatenate(b + [slow.finish()]), atol=1e-4)


def test_samples_seen_counts_every_sample_pushed_through_flush_and_reset(rng):
    stream = StreamingLogMel(SPEC, max_delay_frames=3)
    assert stream.samples_seen == 0
    x = (rng.standard_normal(1000) * 0.1).astype(np.float32)
    for i in range(0, 1000, 90):
        stream.push(x[i:i + 90])
    assert stream.samples_seen == 1000
    stream.flush()
    assert stream.samples_seen == 1000
    stream.finish()
    assert stream.samples_seen == 0


@pytest.mark.parametrize("extra", range(SPEC.hop_length))
def test_reflect_padding_at_the_end_gives_the_batch_frame_count_for_every_length(extra, rng):
    spec = SPEC.replace(pad_mode="reflect")
    x = (rng.standard_normal(10 * spec.hop_length + extra) * 0.1).astype(np.float32)
    stream = StreamingLogMel(spec, max_delay_frames=2)
    got = np.concatenate([stream.push(x[:500]), stream.push(x[500:]), stream.finish()])
    batch = LogMelExtractor(spec)(x)
    assert got.shape == batch.shape == (spec.n_frames(x.size), spec.n_mels)
    np.testing.assert_allclose(got, batch, atol=1e-4)


def test_too_short_for_reflect_padding_is_a_data_error_and_an_empty_stream_is_not():
    spec = SPEC.replace(pad_mode="reflect")
    half = spec.n_fft // 2
    with pytest.raises(DataError, match=f"signal of {half} samples is too short for reflect "
                                        rf"padding \(needs more than {half}\)"):
        LogMelExtractor(spec)(np.zeros(half, np.float32))
    assert LogMelExtractor(spec)(np.zeros(half + 1, np.float32)).shape == (
        spec.n_frames(half + 1), spec.n_mels)
    stream = StreamingLogMel(spec)
    assert stream.finish().shape == (0, spec.n_mels)          # nothing pushed: no error
    stream.push(np.zeros(10, np.float32))
    with pytest.raises(DataError, match="signal of 10 samples is too short"):
        stream.finish()


def test_a_signal_of_exactly_one_frame_without_centring_gives_one_frame():
    spec = SPEC.replace(center=False)
    assert LogMelExtractor(spec)(np.zeros(spec.n_fft, np.float32)).shape == (1, spec.n_mels)
    assert LogMelExtractor(spec)(np.zeros(spec.n_fft - 1, np.float32)).shape == (0, spec.n_mels)
    assert (spec.n_frames(spec.n_fft), spec.n_frames(spec.n_fft - 1)) == (1, 0)


def test_frame_and_window_counts_and_durations():
    assert SPEC.n_frames(0) == 1 and SPEC.n_frames(640) == 11       # centred: 1 + n // hop
    assert SPEC.replace(center=False).n_frames(640) == 7            # 1 + (640 - 256) // 64
    assert SPEC.frame_seconds == 64 / 16000
    assert SPEC.window_seconds == ((5 - 1) * 64 + 256) / 16000      # 5 frames of 256, hop 64
    spec = SPEC.replace(window_frames=4, window_hop=3)
    assert [n_windows(n, spec) for n in (3, 4, 6, 7, 10)] == [0, 1, 1, 2, 3]
    feats = np.arange(10 * SPEC.n_features, dtype=np.float32).reshape(10, -1)
    w = windows(feats, spec)
    assert w.shape == (3, 4, SPEC.n_features)
    np.testing.assert_array_equal(w[1], feats[3:7])


@pytest.mark.parametrize("shape", [(10,), (10, 3), (2, 10, 16)])
def test_features_of_the_wrong_shape_are_refused(shape):
    with pytest.raises(ValueError, match=r"expected features of shape \(frames, 16\)"):
        windows(np.zeros(shape, np.float32), SPEC)


def test_spec_defaults_errors_and_immutability():
    assert FeatureSpec().fmin == 0.0 and FeatureSpec().fmax == 8000.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.n_mels = 8
    with pytest.raises(FeatureSpecError, match=r"expected 0 <= fmin < fmax <= sample_rate/2 "
                                               r"\(8000\.0\)"):
        FeatureSpec(fmax=9000.0)


# The presets are the papers' front ends; a bundle records its spec, so changing one
# silently would refuse every bundle made before. (n_fft, hop, n_mels, window frames, hop)
PAPERS = {
    "dcase2020-ae": (1024, 512, 128, 5, 1),
    "mobilenetv2": (1024, 512, 128, 64, 8),
    "aegan-ad": (2048, 512, 128, 128, 32),
    "gmgan": (1024, 512, 64, 64, 32),
    "spectral-knn": (1024, 512, 128, 32, 32),
    "oevae": (1024, 256, 64, 125, 62),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_the_papers_front_ends(name):
    p = preset(name)
    assert (p.n_fft, p.hop_length, p.n_mels, p.window_frames, p.window_hop) == PAPERS[name]
    assert p.win_length == p.n_fft and p.sample_rate == 16000 and p.name == name
    assert p.spectrum == (name == "spectral-knn")
