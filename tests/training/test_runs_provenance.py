"""Runs and evaluations you can trust (issue 38): training and evaluation build into a folder
beside their place and rename it in (an interrupted command leaves the earlier artifact
whole), run.json binds the corpus by a fingerprint of its training clips' contents, and an
evaluation names its runs and the result files it wrote, so that report refuses a folder
whose parts disagree. Tiny corpus, fast methods (baseline-knn, spectral-knn, ae 1 epoch)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harken.common.atomic import PAUSE_ENV, aside_path, repair_folder
from harken.export.cli import main as export_main
from harken.training.cli import main
from harken.training.runs import CONTENT, RUN_VERSION, find_runs, read_run
from tests.helpers import digests, leftovers

MACHINE = "valve"


@pytest.fixture(scope="module")
def corpus(tiny_corpus, tmp_path_factory) -> Path:
    """One machine type of the tiny corpus, copied: tests move and edit copies of it."""
    root = tmp_path_factory.mktemp("corpus") / "tiny"
    shutil.copytree(tiny_corpus / MACHINE, root / MACHINE)
    return root


def altered(corpus: Path, where: Path) -> Path:
    """A copy of ``corpus`` with one training clip's samples changed: the same names and
    sizes (what run.json fingerprinted before version 3), other contents."""
    shutil.copytree(corpus, where)
    clip = sorted((where / MACHINE / "train").glob("*.wav"))[0]
    data = bytearray(clip.read_bytes())
    data[-200:] = bytes(200)
    clip.write_bytes(bytes(data))
    return where


def train(corpus, out, method="baseline-knn", *more) -> int:
    return main(["train", "--method", method, "--data", str(corpus), "--machine", MACHINE,
                 "--out", str(out), "--quiet", *more])


@pytest.fixture(scope="module")
def knn_runs(corpus, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("knn") / "runs"
    assert train(corpus, runs) == 0
    return runs


# -- atomic training -----------------------------------------------------------------------

def test_ctrl_c_after_the_weights_are_written_leaves_the_old_run_whole(corpus, tmp_path,
                                                                        monkeypatch, capsys):
    """Was: the new model.pt beside the old run.json and threshold, which evaluate and
    export accepted (the exported threshold the old run's)."""
    runs = tmp_path / "runs"
    assert train(corpus, runs, "ae", "--set", "epochs=1") == 0
    before = digests(runs / MACHINE)
    import harken.training.torch_method as torch_method

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt         # Ctrl-C between torch.save and run.json
    monkeypatch.setattr(torch_method, "write_run", interrupted)
    assert train(corpus, runs, "ae", "--set", "epochs=1", "--seed", "3", "--force") == 130
    assert "interrupted" in capsys.readouterr().err
    assert digests(runs / MACHINE) == before and leftovers(runs) == []


def test_spectral_knn_into_a_folder_holding_an_ae_run_is_refused_or_replaces_it_whole(
        corpus, tmp_path, capsys):
    """Was: run.json replaced silently and the ae's model.pt left beside it."""
    runs = tmp_path / "runs"
    assert train(corpus, runs, "ae", "--set", "epochs=1") == 0
    before = digests(runs / MACHINE)
    capsys.readouterr()
    assert train(corpus, runs, "spectral-knn") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"harken-train: error: {runs / MACHINE}: already exists (a folder); give a "
                   f"new --out folder or --force to replace it")
    assert digests(runs / MACHINE) == before
    assert train(corpus, runs, "spectral-knn", "--force") == 0
    assert read_run(runs / MACHINE).method == "spectral-knn"
    assert not (runs / MACHINE / "model.pt").exists() and leftovers(runs) == []


# -- atomic evaluation and report ------------------------------------------------------------

def evaluate(run, out, *more) -> int:
    return main(["evaluate", str(run), "--out", str(out), "--quiet", "--no-plots",
                 "--no-baseline", *more])


def report(tmp_path, *evals) -> int:
    return main(["report", *map(str, evals), "--out", str(tmp_path / "page.md")])


def test_evaluate_interrupted_over_an_earlier_one_leaves_it_whole_for_report(
        corpus, knn_runs, tmp_path, monkeypatch, capsys):
    """Was: the old metrics.json beside the new score CSVs, and report mixed them."""
    other = tmp_path / "spectral"
    assert train(corpus, other, "spectral-knn") == 0
    out = tmp_path / "eval"
    assert evaluate(knn_runs, out) == 0
    before = digests(out)
    import harken.training.evaluate as ev

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt          # Ctrl-C with the new CSVs written, not metrics.json
    monkeypatch.setattr(ev, "write_tables", interrupted)
    assert evaluate(other, out, "--force") == 130
    assert digests(out) == before and leftovers(tmp_path) == []
    assert report(tmp_path, out) == 0
    assert read_run(knn_runs / MACHINE).run_id in (tmp_path / "page.md").read_text()


def test_report_refuses_an_evaluation_folder_whose_parts_disagree(corpus, knn_runs, tmp_path,
                                                                   capsys):
    other = tmp_path / "spectral"
    assert train(corpus, other, "spectral-knn") == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert evaluate(knn_runs, a) == 0 and evaluate(other, b) == 0
    name = f"anomaly_score_{MACHINE}_section_00_test.csv"
    shutil.copy(b / name, a / name)               # a result file of another evaluation
    capsys.readouterr()
    assert report(tmp_path, a) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"harken-train: error: {a / name}: differs from the one this "
                          f"evaluation wrote") and "\n" not in err
    (a / name).unlink()
    assert report(tmp_path, a) == 2
    assert "is missing" in capsys.readouterr().err


def test_evaluate_onto_the_runs_it_reads_is_refused_even_with_force(knn_runs, capsys):
    before = digests(knn_runs)
    assert evaluate(knn_runs, knn_runs, "--force") == 2
    assert "would replace" in capsys.readouterr().err
    assert digests(knn_runs) == before


# -- provenance --------------------------------------------------------------------------------

def test_run_json_records_the_corpus_by_absolute_path_and_content(knn_runs, corpus):
    info = read_run(knn_runs / MACHINE)
    assert info.version == RUN_VERSION and info.corpus.fingerprint_kind == CONTENT
    assert Path(info.corpus.root).is_absolute() and Path(info.corpus.root) == corpus
    assert info.run_id.startswith(f"baseline-knn-{MACHINE}-")


def test_a_relative_corpus_from_another_folder_with_its_own_copy_is_refused(
        corpus, tmp_path, monkeypatch, capsys):
    """Was: trained with a relative --data tiny and evaluated from another folder that has
    its own tiny/: evaluated on that other corpus without a word (0.4876, truth 0.4402)."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    shutil.copytree(corpus, here / "tiny")
    altered(corpus, elsewhere / "tiny")
    monkeypatch.chdir(here)
    assert train(Path("tiny"), Path("runs")) == 0
    monkeypatch.chdir(elsewhere)
    run = here / "runs"
    # the run's own corpus, by its absolute path
    assert evaluate(run, tmp_path / "e1") == 0
    m = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert m["runs"][MACHINE]["corpus"]["path"] == str(here / "tiny")
    assert m["runs"][MACHINE]["run_id"] == read_run(run / MACHINE).run_id
    # --data naming this folder's tiny/: same names and sizes, other clips: refused
    capsys.readouterr()
    assert evaluate(run, tmp_path / "e2", "--data", "tiny") == 2
    err = capsys.readouterr().err.strip()
    assert f"{elsewhere / 'tiny'}: not the corpus {run / MACHINE} was trained on" in err
    assert "--other-corpus" in err and "\n" not in err and not (tmp_path / "e2").exists()
    # on purpose: evaluated, and recorded as such
    assert evaluate(run, tmp_path / "e3", "--data", "tiny", "--other-corpus") == 0
    corpus_used = json.loads((tmp_path / "e3" / "metrics.json").read_text())["runs"][MACHINE][
        "corpus"]
    assert corpus_used["matches_run"] is False and corpus_used["path"] == str(elsewhere / "tiny")
    assert report(tmp_path, tmp_path / "e3") == 0
    assert "on another corpus, on purpose" in (tmp_path / "page.md").read_text()


def test_a_corpus_moved_to_another_place_is_found_by_data_and_accepted(corpus, tmp_path,
                                                                       capsys):
    original = shutil.copytree(corpus, tmp_path / "original")
    assert train(original, tmp_path / "runs") == 0
    moved = original.rename(tmp_path / "moved")
    assert evaluate(tmp_path / "runs", tmp_path / "e1") == 2          # the hint is gone
    assert "give the corpus" in capsys.readouterr().err
    assert evaluate(tmp_path / "runs", tmp_path / "e2", "--data", str(moved)) == 0
    used = json.loads((tmp_path / "e2" / "metrics.json").read_text())["runs"][MACHINE]
    assert used["corpus"]["matches_run"] is True and used["corpus"]["path"] == str(moved)


# -- real kills (SIGKILL mid-command, at a commit step the command is paused at) -------------

def killed_at(step: str, argv: list[str], target: Path, timeout: float = 120) -> None:
    """Run ``harken-train argv`` in a subprocess, wait for it to reach commit step ``step``
    (the file harken/common/atomic.py makes there appearing), SIGKILL it."""
    flag = target.with_name(f".{target.name}.paused-{step}")
    proc = subprocess.Popen([sys.executable, "-m", "harken.training.cli", *argv],
                            env={**os.environ, PAUSE_ENV: step}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"never reached {step}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_train_killed_mid_swap_leaves_the_old_run_which_the_next_reader_gets_back(
        corpus, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(corpus, runs) == 0
    before = digests(runs / MACHINE)
    killed_at("aside", ["train", "--method", "spectral-knn", "--data", str(corpus),
                        "--machine", MACHINE, "--out", str(runs), "--quiet", "--force"],
              runs / MACHINE)
    # killed between the two renames: the old run whole beside its place
    assert not (runs / MACHINE).exists() and aside_path(runs / MACHINE).is_dir()
    # the next command that reads it puts it back, then evaluates the old run
    assert evaluate(runs, tmp_path / "e") == 0
    assert digests(runs / MACHINE) == before and leftovers(runs) == []
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["methods"] == {
        MACHINE: "baseline-knn"}


def test_evaluate_killed_before_its_rename_leaves_the_earlier_evaluation(corpus, knn_runs,
                                                                         tmp_path):
    out = tmp_path / "eval"
    assert evaluate(knn_runs, out) == 0
    before = digests(out)
    spectral = tmp_path / "spectral"
    assert train(corpus, spectral, "spectral-knn") == 0
    killed_at("built", ["evaluate", str(spectral), "--out", str(out), "--quiet", "--no-plots",
                        "--no-baseline", "--force"], out)
    assert digests(out) == before
    assert report(tmp_path, out) == 0                  # the earlier one, whole
    assert evaluate(spectral, out, "--force") == 0     # the next start clears the leftovers
    assert leftovers(tmp_path) == []


def test_train_out_onto_its_own_corpus_is_refused_even_with_force(corpus, tmp_path, capsys):
    data = shutil.copytree(corpus, tmp_path / "corpus")
    before = digests(data)
    assert train(data, data, "baseline-knn", "--force") == 2      # --out = the corpus
    assert f"{data / MACHINE}: the --out folder would replace" in capsys.readouterr().err
    assert digests(data) == before


def test_a_run_json_naming_an_unknown_method_is_one_line_and_writes_nothing(knn_runs, tmp_path,
                                                                            capsys):
    run = shutil.copytree(knn_runs / MACHINE, tmp_path / "runs" / MACHINE)
    data = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**data, "method": "vibes"}))
    assert evaluate(tmp_path / "runs", tmp_path / "e") == 2
    err = capsys.readouterr().err.strip()
    assert "vibes" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "e").exists() and leftovers(tmp_path) == []


# -- one listing of runs (second hostile round: a half-built run, two runs of a machine) ----
def test_a_half_built_run_a_kill_left_is_removed_not_evaluated(corpus, tmp_path, capsys):
    """Was: rk/.valve.new-PID read as a second valve run: evaluate scored it twice, metrics.json
    named one method, describe listed the leftover."""
    runs = tmp_path / "runs"
    assert train(corpus, runs, "spectral-knn") == 0
    killed_at("built", ["train", "--method", "baseline-knn", "--data", str(corpus),
                        "--machine", MACHINE, "--out", str(runs), "--quiet", "--force"],
              runs / MACHINE)
    assert [p for p in leftovers(runs) if ".new-" in p]          # the half-built run is there
    capsys.readouterr()
    assert export_main(["describe", str(runs)]) == 0
    described = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["run"] for d in described] == [str(runs / MACHINE)]
    assert leftovers(runs) == []                                  # removed by the listing
    assert evaluate(runs, tmp_path / "e") == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["methods"][MACHINE].startswith("spectral-knn")
    assert len(metrics["sections"]) == len(read_run(runs / MACHINE).sections)


def test_a_leftover_of_a_live_builder_is_skipped_not_removed(knn_runs, tmp_path):
    """While its builder still runs (it holds the target's lock), the half-built folder is
    left alone; the listing skips it all the same (a hidden folder is never a run)."""
    import fcntl
    import os
    runs = shutil.copytree(knn_runs, tmp_path / "runs")
    half = runs / f".{MACHINE}.new-{os.getpid()}"
    shutil.copytree(runs / MACHINE, half)
    fd = os.open(runs / f".{MACHINE}.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert find_runs(runs) == [runs / MACHINE]
        assert half.is_dir()
    finally:
        os.close(fd)
    assert repair_folder(runs) and not half.exists()


def test_two_runs_of_one_machine_type_are_refused_in_one_line(knn_runs, tmp_path, capsys):
    """Was: `cp -r runs/fan runs/fan-old`, and evaluate put both runs' sections in one table
    while metrics.json named only one."""
    runs = shutil.copytree(knn_runs, tmp_path / "runs")
    shutil.copytree(runs / MACHINE, runs / f"{MACHINE}-old")
    assert evaluate(runs, tmp_path / "e") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(runs / MACHINE) in err and str(runs / f"{MACHINE}-old") in err
    assert f"two runs of machine type '{MACHINE}'" in err
    assert not (tmp_path / "e").exists() and leftovers(tmp_path) == []


# -- the corpus check: old relative paths, test clips, skipped clips (second hostile round) --

RECORDS = Path(__file__).parents[1] / "data" / "records" / "runs-61a0e3e"


def test_an_old_run_with_a_relative_corpus_path_asks_for_data(tmp_path, monkeypatch, capsys):
    """Was: a version-1 run whose corpus.root is `tiny`, evaluated from another folder with
    its own tiny/, scored that other corpus (names-and-sizes fingerprint: copies pass)."""
    run = shutil.copytree(RECORDS / "baseline-knn", tmp_path / "old" / "fan")
    data = json.loads((run / "run.json").read_text())
    data["corpus"]["root"] = "tiny"
    (run / "run.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny" / "fan").mkdir(parents=True)
    assert evaluate(run, tmp_path / "e") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{run}/run.json: an old run with a relative corpus path ('tiny'); "
                        f"give its corpus with --data") and "\n" not in err


def test_changed_test_clips_are_refused_unless_on_purpose(corpus, knn_runs, tmp_path, capsys):
    """Was: the fingerprint covered train/ only, so a corpus whose test clips had changed
    (same names and sizes) was taken as the run's."""
    info = read_run(knn_runs / MACHINE)
    assert info.corpus.test_fingerprint                     # recorded at training
    other = shutil.copytree(corpus, tmp_path / "tiny")
    clip = sorted((other / MACHINE / "test").glob("*.wav"))[0]
    data = bytearray(clip.read_bytes())
    data[-200:] = bytes(200)
    clip.write_bytes(bytes(data))
    assert evaluate(knn_runs, tmp_path / "e", "--data", str(other)) == 2
    err = capsys.readouterr().err.strip()
    assert "test clips are not the ones" in err and "\n" not in err
    assert evaluate(knn_runs, tmp_path / "e", "--data", str(other), "--other-corpus") == 0
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())["runs"][MACHINE]
    assert record["corpus"]["matches_run"] is False
    assert record["corpus"]["test_matches_run"] is False


def test_a_run_trained_skipping_bad_clips_is_evaluated_on_its_own_corpus(corpus, tmp_path,
                                                                         capsys):
    """Was: check_corpus scanned without skipping, so the run's own corpus was refused
    ('... pass --skip-bad-clips', a flag evaluate does not have)."""
    bad = shutil.copytree(corpus, tmp_path / "tiny")
    first = sorted((bad / MACHINE / "train").glob("*.wav"))[0]
    (first.parent / first.name.replace("_0000", "_9999")).write_bytes(b"RIFF, not a WAV")
    runs = tmp_path / "runs"
    assert train(bad, runs) == 2                            # refused without the flag
    assert train(bad, runs, "baseline-knn", "--skip-bad-clips") == 0
    assert read_run(runs / MACHINE).corpus.scan["skipped"]
    assert evaluate(runs, tmp_path / "e") == 0
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())["runs"][MACHINE]
    assert record["corpus"]["matches_run"] is True and record["corpus"]["skip_bad_clips"]
    # the baseline trained beside another method's run reads the same clips (was: refused
    # the damaged one)
    assert train(bad, tmp_path / "sk", "spectral-knn", "--skip-bad-clips") == 0
    assert main(["evaluate", str(tmp_path / "sk"), "--out", str(tmp_path / "b"), "--quiet",
                 "--no-plots"]) == 0, capsys.readouterr().err
    beside = json.loads((tmp_path / "b" / "baseline-knn" / "metrics.json").read_text())
    assert beside["runs"][MACHINE]["corpus"]["skip_bad_clips"]


def test_a_folder_mixing_trainings_and_methods_says_so(tiny_corpus, tmp_path, capsys):
    """Was: `train --force` over two machines killed after the first left valve from one
    method and gearbox from another; evaluate gave one official score without comment."""
    runs = tmp_path / "runs"
    base = ["train", "--data", str(tiny_corpus), "--out", str(runs), "--quiet"]
    assert main([*base, "--method", "spectral-knn", "--machines", f"{MACHINE},gearbox"]) == 0
    ids = {read_run(runs / m).training_id for m in (MACHINE, "gearbox")}
    assert len(ids) == 1 and None not in ids                  # one command, one id
    assert main([*base, "--method", "baseline-knn", "--machines", "gearbox", "--force"]) == 0
    capsys.readouterr()
    assert evaluate(runs, tmp_path / "e") == 0
    out = capsys.readouterr().out
    assert (f"NOTE: these runs are not one training (mixed methods: gearbox baseline-knn, "
            f"{MACHINE} spectral-knn; runs from 2 trainings") in out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["mixed"].startswith("mixed methods:")
