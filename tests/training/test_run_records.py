"""run.json as one typed, versioned record (training/runs.py's RunInfo): files written by an
earlier release load (migrated), and a malformed one is refused in one line naming it."""

import json
import shutil
from pathlib import Path

import pytest

from harken.training.baselines import KnnBaseline
from harken.training.runs import RUN_VERSION, RunError, RunInfo, find_runs, read_run, save_run

# written by release 61a0e3e (run.json "schema": 1), tiny synthetic corpus
RELEASE_61A0E3E = Path(__file__).parents[1] / "data" / "records" / "runs-61a0e3e"


def released_runs() -> list[Path]:
    return sorted(p.parent for p in RELEASE_61A0E3E.rglob("run.json"))


def test_the_release_fixtures_are_version_1():
    for run in released_runs():
        data = json.loads((run / "run.json").read_text())
        assert data["schema"] == 1 and "version" not in data


@pytest.mark.parametrize("run", released_runs(), ids=lambda p: p.relative_to(RELEASE_61A0E3E).as_posix())
def test_runs_written_by_release_61a0e3e_load_migrated(run, tmp_path):
    data = json.loads((run / "run.json").read_text())
    info = read_run(run)
    assert isinstance(info, RunInfo) and info.version == RUN_VERSION
    assert (info.method, info.machine, info.sections) == (data["method"], data["machine"],
                                                          data["sections"])
    assert info.corpus.fingerprint == data["corpus"]["fingerprint"]
    assert info.normal_scores.threshold == data["normal_scores"]["threshold"]
    assert info.feature_spec == data["feature_spec"] and info.params == data["params"]
    # written again, it is the current version with the same contents
    copy = tmp_path / "again"
    copy.mkdir()
    save_run(copy, info)
    again = json.loads((copy / "run.json").read_text())
    assert again.pop("version") == RUN_VERSION
    assert again == {k: v for k, v in data.items() if k != "schema"}
    assert read_run(copy) == info


def test_method_fields_of_the_release_runs_are_typed():
    fusion = read_run(RELEASE_61A0E3E / "fusion")
    assert [(m.method, m.run) for m in fusion.members] == [("spectral-knn", "spectral-knn"),
                                                           ("ae", "ae")]
    assert set(fusion.standardise) == {"00", "01"}
    assert read_run(RELEASE_61A0E3E / "mobilenetv2").classes
    assert read_run(RELEASE_61A0E3E / "ae-mahalanobis").mahalanobis
    cli = read_run(RELEASE_61A0E3E / "ae-cli")
    assert cli.training.seconds > 0 and cli.training.epochs == 1
    assert cli.history["train_loss"]


def test_a_release_run_loads_as_a_method():
    model = KnnBaseline.load(RELEASE_61A0E3E / "baseline-knn")
    assert sorted(model.bank) == [0, 1] and model.mean.shape == model.std.shape


def test_find_runs_finds_the_release_runs():
    assert len(find_runs(RELEASE_61A0E3E / "fusion")) == 1


def _broken(tmp_path, edit) -> Path:
    run = tmp_path / "run"
    shutil.copytree(RELEASE_61A0E3E / "spectral-knn", run)
    data = json.loads((run / "run.json").read_text())
    edit(data)
    (run / "run.json").write_text(json.dumps(data))
    return run


@pytest.mark.parametrize("edit, says", [
    (lambda d: d.pop("machine"), "missing field 'machine'"),
    (lambda d: d["corpus"].pop("fingerprint"), "missing field 'corpus.fingerprint'"),
    (lambda d: d.update(sections="00"), "field 'sections'"),
    (lambda d: d["normal_scores"].update(threshold="high"), "field 'normal_scores.threshold'"),
    (lambda d: d["normal_scores"].update(threshold=float("nan")),
     "field 'normal_scores.threshold'"),
    (lambda d: d["normal_scores"].update(threshold=float("inf")),
     "field 'normal_scores.threshold'"),
    (lambda d: d.update(sections=[]), "field 'sections'"),
    (lambda d: d.update(schema=7), "run version 7 not supported"),
    (lambda d: d.update(version=RUN_VERSION + 1), f"run version {RUN_VERSION + 1} not supported"),
])
def test_a_malformed_run_is_refused_in_one_line_naming_the_file(tmp_path, edit, says):
    run = _broken(tmp_path, edit)
    with pytest.raises(RunError) as err:
        read_run(run)
    message = str(err.value)
    assert message.startswith(str(run / "run.json")) and says in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\u00ff".encode("latin-1")])
def test_a_run_json_that_is_not_an_object_is_refused(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunError, match=str(run / "run.json")):
        read_run(run)
