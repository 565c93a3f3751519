import json

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from harken.agent.features import logmel, preset
from harken.training.data.corpus import scan
from harken.training.synth.acoustics import SR
from harken.training.synth.corpus import SIZES, ClipJob, render_clip, synthesize
from harken.training.synth.machines import MACHINES


def test_layout_counts_and_ground_truth(tiny_corpus):
    size = SIZES["tiny"]
    meta = json.loads((tiny_corpus / "corpus.json").read_text())
    clips = scan(tiny_corpus)
    per_machine = size.sections * (size.source_train + size.target_train + 4 * size.test_per_cell)
    assert len(clips) == len(size.machines) * per_machine == len(meta["clips"])
    for rec in meta["clips"]:
        if rec["label"] == "anomaly":
            assert rec["split"] == "test"
            assert rec["fault"] in MACHINES[rec["machine"]].faults
        else:
            assert rec["fault"] is None
    fan_train = [c for c in clips if c.machine == "fan" and c.split == "train"]
    assert sum(c.domain == "target" for c in fan_train) == size.sections * size.target_train
    rate, data = scipy.io.wavfile.read(fan_train[0].path)
    assert rate == 16000 and data.dtype == np.int16 and data.ndim == 1
    assert data.size == int(size.clip_seconds * SR)


def test_deterministic_whatever_the_worker_count(tmp_path):
    a = synthesize(tmp_path / "a", "tiny", seed=7, machines=("valve",), workers=1, progress=False)
    b = synthesize(tmp_path / "b", "tiny", seed=7, machines=("valve",), workers=2, progress=False)
    c = synthesize(tmp_path / "c", "tiny", seed=8, machines=("valve",), workers=1, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.wav"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def envelope_spectrum_peak(x: np.ndarray, lo: float, hi: float) -> float:
    env = np.abs(scipy.signal.hilbert(x))
    spec = np.abs(np.fft.rfft(env - env.mean()))
    f = np.fft.rfftfreq(env.size, 1 / SR)
    band = (f >= lo) & (f <= hi)
    return float(f[band][np.argmax(spec[band])])


def test_bearing_outer_race_rings_at_bpfo():
    m = MACHINES["bearing"]
    g = m.geometry(0)
    op = m.operating_points(0, "source")[1]
    out = m.render(np.random.default_rng(0), g, op, 4 * SR, "outer_race", 1.0)
    fr = op["vel"] / 60
    bpfo = g["balls"] / 2 * fr * (1 - g["ratio"])
    assert envelope_spectrum_peak(out.added, 0.5 * bpfo, 1.5 * bpfo) == pytest.approx(bpfo, rel=0.03)


def test_gearbox_mesh_frequency_and_fan_imbalance():
    gm = MACHINES["gearbox"]
    g = gm.geometry(1)
    op = gm.operating_points(1, "source")[0]
    x = gm.render(np.random.default_rng(0), g, op, 4 * SR, None, 0.0).normal
    f1 = op["vol"] * g["rpm_per_volt"] / 60 * (1 - 0.02 * op["wt"] / 150)
    f, p = scipy.signal.welch(x, SR, nperseg=8192)
    band = (f > 0.8 * g["z1"] * f1) & (f < 1.2 * g["z1"] * f1)
    assert f[band][np.argmax(p[band])] == pytest.approx(g["z1"] * f1, rel=0.02)

    fan = MACHINES["fan"]
    g, op = fan.geometry(0), fan.operating_points(0, "source")[1]
    fr = op["spd"] / 60

    def one_x(fault, sev):
        y = fan.render(np.random.default_rng(3), g, op, 4 * SR, fault, sev).normal
        f, p = scipy.signal.welch(y, SR, nperseg=16384)
        return p[np.argmin(np.abs(f - fr))]
    assert one_x("imbalance", 0.5) > 4 * one_x(None, 0.0)


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_target_domain_is_shifted(machine):
    """The target domain differs from the source more than source clips differ among
    themselves: a domain shift that a detector must cope with."""
    spec = preset("dcase2020-ae")

    def mean_spec(domain, i):
        x, _, _ = render_clip(ClipJob(machine, 0, domain, "train", "normal", i, 3.0, 0))
        return logmel(x, spec).mean(axis=0)
    src = np.stack([mean_spec("source", i) for i in range(4)])
    tgt = np.stack([mean_spec("target", i) for i in range(2)])
    within = np.mean([np.linalg.norm(a - b) for i, a in enumerate(src) for b in src[i + 1:]])
    across = np.mean([np.linalg.norm(a - b) for a in src for b in tgt])
    assert across > 1.5 * within


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_every_fault_changes_the_sound(machine):
    m = MACHINES[machine]
    for fault in m.faults:
        g, op = m.geometry(0), m.operating_points(0, "source")[0]
        normal = m.render(np.random.default_rng(5), g, op, 2 * SR, None, 0.0)
        faulty = m.render(np.random.default_rng(5), g, op, 2 * SR, fault, 0.6)
        changed = faulty.added is not None or not np.allclose(faulty.normal, normal.normal)
        assert changed, f"{machine}/{fault} renders the same as normal"


def test_unknown_size_and_machine(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus size"):
        synthesize(tmp_path, "huge")
    with pytest.raises(ValueError, match="unknown machine type 'drill'"):
        synthesize(tmp_path, "tiny", machines=("drill",))
