import json
from pathlib import Path

import pytest

from harken.export.cli import main as export_main
from harken.training.cli import main as train_main


def test_describe_a_run(tiny_corpus, tmp_path, capsys):
    runs = tmp_path / "runs"
    train_main(["train", "--method", "baseline-knn", "--data", str(tiny_corpus),
                "--machines", "pump", "--out", str(runs), "--quiet"])
    capsys.readouterr()
    assert export_main(["describe", str(runs)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["machine"] == "pump" and d["feature_preset"] == "dcase2020-ae" and d["threshold"] > 0
    assert export_main(["describe", str(tmp_path / "nothing")]) == 2
    assert "no run.json" in capsys.readouterr().err


RELEASED = Path(__file__).parents[1] / "data" / "records" / "runs-61a0e3e"


def test_a_run_of_a_method_that_is_not_exportable_is_refused_in_one_line(tmp_path, capsys):
    """baseline-knn has no device graph (training/method.py's Exportable): refused naming
    the method and listing the ones that export, before anything is written."""
    out = tmp_path / "bundle"
    assert export_main(["export", str(RELEASED / "baseline-knn"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "method 'baseline-knn' has no device graph; exportable methods: ['ae'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_describe_reads_a_run_written_by_the_last_release(capsys):
    assert export_main(["describe", str(RELEASED / "fusion")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "fusion" and d["sections"] == [0, 1] and d["threshold"] > 0


@pytest.mark.parametrize("argv, at", [
    (["runs/fan", "--out", "b"], 0),
    (["--log-level", "warning", "runs/fan", "--out", "b"], 2),
    (["--log-level=warning", "--debug", "runs/fan"], 2),
    (["--debug"], None),
])
def test_the_short_export_form_finds_the_run_past_the_top_level_options(argv, at):
    """``harken-export [--log-level L] RUN ...`` means ``export RUN``: an option's value
    is not taken for the run."""
    from harken.export.cli import _first_positional
    assert _first_positional(argv) == at
