"""Bundles you can trust (issue 38): export builds beside its place and renames in (a failed
export leaves nothing half-written, ``--tar`` never overwrites without ``--force``), a
bundle names the run it came from (id, method, machine, weights digest) and verify refuses
another, and verify gives each artifact a verdict with stated tolerances and exits 1 on a
failure. Two AEs trained for one epoch on the tiny corpus, exported to float ONNX only
(no TensorFlow, no calibration: seconds)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harken.common.atomic import PAUSE_ENV
from harken.export.cli import main as export_main
from harken.training.data.corpus import scan
from harken.training.methods import make_method
from harken.training.runs import read_run, weights_digest
from tests.helpers import digests, leftovers

MACHINE = "valve"
FAST = ["--formats", "onnx", "--precision", "fp32"]
# The tiny corpus has 4 anomalies and 4 normals a section: one swapped pair moves an AUC by
# 0.125. Float ONNX scores as torch does (to float rounding), so these pass it with room;
# a model file of another run fails them.
TINY_TOLERANCES = ["--official-tolerance", "0.02", "--min-spearman", "0.98"]


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ae")
    clips = scan(tiny_corpus, [MACHINE], "train")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        out[name] = root / name / MACHINE
        make_method("ae", ["epochs=1", f"seed={seed}"]).train(clips, out[name], progress=False)
    return out


def exit_code(argv: list[str]) -> int:
    """harken-export's exit status, whether a usage error returns 2 or exits with it."""
    try:
        return export_main(argv)
    except SystemExit as exc:
        return int(exc.code)


def export(run, out, *more) -> int:
    return export_main([str(run), "--out", str(out), *FAST, *more])


def verify(bundle, data, *more) -> int:
    return export_main(["verify", str(bundle), "--data", str(data), *TINY_TOLERANCES, *more])


@pytest.fixture(scope="module")
def bundles(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    for name, run in runs.items():
        assert export(run, root / name) == 0
    return {name: root / name for name in runs}


def test_a_bundle_records_the_run_it_came_from(bundles, runs):
    prov = json.loads((bundles["a"] / "manifest.json").read_text())["provenance"]
    info = read_run(runs["a"])
    assert prov["run"] == str(runs["a"]) and Path(prov["run"]).is_absolute()
    assert (prov["run_id"], prov["method"], prov["machine"]) == (info.run_id, "ae", MACHINE)
    assert prov["weights_sha256"] == weights_digest(runs["a"])


def test_verify_passes_a_bundle_and_says_so(bundles, tiny_corpus, capsys):
    assert verify(bundles["a"], tiny_corpus) == 0
    out = capsys.readouterr().out
    assert "verdict" in out.splitlines()[0] and " PASS" in out.splitlines()[2]
    assert out.strip().splitlines()[-1].startswith("verdict: PASS (1 artifacts; official "
                                                   "within 0.02 of torch fp32, Spearman >= 0.98)")


@pytest.fixture(scope="module")
def knn_bundles(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """spectral-knn bundles of two runs (valve, gearbox): its model is its reference banks
    (arrays/; the graph, window moments, has no weights)."""
    root = tmp_path_factory.mktemp("knn")
    out = {}
    for machine in (MACHINE, "gearbox"):
        # fixed weights: both bundles carry the same branches' arrays (score=auto may
        # choose other branches per machine, and then the swap is refused at load)
        make_method("spectral-knn", ["score=fused"]).train(
            scan(tiny_corpus, [machine], "train"), root / "runs" / machine, progress=False)
        assert export(root / "runs" / machine, root / machine) == 0
        out[machine] = root / machine
    return out


def test_a_model_file_swapped_for_another_runs_fails_verify_with_exit_1(knn_bundles, tiny_corpus,
                                                                         tmp_path, capsys):
    """Was: AUC 0.50 against 0.75 for the others, no verdict, exit 0. (Two AEs trained for
    seconds on the tiny corpus score alike, Spearman 1.0: their scores are the clips'
    loudness; spectral-knn's banks of another run are a model that scores otherwise.)"""
    swapped = shutil.copytree(knn_bundles[MACHINE], tmp_path / "swapped")
    shutil.rmtree(swapped / "arrays")
    shutil.copytree(knn_bundles["gearbox"] / "arrays", swapped / "arrays")
    manifest = json.loads((swapped / "manifest.json").read_text())
    other = json.loads((knn_bundles["gearbox"] / "manifest.json").read_text())
    manifest["arrays"] = other["arrays"]                       # the entries copied too
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    assert verify(knn_bundles[MACHINE], tiny_corpus) == 0      # the bundle as exported
    capsys.readouterr()
    assert verify(swapped, tiny_corpus, "--json") == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["verdict"] for r in rows] == ["-", "FAIL"], rows
    assert rows[1]["failed"] and rows[1]["spearman"] < 0.98
    assert captured.err.strip().startswith("verdict: FAIL (official within 0.02 of torch "
                                           "fp32, Spearman >= 0.98): onnx-fp32: Spearman")


def test_verify_refuses_a_run_that_is_not_the_bundles(bundles, runs, tiny_corpus, capsys):
    assert verify(bundles["a"], tiny_corpus, "--run", str(runs["b"])) == 2
    err = capsys.readouterr().err.strip()
    assert f"{runs['b']}: not the run bundle {bundles['a']} was exported from (run_id" in err
    assert "\n" not in err


def test_verify_refuses_a_run_whose_files_changed_since_export(bundles, runs, tiny_corpus,
                                                               tmp_path, capsys):
    run = shutil.copytree(runs["a"], tmp_path / "run")
    shutil.copy(runs["b"] / "model.pt", run / "model.pt")    # another run's weights
    assert verify(bundles["a"], tiny_corpus, "--run", str(run)) == 2
    assert "its files differ from those bundle" in capsys.readouterr().err


def test_a_relative_provenance_run_is_read_against_the_bundle_folder(bundles, runs, tiny_corpus,
                                                                     tmp_path, monkeypatch):
    """Was: resolved against the current folder, so verify compared with another run."""
    home = tmp_path / "home"
    bundle = shutil.copytree(bundles["a"], home / "bundle")
    shutil.copytree(runs["a"], home / "run")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["provenance"]["run"] = "../run"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs["b"], elsewhere / "run")            # '../run' from a folder in here
    (elsewhere / "cwd").mkdir()
    monkeypatch.chdir(elsewhere / "cwd")
    assert verify(bundle, tiny_corpus) == 0


def test_verify_refuses_another_corpus_unless_on_purpose(bundles, tiny_corpus, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_corpus / MACHINE, other / MACHINE)
    clip = sorted((other / MACHINE / "train").glob("*.wav"))[0]
    clip.write_bytes(clip.read_bytes()[:-100] + bytes(100))
    assert verify(bundles["a"], other) == 2
    assert "not the corpus" in capsys.readouterr().err
    assert verify(bundles["a"], other, "--other-corpus") == 0


def test_export_calibrates_only_on_the_runs_corpus_unless_on_purpose(runs, tiny_corpus,
                                                                     tmp_path, capsys):
    """Was: a run trained with a relative --data was calibrated on whichever corpus had that
    name in the current folder."""
    other = tmp_path / "other"
    shutil.copytree(tiny_corpus / MACHINE, other / MACHINE)
    clip = sorted((other / MACHINE / "train").glob("*.wav"))[0]
    clip.write_bytes(clip.read_bytes()[:-100] + bytes(100))
    int8 = ["--calib", str(other), "--precision", "int8", "--calib-windows", "200"]
    assert export(runs["a"], tmp_path / "b", *int8) == 2
    err = capsys.readouterr().err
    assert f"{other}: not the corpus {runs['a']} was trained on" in err
    # export's own options (was: 'with --data', verify's and evaluate's)
    assert "give the run's corpus with --calib, or --other-corpus" in err
    assert not (tmp_path / "b").exists()
    assert export(runs["a"], tmp_path / "b", *int8, "--other-corpus") == 0


@pytest.mark.parametrize("option, value", [("--min-spearman", "nan"), ("--min-spearman", "2"),
                                           ("--official-tolerance", "-0.1"),
                                           ("--official-tolerance", "x")])
def test_a_verify_tolerance_out_of_range_is_a_usage_error(option, value, tmp_path, capsys):
    assert exit_code(["verify", str(tmp_path), "--data", str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r}" in err
    assert "expected a number from 0 to 1" in err or "is not a number" in err


def test_verify_of_a_bundle_naming_no_run_asks_for_one(bundles, tiny_corpus, tmp_path, capsys):
    bundle = shutil.copytree(bundles["a"], tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["provenance"]["run"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert verify(bundle, tiny_corpus) == 2
    assert "provenance names no run" in capsys.readouterr().err


# -- atomic export -----------------------------------------------------------------------------

def test_tar_never_overwrites_an_existing_tarball_without_force(runs, tmp_path, capsys):
    """Was: --tar silently overwrote an existing tarball."""
    tar = tmp_path / "b.tar.gz"
    tar.write_bytes(b"the user's own tarball")
    assert export(runs["a"], tmp_path / "b", "--tar") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"harken-export: error: {tar}: already exists (a file); give a new tarball "
                   f"or --force to replace it")
    assert tar.read_bytes() == b"the user's own tarball" and not (tmp_path / "b").exists()
    assert export(runs["a"], tmp_path / "b", "--tar", "--force") == 0
    import tarfile
    assert tarfile.is_tarfile(tar) and leftovers(tmp_path) == []


def test_a_failed_export_leaves_no_half_written_bundle(runs, tmp_path, monkeypatch, capsys):
    """Was: the model files written, the manifest not: a half-written bundle folder."""
    import harken.export.bundle as bundle_module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bundle_module, "scoring_arrays", broken)   # after the model files
    assert export(runs["a"], tmp_path / "b") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_a_failed_export_over_a_bundle_with_force_leaves_the_old_one(runs, bundles, tmp_path,
                                                                     monkeypatch):
    old = shutil.copytree(bundles["b"], tmp_path / "b")
    before = digests(old)
    import harken.export.bundle as bundle_module
    monkeypatch.setattr(bundle_module, "scoring_arrays", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):                 # a bug keeps its traceback
        export(runs["a"], old, "--force")
    assert digests(old) == before and leftovers(tmp_path) == []


def test_an_existing_bundle_is_refused_and_replaced_whole_with_force(runs, bundles, tmp_path,
                                                                     capsys):
    old = shutil.copytree(bundles["b"], tmp_path / "b")
    (old / "stray.txt").write_text("from before")
    assert export(runs["a"], old) == 2
    assert "already exists (a folder)" in capsys.readouterr().err
    assert export(runs["a"], old, "--force") == 0
    assert not (old / "stray.txt").exists()
    prov = json.loads((old / "manifest.json").read_text())["provenance"]
    assert prov["run_id"] == read_run(runs["a"]).run_id


def test_export_onto_its_own_run_is_refused_even_with_force(runs, capsys):
    before = digests(runs["a"])
    assert export(runs["a"], runs["a"], "--force") == 2
    assert "would replace" in capsys.readouterr().err
    assert digests(runs["a"]) == before


def test_export_killed_mid_swap_leaves_the_old_bundle_which_the_next_start_restores(
        runs, bundles, tiny_corpus, tmp_path):
    out = shutil.copytree(bundles["b"], tmp_path / "bundle")
    before = digests(out)
    flag = tmp_path / ".bundle.paused-aside"
    proc = subprocess.Popen([sys.executable, "-m", "harken.export.cli", str(runs["a"]),
                             "--out", str(out), *FAST, "--force"],
                            env={**os.environ, PAUSE_ENV: "aside"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and (tmp_path / ".bundle.old").is_dir()   # old one whole, aside
    assert export(runs["a"], out) == 2                  # the next start: restored, refused
    assert digests(out) == before and leftovers(tmp_path) == []


# -- the manifest's statements against the run (second hostile round of issue 38) ------------

def edited(bundle: Path, where: Path, **model_or_threshold) -> Path:
    """A copy of ``bundle`` whose manifest says something else: ``machine=``, ``sections=``
    (model block) or ``threshold=`` (threshold.value)."""
    out = shutil.copytree(bundle, where)
    manifest = json.loads((out / "manifest.json").read_text())
    for key, value in model_or_threshold.items():
        if key == "threshold":
            manifest["threshold"]["value"] = value
        else:
            manifest["model"][key] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("change, named", [
    ({"machine": "gearbox"}, "model.machine 'gearbox' differs from the run's 'valve'"),
    ({"sections": [0]}, "model.sections [0] differ from the run's"),
    ({"threshold": 1e9}, "threshold.value 1000000000.0 differs from the run's"),
    ({"threshold": -1.0}, "threshold.value -1.0 differs from the run's"),
])
def test_a_manifest_that_disagrees_with_its_run_is_refused_in_one_line(
        knn_bundles, tiny_corpus, tmp_path, capsys, change, named):
    """Was: model.machine changed -> verify scored the other machine's clips, PASS; a
    threshold of 1e9 or -1 -> PASS, exit 0; model.sections [0] -> KeyError: 1, exit 1."""
    bundle = edited(knn_bundles[MACHINE], tmp_path / "b", **change)
    assert verify(bundle, tiny_corpus) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and f"{bundle}/manifest.json" in err and "\n" not in err


def test_verify_repairs_a_bundle_swap_a_kill_interrupted(knn_bundles, tiny_corpus, tmp_path,
                                                         capsys):
    """Was: after `export --force` killed between the renames, `verify b1` said 'not a
    bundle (manifest.json missing)' with the old bundle whole at .b1.old. The agent's
    bundle loading puts it back the same way."""
    from harken.agent.model.bundle import open_bundle
    old = shutil.copytree(knn_bundles[MACHINE], tmp_path / ".b1.old")
    before = digests(old)
    assert verify(tmp_path / "b1", tiny_corpus) == 0
    assert digests(tmp_path / "b1") == before and leftovers(tmp_path) == []
    shutil.move(tmp_path / "b1", tmp_path / ".b2.old")
    assert open_bundle(tmp_path / "b2").machine == MACHINE
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--threads", "-1"),
                                           ("--threads", "100000"), ("--max-clips", "-5"),
                                           ("--threads", "two")])
def test_verify_threads_and_max_clips_out_of_range_are_usage_errors(option, value, tmp_path,
                                                                    capsys):
    """Was: --threads 0 blamed the bundle, 100000 started ~19,600 threads; --max-clips -5
    silently dropped 5 clips and passed."""
    assert exit_code(["verify", str(tmp_path), "--data", str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r}" in err and "TFLite" not in err


def test_verify_max_clips_0_means_all_clips(knn_bundles, tiny_corpus, capsys):
    """0, the default, is documented as every clip: the same rows as leaving it out."""
    assert verify(knn_bundles[MACHINE], tiny_corpus, "--max-clips", "0", "--json") == 0
    zero = json.loads(capsys.readouterr().out)
    assert verify(knn_bundles[MACHINE], tiny_corpus, "--json") == 0
    every = json.loads(capsys.readouterr().out)
    assert [r["official"] for r in zero] == [r["official"] for r in every]


def test_tar_force_killed_between_tarball_and_folder_is_refused_by_verify(
        knn_bundles, tiny_corpus, tmp_path, capsys):
    """Was: `--tar --force` killed after the folder was placed left b1/ new and b1.tar.gz
    old, and verify passed the old tarball. Now the tarball is placed first, the folder
    second; a kill between them leaves a pair that verify refuses in one line, and the
    next `--tar --force` makes them one bundle again."""
    runs = knn_bundles[MACHINE].parent / "runs"
    out = tmp_path / "b1"
    assert export(runs / "gearbox", out, "--tar") == 0
    flag = tmp_path / ".b1.tar.gz.paused-placed"
    proc = subprocess.Popen([sys.executable, "-m", "harken.export.cli", str(runs / MACHINE),
                             "--out", str(out), *FAST, "--tar", "--force"],
                            env={**os.environ, PAUSE_ENV: "placed"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the tarball was not placed first"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((out / "manifest.json").read_text())["model"]["machine"] == "gearbox"
    capsys.readouterr()
    for path in (out, tmp_path / "b1.tar.gz"):
        assert verify(path, tiny_corpus) == 2
        err = capsys.readouterr().err.strip()
        assert "hold different bundles" in err and "\n" not in err
    assert export(runs / MACHINE, out, "--tar", "--force") == 0
    assert verify(tmp_path / "b1.tar.gz", tiny_corpus) == 0
