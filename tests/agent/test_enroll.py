"""On-site enrollment with a general bundle, through the command line on real WAV files:
the bank it writes, `harken run` and `check-config` using it, --append, and every bad
input refused in one line without touching the bank that was there."""

import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.sources.wavio import read_wav, write_wav
from tests import prebuilt
from harken.testkit.files import write_agent_config

# its module-scoped fixtures are costly to build: under xdist one worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_enroll")


@pytest.fixture
def site(small_fan, tmp_path):
    """An installation folder: the agent config, and the fan's section-0 recordings
    copied in (enrolled by relative path, as a technician in that folder would)."""
    from harken.training.data.corpus import scan
    clips = [c for c in scan(small_fan, ["fan"], "train") if c.section == 0]
    rec = tmp_path / "recordings"
    rec.mkdir()
    for c in clips[:12]:
        (rec / c.path.name).write_bytes(c.path.read_bytes())
    test = [c for c in scan(small_fan, ["fan"], "test") if c.section == 0]
    return tmp_path, sorted(p.name for p in rec.iterdir()), test


def config(folder, bundle, wav=None):
    return write_agent_config(
        folder / "agent.toml",
        agent={"node": "site", "machine": "fan", "state_dir": folder / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": wav or folder / "x.wav"},
        decision={"interval_s": 10})


def harken(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_enroll_from_recordings_then_run_and_check_config_use_the_bank(general_bundle, site):
    folder, names, test = site
    cfg = config(folder, general_bundle, test[0].path)
    # before enrollment a general bundle cannot run: the message names the command
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 2 and "run 'harken enroll --config CONFIG' first" in r.stderr
    assert "Traceback" not in r.stderr
    r = harken("enroll", "--config", cfg, "--files", *[f"recordings/{n}" for n in names],
               "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["intervals"], out["new_intervals"], out["audio_s"]) == (12, 12, 120.0)
    assert out["skipped_intervals"] == 0 and out["threshold"] > 0
    bank = folder / "state" / "enrolled-fan.npz"
    assert out["bank"] == str(bank) and bank.stat().st_size == out["bank_bytes"]
    with np.load(bank, allow_pickle=False) as z:
        assert z["raw_mel"].shape == (12, 256) and z["raw_spectrum"].shape == (12, 513)
        assert z["mel_bank"].shape == (12, 256)
    resolved = json.loads(harken("check-config", cfg, cwd=folder).stdout)["resolved"]
    assert resolved["threshold"] == pytest.approx(out["threshold"])
    assert resolved["threshold_from"].startswith("enrollment")
    assert resolved["bank"]["intervals"] == 12
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    started = next(x for x in lines if x.get("status") == "started")
    assert started["bank"]["enrolled"] and started["bank"]["audio_s"] == 120.0
    scores = [x for x in lines if x["kind"] == "score"]
    assert scores and all(np.isfinite(s["score"]) for s in scores)

    # --append with the same files: every interval is a copy of one in the bank (held out
    # it scores 0, the fused scale collapsed and normal audio scored 1e8): refused, the
    # bank untouched
    before = bank.read_bytes()
    r = harken("enroll", "--config", cfg, "--files", f"recordings/{names[0]}",
               f"recordings/{names[1]}", "--append", "--json", cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "only 0 interval(s) of 10 s are new (2 are exact copies of others: the same " \
           "audio given twice)" in r.stderr
    assert bank.read_bytes() == before

    # --append at another interval length: the statistics would not mix
    five = cfg.with_name("five.toml")
    five.write_text(cfg.read_text().replace("interval_s = 10", "interval_s = 5"))
    r = harken("enroll", "--config", five, "--files", f"recordings/{names[0]}", "--append",
               "--json", cwd=folder)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"harken: error: {bank}: enrolled at 10-s intervals, but {five}: decision.interval_s "
        f"= 5; statistics of intervals of two lengths do not mix: enroll again without "
        f"--append, or set decision.interval_s = 10"]
    assert bank.read_bytes() == before
    r = harken("check-config", five, cwd=folder)       # nor is its threshold used at 5 s
    assert r.returncode == 2 and "the enrolled bank's threshold was fitted on 10-s " \
        "intervals" in r.stderr

    # --append: a new operating condition joins the bank, nothing is forgotten
    new = [c for c in test if not c.is_anomaly][1:3]
    for c in new:
        (folder / "recordings" / f"new-{c.path.name}").write_bytes(c.path.read_bytes())
    r = harken("enroll", "--config", cfg, "--files",
               *[f"recordings/new-{c.path.name}" for c in new], "--append", "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    out2 = json.loads(r.stdout)
    assert (out2["intervals"], out2["new_intervals"], out2["audio_s"]) == (14, 2, 140.0)
    assert len(out2["sessions"]) == 2 and out2["duplicate_intervals"] == 0
    with np.load(bank, allow_pickle=False) as z:
        assert z["raw_mel"].shape == (14, 256)


def test_an_enrolled_bank_scores_as_training_on_the_same_clips_would(general_bundle, site,
                                                                     tmp_path, monkeypatch):
    """The bank enrollment writes is the bank spectral-knn training builds from the same
    clips (one section): the same score for every test clip. The device's DC removal
    (docs/agent.md "Audio health"), which training does not do, is left out here: these
    are the statistics' code, the removal is tests/agent/test_audio_in.py's."""
    from harken.agent.sources.dc import DCRemover
    monkeypatch.setattr(DCRemover, "push", lambda self, chunk: np.asarray(chunk, np.float32))
    from harken.agent.config import load_config
    from harken.agent.site.enroll import enroll
    from harken.agent.features import LogMelExtractor
    from harken.agent.build import build
    prebuilt.workstation_or_skip()          # training's spectral-knn is the reference
    from harken.training.data.corpus import scan
    from harken.training.spectral_knn import SpectralKnn
    folder, names, test = site
    cfg = load_config(config(folder, general_bundle))
    enroll(cfg, files=[str(folder / "recordings" / n) for n in names], progress=False)
    _, pipeline = build(cfg)
    from harken.training.spectral_knn import SpectralKnnConfig
    model = SpectralKnn(SpectralKnnConfig(score="fused"))     # the general bundle's variant
    train = [c for c in scan(test[0].path.parents[2], ["fan"], "train")
             if c.path.name in names]
    model.train(train, tmp_path / "run", progress=False)
    want = model.score(test[:6], progress=False)
    extract = LogMelExtractor(pipeline.spec)
    for c, w in zip(test[:6], want):
        got = pipeline.scorer.score_logmel(extract(read_wav(c.path, 16000)[0]))
        assert got == pytest.approx(w, rel=1e-4, abs=1e-4)


def test_bad_input_is_one_clear_line_and_leaves_the_bank_alone(general_bundle, site):
    folder, names, _ = site
    cfg = config(folder, general_bundle, folder / "recordings" / names[0])
    files = [f"recordings/{n}" for n in names]
    assert harken("enroll", "--config", cfg, "--files", *files, cwd=folder).returncode == 0
    bank = folder / "state" / "enrolled-fan.npz"
    before = bank.read_bytes()

    silent = folder / "silent.wav"
    write_wav(silent, np.zeros(16000 * 30, np.float32), 16000)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    cases = [
        (["--files", "silent.wav"], "only 0 usable interval(s) of 10 s (3 silent, dropout, "
                                    "clipped or invalid)"),
        (["--files", "empty.wav"], "empty.wav"),
        (["--files", "nowhere.wav"], "--files: no such file: nowhere.wav"),
    ]
    for args, message in cases:
        r = harken("enroll", "--config", cfg, *args, "--json", cwd=folder)   # no progress bar
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert bank.read_bytes() == before                    # untouched
    assert not list((folder / "state").glob(".*tmp"))        # no temporary file left

    # a bank made for another model, then a damaged one: run refuses, naming the file
    with np.load(bank, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(arrays["manifest"].tobytes())
    edited = {**manifest, "model": "spectral-knn-general-00000000"}
    other = {**arrays, "manifest": np.frombuffer(json.dumps(edited).encode(), np.uint8)}
    np.savez(bank, **other)          # the model is inside the sha256 (bank version 2)
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 2 and "do not match the bank's sha256" in r.stderr
    from harken.agent.model.bank import bank_digest
    plain = {k: v for k, v in arrays.items() if k != "manifest"}
    edited["sha256"] = bank_digest(plain, 2, edited["model"], "fan")    # as if enrolled so
    np.savez(bank, **{**other, "manifest": np.frombuffer(json.dumps(edited).encode(), np.uint8)})
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 2 and "enrolled with model 'spectral-knn-general-00000000'" in r.stderr
    np.savez(bank, **{**arrays, "mel_bank": arrays["mel_bank"] + 1.0})
    r = harken("check-config", cfg, cwd=folder)
    assert r.returncode == 2 and "do not match the bank's sha256" in r.stderr
    bank.write_bytes(before[: len(before) // 2])
    r = harken("run", "--config", cfg, cwd=folder)
    assert r.returncode == 2 and "not a readable enrolled bank" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bundle_with_its_own_bank_is_not_enrolled(ae_bundle, small_fan, tmp_path):
    wav = tmp_path / "a.wav"
    x, rate = read_wav(next((small_fan / "fan" / "train").glob("*.wav")))
    write_wav(wav, x, rate)
    cfg = config(tmp_path, ae_bundle, wav)
    r = harken("enroll", "--config", cfg, "--files", "a.wav", cwd=tmp_path)
    assert r.returncode == 2 and "'harken enroll' needs a general bundle" in r.stderr


def test_a_file_given_twice_is_enrolled_once_and_low_rate_files_are_each_named(general_bundle,
                                                                             site):
    """A file listed twice put each interval in the bank twice (each scored 0 held out and
    normal audio then scored 1e8): the copy is left out, counted. Files recorded at 8 kHz
    for a 16-kHz model gave one warning naming only the first: each is named now, and the
    enrollment is refused (the bank would lack the upper band the model reads)."""
    folder, names, _ = site
    cfg = config(folder, general_bundle)
    files = [f"recordings/{n}" for n in names[:8]]
    (folder / "recordings" / "copy.wav").write_bytes((folder / files[0]).read_bytes())
    r = harken("enroll", "--config", cfg, "--files", *files, files[1], "recordings/copy.wav",
               "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["intervals"], out["duplicate_files"], out["duplicate_intervals"]) == (8, 2, 0)
    assert "the same audio as a file given before it; left out" in r.stderr
    assert out["exceeded_intervals"] >= 0 and "expected_exceeded" in out
    bank = folder / "state" / "enrolled-fan.npz"
    before = bank.read_bytes()

    low = []
    for n in names[:3]:
        x, _ = read_wav(folder / "recordings" / n, 8000)
        write_wav(folder / f"low-{n}", x, 8000)
        low.append(f"low-{n}")
    r = harken("enroll", "--config", cfg, "--files", *low, *files, "--json", cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert all(f"{name} (8000 Hz)" in r.stderr for name in low)
    assert "--files: recorded below the model's 16000 Hz" in r.stderr
    assert bank.read_bytes() == before


def test_an_enrollment_larger_than_a_bank_holds_is_refused_before_listening(general_bundle,
                                                                          site):
    """--minutes 10080 (a week) at 10-s intervals is 60 480 intervals: distance matrices of
    29 GB. Refused before any audio is read."""
    folder, names, test = site
    cfg = config(folder, general_bundle, test[0].path)
    r = harken("enroll", "--config", cfg, "--minutes", "10080", "--json", cwd=folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "enrollment: 60480 new interval(s) of 10 s and 0 in the bank are more than a bank " \
           "holds (4000" in r.stderr
    assert not (folder / "state" / "enrolled-fan.npz").exists()
