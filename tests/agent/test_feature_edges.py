"""The feature front end at its edges: when the streaming extractor hands frames out, exact
frame and window counts, the shortest signals, and the presets' defining numbers."""

import dataclasses

import numpy as np
import pytest

from harken.common.errors import DataError
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
    # the next group: 4 more frames need 4 more hops, and come out on the last of them
    more = [len(stream.push(x[i:i + 1])) for i in range(span, span + 4 * spec.hop_length)]
    assert more[:-1] == [0] * (4 * spec.hop_length - 1) and more[-1] == 4


def test_non_float32_chunks_take_the_general_path_to_the_same_frames_at_the_same_pushes(rng):
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
    "mobilenetv2-dual": (1024, 512, 128, 64, 8),
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
    assert p.spectrum == (name in ("spectral-knn", "mobilenetv2-dual"))


@pytest.mark.parametrize("field", ["sample_rate", "n_fft", "win_length", "hop_length", "n_mels",
                                   "window_frames", "window_hop"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_size_fields_must_be_positive_integers(field, value):
    with pytest.raises(FeatureSpecError, match=f"field '{field}' = .*: expected a positive "
                                               "integer"):
        FeatureSpec(**{field: value})


def test_band_edges_and_log_floor_must_be_strict():
    with pytest.raises(FeatureSpecError, match="expected 0 <= fmin < fmax"):
        FeatureSpec(fmin=4000.0, fmax=4000.0)
    FeatureSpec(fmin=0.0, fmax=8000.0)                        # both edges allowed
    with pytest.raises(FeatureSpecError, match="'log_eps' = 0.0: expected a positive float"):
        FeatureSpec(log_eps=0.0)


def test_whole_numbers_from_json_are_read_as_the_float_fields_they_are():
    data = SPEC.to_dict() | {"fmin": 0, "fmax": 8000, "power": 2, "log_eps": 1}
    spec = FeatureSpec.from_dict(data)
    assert (spec.fmin, spec.fmax, spec.power, spec.log_eps) == (0.0, 8000.0, 2.0, 1.0)
    assert all(isinstance(v, float) for v in (spec.fmin, spec.fmax, spec.power, spec.log_eps))
    with pytest.raises(FeatureSpecError, match="'log_eps' = True: expected a positive float"):
        FeatureSpec.from_dict(SPEC.to_dict() | {"log_eps": True})


def test_a_stream_refuses_multichannel_chunks_like_the_batch_extractor():
    stream = StreamingLogMel(SPEC)
    with pytest.raises(ValueError, match=r"expected mono audio \(1-D samples\), got shape "
                                         r"\(100, 2\)"):
        stream.push(np.zeros((100, 2), np.float32))


def test_spec_version_and_defaults_are_the_dcase_baselines():
    d = FeatureSpec().to_dict()
    assert d["version"] == 1                                   # what every bundle records
    assert (d["window_frames"], d["window_hop"], d["n_mels"], d["hop_length"]) == (5, 1, 128, 512)
    with pytest.raises(FeatureSpecError, match="feature spec version 2 is not supported"):
        FeatureSpec.from_dict(d | {"version": 2})
    FeatureSpec(n_fft=256, win_length=256, hop_length=256)     # no overlap is allowed
    assert StreamingLogMel(SPEC).max_delay_frames == 16


def test_the_spectrum_follows_the_log_rule(rng):
    x = rng.standard_normal(SPEC.n_fft).astype(np.float64) * 0.1
    for rule in ("none", "dcase"):
        spec = SPEC.replace(center=False, spectrum=True, log_rule=rule)
        frame = LogMelExtractor(spec)(x)[0]
        power = np.abs(np.fft.rfft(x * np.hanning(SPEC.n_fft + 1)[:-1])) ** 2
        want = power if rule == "none" else 10 * np.log10(power + spec.log_eps)
        np.testing.assert_allclose(frame[spec.n_mels:], want, rtol=1e-4, atol=1e-6)


def test_a_stream_takes_plain_lists_too():
    x = list(np.linspace(-0.5, 0.5, 3000))
    a, b = StreamingLogMel(SPEC), StreamingLogMel(SPEC)
    got = np.concatenate([a.push(x), a.finish()])
    np.testing.assert_allclose(got, np.concatenate([b.push(np.array(x, np.float32)),
                                                    b.finish()]), atol=1e-4)


@pytest.mark.parametrize("total", [6000 + k for k in range(0, 256, 37)])
def test_compaction_keeps_what_end_reflection_needs_at_half_overlap(total, rng):
    # hop = n_fft / 2, as every preset has: the buffer is compacted under huge pushes and
    # the end reflection still finds its n_fft/2 + 1 samples
    spec = FeatureSpec(n_fft=256, win_length=256, hop_length=128, n_mels=16, pad_mode="reflect")
    x = (rng.standard_normal(total) * 0.1).astype(np.float32)
    stream = StreamingLogMel(spec, max_delay_frames=1)
    parts = [stream.push(x[i:i + 997]) for i in range(0, total, 997)] + [stream.finish()]
    np.testing.assert_allclose(np.concatenate(parts), LogMelExtractor(spec)(x), atol=1e-4)


def test_a_single_frame_is_handed_out_the_moment_its_last_sample_arrives(rng):
    spec = SPEC.replace(center=False)
    stream = StreamingLogMel(spec, max_delay_frames=1)
    x = (rng.standard_normal(spec.n_fft) * 0.1).astype(np.float32)
    got = [len(stream.push(x[i:i + 1])) for i in range(spec.n_fft)]
    assert got == [0] * (spec.n_fft - 1) + [1]


def test_a_shared_front_end_gives_each_model_exactly_its_own_frames():
    from harken.agent.features import logmel, preset, shared_front_end
    ae, knn = preset("dcase2020-ae"), preset("spectral-knn")
    shared = shared_front_end([ae, knn])
    assert shared.spectrum and shared.window_frames == 32 and shared.window_hop == 32
    x = np.random.default_rng(3).standard_normal(16000).astype(np.float32)
    frames = logmel(x, shared)
    np.testing.assert_array_equal(frames[:, :ae.n_features], logmel(x, ae))
    np.testing.assert_array_equal(frames, logmel(x, knn))


def test_models_that_compute_other_frames_share_no_front_end():
    from harken.agent.features import FeatureSpecError, preset, shared_front_end
    with pytest.raises(FeatureSpecError, match=r"differ in 'n_mels' \(128 vs 64\)"):
        shared_front_end([preset("mobilenetv2"), preset("gmgan")])
    with pytest.raises(FeatureSpecError, match="no feature specs"):
        shared_front_end([])
