"""The general model (docs/general-model.md): the random family of machines, a few steps of
general training on the tiny corpus, its bundle enrolled with `harken enroll` and run with
`harken run`, and the refusals in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from harken.agent.sources.wavio import read_wav, write_wav
from harken.testkit.files import write_agent_config
from tests import prebuilt

pytestmark = pytest.mark.xdist_group("test_general")


def test_the_random_family_is_deterministic_and_its_classes_distinct():
    from harken.training.synth.randomised import (FAMILIES, MAX_MESH_HZ, random_machine,
                                                  random_machines, render)
    a, b = random_machines(30, seed=7), random_machines(30, seed=7)
    assert a == b and a != random_machines(30, seed=8)
    assert random_machine(7, 12) == a[12]           # instance i does not depend on the others
    assert {m.family for m in a} == set(FAMILIES)
    names = [m.class_name(p) for m in a for p in range(len(m.points))]
    assert len(set(names)) == len(names) == 90
    assert len({json.dumps([m.family, m.geometry, m.points], sort_keys=True) for m in a}) == 30
    gear = next(m for m in random_machines(200, 0) if m.family == "gearbox")
    top = max(p["vol"] for p in gear.points) * gear.geometry["rpm_per_volt"] / 60 * gear.geometry["z1"]
    assert top <= MAX_MESH_HZ + 1e-9
    m = a[3]
    x, y = render(m, 1, 0, 1.0, seed=7), render(m, 1, 0, 1.0, seed=7)
    assert x.dtype == np.float32 and len(x) == 16000 and np.array_equal(x, y)
    assert not np.array_equal(x, render(m, 1, 1, 1.0, seed=7))      # another clip
    assert not np.array_equal(x, render(m, 2, 0, 1.0, seed=7))      # another operating point
    assert not np.array_equal(x, render(m, 1, 0, 1.0, seed=7, outlier=True))


def test_bad_settings_are_one_line(tiny_corpus, tmp_path):
    for args, expected in (
            (["--random-machines", "-1"], "random_machines"),
            (["--random-machines", "0", "--set", "real_clips=0"], "nothing to train on"),
            # was: accepted, hours of rendering, then out of memory
            (["--random-machines", "100000"], "GiB of memory allows")):
        r = subprocess.run([sys.executable, "-m", "harken.training.cli", "general", "--data",
                            str(tiny_corpus), "--out", str(tmp_path / "run"), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr
        assert not (tmp_path / "run").exists()
    from harken.common.errors import UsageError
    from harken.training.general import GeneralMethod
    with pytest.raises(UsageError, match="harken-train general"):
        GeneralMethod().train([], tmp_path / "x")


@pytest.fixture(scope="module")
def general_bundle_learned(tiny_corpus, tmp_path_factory):
    """A general run of a few steps (3 random machines, 2 real clips per section) and its
    float bundle."""
    prebuilt.workstation_or_skip()
    from harken.export.bundle import ExportOptions
    from harken.export.general_bundle import write_embedding_general_bundle
    from harken.training.general import train_general_run
    root = tmp_path_factory.mktemp("general")
    info, _ = train_general_run(tiny_corpus, root / "run", [
        "random_machines=3", "clips_per_class=1", "outlier_clips=2", "real_clips=2", "epochs=1",
        "windows_per_epoch=16", "batch_size=8", "threads=1"], progress=False)
    assert info.general["random_classes"] == 9 and len(info.classes) > 9
    write_embedding_general_bundle(root / "run", root / "bundle", ExportOptions(precision="fp32"))
    return root


def test_general_bundle_enrolls_and_runs(general_bundle_learned, tiny_corpus, tmp_path):
    from harken.agent.model.bundle import open_bundle
    from harken.training.data.corpus import scan
    bundle = general_bundle_learned / "bundle"
    b = open_bundle(bundle)
    assert b.needs_enrollment and b.rule_name == "embedding-density"
    clips = [c for c in scan(tiny_corpus, ["fan"], "train") if c.section == 0]
    normal = np.concatenate([read_wav(c.path)[0] for c in clips])           # 20 s
    write_wav(tmp_path / "normal.wav", normal, 16000)
    test = [c for c in scan(tiny_corpus, ["fan"], "test") if c.section == 0][:3]
    write_wav(tmp_path / "test.wav", np.concatenate([read_wav(c.path)[0] for c in test]), 16000)
    cfg = write_agent_config(
        tmp_path / "agent.toml", agent={"node": "site", "machine": "fan",
                                        "state_dir": tmp_path / "state"},
        model={"bundle": bundle}, audio={"source": "file", "file": tmp_path / "test.wav"},
        decision={"interval_s": 2.5})

    def harken(*args):
        return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
    # the bank is refused before enrollment, in one line naming the command
    r = harken("run", "--config", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "run 'harken enroll --config CONFIG' first" in r.stderr
    r = harken("enroll", "--config", cfg, "--files", tmp_path / "normal.wav", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["intervals"] == 8 and out["threshold"] > 0
    with np.load(tmp_path / "state" / "enrolled-fan.npz", allow_pickle=False) as z:
        assert z["raw_embedding"].shape == (8, 256) and z["bank"].shape == (8, 256)
        assert z["bank_density"].shape == (8,)
    # the same audio again with --append: every interval is a copy, refused, bank kept
    r = harken("enroll", "--config", cfg, "--files", tmp_path / "normal.wav", "--append")
    assert r.returncode == 2 and "exact copies" in r.stderr and "Traceback" not in r.stderr
    r = harken("run", "--config", cfg)
    assert r.returncode == 0, r.stderr
    scores = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    scores = [s for s in scores if s.get("kind") == "score"]
    assert len(scores) == 2 and all(np.isfinite(s["score"]) for s in scores)


def test_export_refuses_a_run_of_another_method(general_bundle_learned, tmp_path):
    from harken.export.general_bundle import write_embedding_general_bundle
    from harken.export.graphs import ExportError
    run = general_bundle_learned / "run"
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((run / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**data, "method": "mobilenetv2-dual"}))
    with pytest.raises(ExportError, match="harken-train general"):
        write_embedding_general_bundle(other, tmp_path / "b")


def test_a_general_run_is_not_exported_or_refitted_as_a_per_machine_run(general_bundle_learned,
                                                                       tmp_path):
    run = general_bundle_learned / "run"
    for cmd in (["harken.export.cli", "export", str(run), "--out", str(tmp_path / "b"),
                 "--formats", "onnx", "--precision", "fp32"],
                ["harken.training.cli", "refit", str(run)]):
        r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2, r.stderr     # a progress line, the error
    assert not (tmp_path / "b").exists()
