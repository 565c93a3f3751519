"""The five machine types of issue 39 (training/synth/plant_machines.py), their roles, and
the real-sound variant of the corpus (docs/corpus.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal

from harken.agent.sources.wavio import read_wav, write_wav
from harken.training import cli
from harken.training.synth.acoustics import SR
from harken.training.synth.corpus import SIZES, synthesize
from harken.training.synth.machines import MACHINES
from harken.training.synth.plant_machines import PLANT_MACHINES
from harken.training.synth.roles import TEST_TYPES, TUNING_TYPES, VALIDATION_TYPES, role

NEW = [m.name for m in PLANT_MACHINES]


@pytest.mark.parametrize("machine", NEW)
def test_each_new_type_renders_normal_and_every_fault_deterministically(machine):
    m = MACHINES[machine]
    n = 2 * SR
    for section in (0, 1):
        for domain in ("source", "target"):
            op = m.operating_points(section, domain)[-1]
            for fault in (None, *m.faults):
                a = m.render(np.random.default_rng(11), m.geometry(section), op, n, fault, 0.7)
                b = m.render(np.random.default_rng(11), m.geometry(section), op, n, fault, 0.7)
                assert a.normal.shape == (n,) and np.all(np.isfinite(a.normal)), (machine, fault)
                assert np.array_equal(a.normal, b.normal)
                if a.added is not None:
                    assert a.added.shape == (n,) and np.all(np.isfinite(a.added))
                    assert np.array_equal(a.added, b.added) and np.std(a.added) > 0
                if fault is not None:   # every fault is a change of the sound
                    normal = m.render(np.random.default_rng(11), m.geometry(section), op, n, None, 0.0)
                    assert a.added is not None or not np.allclose(a.normal, normal.normal), (machine, fault)


def test_new_types_have_faults_of_their_own_kinds_and_domain_shifted_points():
    old_faults = {f for name in TUNING_TYPES for f in MACHINES[name].faults}
    for m in PLANT_MACHINES:
        assert len(m.faults) == 4 and len(set(m.faults) - old_faults) >= 3, m.name
        src = m.operating_points(0, "source")
        tgt = m.operating_points(0, "target")
        assert len(src) >= 3 and len(tgt) == 1 and tgt[0] not in src
        assert set(m.anr_offset_db) <= set(m.faults)


def test_vfd_carrier_does_not_follow_the_shaft_and_gear_pump_ripple_does():
    vfd = MACHINES["vfd_motor"]
    g = vfd.geometry(0)

    def peak(m, g, op, lo, hi):
        x = m.render(np.random.default_rng(0), g, op, 4 * SR, None, 0.0).normal
        f, p = scipy.signal.welch(x, SR, nperseg=8192)
        band = (f > lo) & (f < hi)
        return f[band][np.argmax(p[band])]
    for op in vfd.operating_points(0, "source"):
        assert peak(vfd, g, op, 0.9 * g["carrier"], 1.1 * g["carrier"]) == pytest.approx(g["carrier"], abs=5)
    gp = MACHINES["gear_pump"]
    g = gp.geometry(1)
    op = gp.operating_points(1, "source")[0]
    f_ripple = g["teeth"] * g["rpm"] / 60 * (1 - 0.01 * op["bar"] / 100)
    assert peak(gp, g, op, 0.8 * f_ripple, 1.2 * f_ripple) == pytest.approx(f_ripple, rel=0.02)


def test_roles_are_disjoint_and_cover_every_type():
    groups = [set(TUNING_TYPES), set(VALIDATION_TYPES), set(TEST_TYPES)]
    assert sum(len(g) for g in groups) == len(set().union(*groups))
    assert set().union(*groups) == set(MACHINES)
    assert set(VALIDATION_TYPES) | set(TEST_TYPES) == set(NEW)
    assert role("blower") == "validation" and role("chain_drive") == "test" and role("fan") == "tuning"
    assert role("ToyCar") == "unknown"
    # the tiny corpus the other tests use, and large, hold the six tuning types only
    assert SIZES["tiny"].machines == SIZES["large"].machines == TUNING_TYPES
    assert SIZES["validation"].machines == VALIDATION_TYPES and SIZES["unseen"].machines == TEST_TYPES
    for size in ("validation", "unseen"):
        spec = SIZES[size]
        assert (spec.sections, spec.clip_seconds, spec.source_train, spec.target_train,
                spec.test_per_cell) == (2, 10.0, 100, 10, 50)


def test_synth_machines_takes_the_new_types(tmp_path, capsys):
    out = tmp_path / "c"
    code = cli.main(["synth", "--size", "tiny", "--machines", "blower,gear_pump", "--workers", "1",
                     "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["machines"] == ["blower", "gear_pump"] and meta["real_sounds"] is None
    faults = {r["fault"] for r in meta["clips"] if r["label"] == "anomaly"}
    assert faults <= set(MACHINES["blower"].faults) | set(MACHINES["gear_pump"].faults)


# --- real recorded backgrounds and events ------------------------------------------------
def _real_folder(root, rate=22050):
    """A small stand-in for scripts/fetch-sounds' folder: two backgrounds (a hum, a rustle),
    two events (a knock, a chirp), at a rate the corpus must resample."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * rate)) / rate
    (root / "backgrounds").mkdir(parents=True)
    (root / "events").mkdir()
    hum = 0.3 * np.sin(2 * np.pi * 230 * t) * (1 + 0.5 * np.sin(3 * t))
    write_wav(root / "backgrounds" / "hum.wav", hum, rate)
    write_wav(root / "backgrounds" / "rustle.wav", 0.1 * rng.standard_normal(t.size), rate)
    k = np.arange(int(0.2 * rate)) / rate
    write_wav(root / "events" / "knock.wav", 0.8 * np.exp(-k / 0.02) * np.sin(2 * np.pi * 900 * k), rate)
    write_wav(root / "events" / "chirp.wav", 0.5 * np.sin(2 * np.pi * (500 + 8000 * k) * k), rate)
    return root


def test_real_sounds_are_mixed_into_clips_of_both_labels(tmp_path):
    real = _real_folder(tmp_path / "real")
    plain = synthesize(tmp_path / "plain", "tiny", seed=2, machines=("blower",), workers=1, progress=False)
    mixed = synthesize(tmp_path / "mixed", "tiny", seed=2, machines=("blower",), workers=2, progress=False,
                       real_dir=real)
    again = synthesize(tmp_path / "again", "tiny", seed=2, machines=("blower",), workers=1, progress=False,
                       real_dir=real)
    meta = json.loads((mixed / "corpus.json").read_text())
    described = meta["real_sounds"]
    assert [f["file"] for f in described["backgrounds"]] == ["backgrounds/hum.wav", "backgrounds/rustle.wav"]
    assert [f["file"] for f in described["events"]] == ["events/chirp.wav", "events/knock.wav"]
    assert all(len(f["sha256"]) == 64 for f in described["backgrounds"] + described["events"])
    clips = meta["clips"]
    assert {c["real_background"] for c in clips} == {"backgrounds/hum.wav", "backgrounds/rustle.wav"}
    with_events = {(c["label"], c["domain"]) for c in clips if c["real_events"]}
    assert {"normal", "anomaly"} <= {label for label, _ in with_events}      # never a cue
    assert {"source", "target"} <= {domain for _, domain in with_events}
    plain_meta = {c["file"]: c for c in json.loads((plain / "corpus.json").read_text())["clips"]}
    for c in clips:
        a, _ = read_wav(plain / c["file"])
        b, _ = read_wav(mixed / c["file"])
        assert a.shape == b.shape and not np.allclose(a, b)             # the recordings are in it
        assert (read_wav(again / c["file"])[0] == b).all()             # seeded per clip
        same = {k: plain_meta[c["file"]][k] for k in ("fault", "severity", "anr_db", "snr_db")}
        assert same == {k: c[k] for k in same}     # the machine and its fault are the same clip


@pytest.mark.parametrize("make, says", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: (p / "f.wav").write_bytes(b"x") and p / "f.wav", "a file, not a folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no backgrounds/*.wav"),
    (lambda p: _only_backgrounds(p), "no events/*.wav"),
    (lambda p: _broken(p), "is not a readable WAV file"),
    (lambda p: _silent(p), "is silent or shorter than 50 ms"),
])
def test_bad_real_sounds_folders_are_refused_in_one_line(tmp_path, capsys, make, says):
    folder = make(tmp_path)
    code = cli.main(["synth", "--size", "tiny", "--machines", "valve", "--workers", "1", "--quiet",
                     "--out", str(tmp_path / "c"), "--real-sounds", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and str(folder) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()          # refused before any clip is written


def _only_backgrounds(p):
    (p / "r" / "backgrounds").mkdir(parents=True)
    write_wav(p / "r" / "backgrounds" / "a.wav", 0.1 * np.ones(SR), SR)
    return p / "r"


def _broken(p):
    root = _only_backgrounds(p)
    (root / "events").mkdir()
    (root / "events" / "x.wav").write_bytes(b"RIFF not really")
    return root


def _silent(p):
    root = _only_backgrounds(p)
    (root / "events").mkdir()
    write_wav(root / "events" / "quiet.wav", np.zeros(SR), SR)
    return root


@pytest.mark.parametrize("args, says", [(["--bogus"], "unknown argument '--bogus'"),
                                        (["--debs", "EMPTY"], "no wesnoth-1.16-data_*.deb in it")])
def test_fetch_sounds_refuses_bad_arguments_in_one_line(tmp_path, args, says):
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "fetch-sounds"
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a == "EMPTY" else a for a in args]
    done = subprocess.run(["bash", str(script), *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_fetch_sounds_never_replaces_a_folder_it_did_not_write(tmp_path):
    """Was: --out naming a folder of the user's own files replaced it whole (data lost)."""
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "fetch-sounds"
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "EMPTY").mkdir()
    done = subprocess.run(["bash", str(script), "--out", str(mine), "--debs",
                           str(tmp_path / "EMPTY")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "did not write (no SOURCES.txt)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(
        p.name for p in tmp_path.iterdir()) == ["EMPTY", "mydata"]


def test_real_sounds_take_upper_case_wav_names(tmp_path):
    """Was: backgrounds/HUM.WAV passed over ('no backgrounds/*.wav')."""
    from harken.training.synth import real_sounds
    root = tmp_path / "sounds"
    for kind, name in (("backgrounds", "HUM.WAV"), ("events", "knock.Wav")):
        (root / kind).mkdir(parents=True)
        t = np.arange(SR) / SR
        write_wav(root / kind / name, (0.1 * np.sin(2 * np.pi * 120 * t)).astype(np.float32), SR)
    loaded = real_sounds.load(root)
    assert loaded is not None
