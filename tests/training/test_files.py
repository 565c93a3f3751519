"""One reader for every file the workstation tools load (harken/common/readers.py): a
damaged run.json, bank, array, metrics.json, score CSV or corpus.json is one line naming
the file, in ``harken-train`` and ``harken-export`` alike (docs/reliability.md,
workstation: files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harken.common.readers import (FileFormatError, read_array, read_arrays, read_csv, read_json,
                                   require)
from harken.export import cli as export_cli
from harken.training import cli
from tests.training.test_corpus_scan import corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A micro corpus, a spectral-knn run, a one-epoch AE run and an evaluation."""
    root = tmp_path_factory.mktemp("files")
    corpus(root / "corpus", train=5, test=3)
    assert cli.main(["train", "--data", str(root / "corpus"), "--out", str(root / "knn"), "--quiet"]) == 0
    assert cli.main(["train", "--method", "ae", "--data", str(root / "corpus"), "--out",
                     str(root / "ae"), "--set", "epochs=1", "--set", "hidden=8", "--quiet"]) == 0
    assert cli.main(["evaluate", str(root / "knn"), "--out", str(root / "eval"), "--no-plots",
                     "--no-baseline", "--quiet"]) == 0
    return root


def damaged(runs: Path, tmp_path: Path, what: str, edit) -> Path:
    copy = tmp_path / what
    shutil.copytree(runs / what, copy)
    edit(copy)
    return copy


def one_line(capsys, code: int, *names: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert all(n in last for n in names), err
    return last


def _json_edit(file: str, change):
    def edit(folder: Path) -> None:
        path = folder / file
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return edit


def test_a_bank_cut_short_is_one_line_naming_it(runs, tmp_path, capsys):
    run = damaged(runs, tmp_path, "knn", lambda r: (r / "fan" / "bank.npz").write_bytes(
        (runs / "knn" / "fan" / "bank.npz").read_bytes()[:300]))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "bank.npz", "cut short or damaged")
    code = export_cli.main([str(run / "fan"), "--out", str(tmp_path / "b")])
    one_line(capsys, code, "bank.npz", "cut short or damaged")


@pytest.mark.parametrize("method, key, value", [
    ("knn", "density_k", "x"), ("ae", "hidden", "x"), ("ae", "lr", "fast"), ("ae", "depth", -1)])
def test_params_of_the_wrong_type_in_run_json_are_one_line(runs, tmp_path, capsys, method, key, value):
    def change(data):
        data["params"][key] = value
    run = damaged(runs, tmp_path, method, _json_edit("fan/run.json", change))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "run.json", key)
    code = export_cli.main([str(run / "fan"), "--out", str(tmp_path / "b")])
    one_line(capsys, code, "run.json", key)


def test_an_array_that_is_not_one_is_one_line_naming_it(runs, tmp_path, capsys):
    run = damaged(runs, tmp_path, "ae", lambda r: (
        r / "fan" / "maha_section_00_source_mean.npy").write_bytes(b"\x93NUMPY junk"))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "maha_section_00_source_mean.npy: cannot read")


@pytest.mark.parametrize("content, says", [
    ("{}", "key 'official_score' missing"),
    ('{"official_score": 0.5, "sections": []}', "key 'machines' missing"),
    ("not json at all", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"official_score": "x", "machines": {}, "sections": []}', "official_score"),
    ("[" * 100_000, "nested too deeply"),
])
def test_a_damaged_metrics_json_is_one_line_in_report(runs, tmp_path, capsys, content, says):
    ev = damaged(runs, tmp_path, "eval", lambda e: (e / "metrics.json").write_text(content))
    code = cli.main(["report", str(ev), "--out", str(tmp_path / "page.md")])
    one_line(capsys, code, "metrics.json", says)
    assert not (tmp_path / "page.md").exists()


def test_a_score_file_with_a_damaged_row_is_one_line_in_report(runs, tmp_path, capsys):
    def edit(e: Path) -> None:
        f = next(e.glob("anomaly_score_*"))
        f.write_text(f.read_text() + "a.wav,not-a-number\n")
    ev = damaged(runs, tmp_path, "eval", edit)
    code = cli.main(["report", str(ev), "--out", str(tmp_path / "page.md")])
    # metrics.json records each result file's digest: an edited one is refused by name
    # before its rows are read (the reader's row errors: test_the_reader_* below)
    one_line(capsys, code, "anomaly_score_fan_section_00_test.csv", "differs")


def test_a_corpus_json_that_is_not_the_synth_one_is_one_line(runs, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.json").write_text('{"clips": 5}')
    code = cli.main(["report", str(runs / "eval"), "--data", str(data), "--out", str(tmp_path / "p.md")])
    one_line(capsys, code, "corpus.json", "clips")


# -- the reader itself -------------------------------------------------------------------

def test_the_reader_names_the_file_for_every_way_a_file_is_wrong(tmp_path):
    f = tmp_path / "f.json"
    cases = [(b"\xff\xfe", "not UTF-8"), (b"{", "not valid JSON"), (b"[" * 50_000, "nested too deeply")]
    for raw, says in cases:
        f.write_bytes(raw)
        with pytest.raises(FileFormatError, match=f"f.json: .*{says}"):
            read_json(f)
    with pytest.raises(FileFormatError, match="no such file"):
        read_json(tmp_path / "nope.json")
    with pytest.raises(FileFormatError, match="a folder"):
        read_json(tmp_path)
    with pytest.raises(FileFormatError, match="too large"):
        f.write_bytes(b" " * 100)
        read_json(f, max_bytes=10)
    with pytest.raises(FileFormatError, match="field 'a.b' should be a number, got text"):
        require({"a": {"b": "x"}}, {"a.b": float}, f)
    with pytest.raises(FileFormatError, match="field 'n' should be a whole number, got true/false"):
        require({"n": True}, {"n": int}, f)
    np.save(tmp_path / "o.npy", np.array([{"pickled": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match="o.npy: cannot read"):
        read_array(tmp_path / "o.npy")
    np.savez(tmp_path / "a.npz", x=np.ones(3))
    with pytest.raises(FileFormatError, match="no array 'y'"):
        read_arrays(tmp_path / "a.npz", ["y"])
    (tmp_path / "s.csv").write_text("a.wav,1.5\nb.wav,nan\n")
    with pytest.raises(FileFormatError, match="s.csv: line 2 .*not a finite number"):
        read_csv(tmp_path / "s.csv", (str, float))


# -- tampered run files (issue 38, finding 14): checked against run.json when loaded ----------

def _npz_edit(change):
    def edit(folder: Path) -> None:
        path = folder / "fan" / "bank.npz"
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        np.savez(path, **arrays)
    return edit


def _nan_first(key: str):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
    return change


@pytest.mark.parametrize("change, says", [
    (lambda a: a.pop("s00__mel_bank"), "mel_bank"),
    (lambda a: a.update(s00__mel_bank=a["s00__mel_bank"][:, :7]), "mel_bank"),
    (_nan_first("s00__mel_bank"), "NaN"),
    (_nan_first("s00__spectrum_density"), "NaN"),
], ids=["key-deleted", "wrong-shape", "nan-bank", "nan-density"])
def test_a_tampered_bank_is_one_line_naming_it(runs, tmp_path, capsys, change, says):
    run = damaged(runs, tmp_path, "knn", _npz_edit(change))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "bank.npz", "section 00", says)
    code = export_cli.main([str(run / "fan"), "--out", str(tmp_path / "b")])
    one_line(capsys, code, "bank.npz", says)


def test_feature_settings_that_do_not_fit_the_arrays_are_one_line(runs, tmp_path, capsys):
    run = damaged(runs, tmp_path, "knn", _json_edit(
        "fan/run.json", lambda d: d["feature_spec"].update(n_mels=64)))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "bank.npz", "n_mels", "train it again")


def test_a_precision_matrix_of_the_wrong_size_is_one_line(runs, tmp_path, capsys):
    run = damaged(runs, tmp_path, "ae", lambda r: np.save(
        r / "fan" / "maha_section_00_source_precision.npy", np.eye(3)))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "maha_section_00", "precisions")


def test_weights_that_are_no_state_dict_are_one_line(runs, tmp_path, capsys):
    import torch
    run = damaged(runs, tmp_path, "ae", lambda r: torch.save({}, r / "fan" / "model.pt"))
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "model.pt", "no tensor")
    (run / "fan" / "model.pt").write_bytes(b"not a zip at all")
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "model.pt", "cannot read")


def test_weights_of_a_run_with_other_settings_are_one_line(runs, tmp_path, capsys):
    other = tmp_path / "ae16"
    assert cli.main(["train", "--method", "ae", "--data", str(runs / "corpus"), "--out", str(other),
                     "--set", "epochs=1", "--set", "hidden=16", "--quiet"]) == 0
    run = damaged(runs, tmp_path, "ae", lambda r: shutil.copy(other / "fan" / "model.pt",
                                                                r / "fan" / "model.pt"))
    capsys.readouterr()
    code = cli.main(["evaluate", str(run), "--no-plots", "--no-baseline", "--quiet"])
    last = one_line(capsys, code, "model.pt", "has shape", "16")
    assert len(capsys.readouterr().err.strip().splitlines()) <= 1, last


def test_a_baseline_bank_with_nan_or_the_wrong_width_is_one_line(runs, tmp_path, capsys):
    base = tmp_path / "bk"
    assert cli.main(["train", "--method", "baseline-knn", "--data", str(runs / "corpus"), "--out",
                     str(base), "--quiet"]) == 0
    bank = base / "fan" / "bank_section_00.npy"
    np.save(bank, np.load(bank)[:, :5])
    code = cli.main(["evaluate", str(base), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "bank_section_00.npy", "shape")
    np.save(base / "fan" / "mean.npy", np.full(np.load(base / "fan" / "std.npy").shape, np.nan))
    code = cli.main(["evaluate", str(base), "--no-plots", "--no-baseline", "--quiet"])
    one_line(capsys, code, "mean.npy", "NaN")
