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

    # --append: a new operating condition joins the bank, nothing is forgotten
    r = harken("enroll", "--config", cfg, "--files", f"recordings/{names[0]}",
               f"recordings/{names[1]}", "--append", "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    out2 = json.loads(r.stdout)
    assert (out2["intervals"], out2["new_intervals"], out2["audio_s"]) == (14, 2, 140.0)
    assert len(out2["sessions"]) == 2
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
    model = SpectralKnn()
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
        (["--files", "silent.wav"], "only 0 usable interval(s) of 10 s (3 silent, clipped or "
                                    "invalid)"),
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
    other = {**arrays, "manifest": np.frombuffer(json.dumps(
        {**manifest, "model": "spectral-knn-general-00000000"}).encode(), np.uint8)}
    np.savez(bank, **other)
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
