"""Where the workstation commands write: a recording never lands on an existing file or
inside the corpus it reads, a report never onto an evaluation, refit says where it works
(docs/reliability.md, workstation: corpora, settings and files; issue 38's findings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harken.training import cli
from tests.training.test_corpus_scan import corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("outputs") / "corpus", train=3, test=2)


def _one_line(capsys, code: int, *says: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert all(s in last for s in says), err
    return last


def _recording(data: Path, out: Path, *extra: str) -> int:
    return cli.main(["recording", "--data", str(data), "--machine", "fan", "--normal", "1",
                     "--faulty", "1", "--out", str(out), *extra])


def test_a_recording_refuses_a_path_inside_the_corpus_it_reads(tiny, capsys):
    clip = next((tiny / "fan" / "test").glob("*normal*.wav"))
    before = clip.read_bytes()
    _one_line(capsys, _recording(tiny, clip, "--force"), "inside the corpus")
    assert clip.read_bytes() == before
    _one_line(capsys, _recording(tiny, tiny / "fan" / "new.wav"), "inside the corpus")
    assert not (tiny / "fan" / "new.wav").exists()


def test_a_recording_refuses_an_existing_file_without_force(tiny, tmp_path, capsys):
    out = tmp_path / "rec.wav"
    out.write_bytes(b"keep me")
    _one_line(capsys, _recording(tiny, out), "already there", "--force")
    assert out.read_bytes() == b"keep me"
    assert _recording(tiny, out, "--force") == 0
    assert out.read_bytes()[:4] == b"RIFF"


PEER = Path(__file__).resolve().parents[1] / "data" / "peers" / "mlperf-tiny-ad" / \
    "model_ToyCar_fp32.tflite"


@pytest.mark.parametrize("value, says", [
    ("nan", "expected a finite number"), ("inf", "expected a finite number"),
    ("-inf", "expected a finite number"), ("-5", "never scores below 0")])
def test_wrap_refuses_a_threshold_that_is_not_finite_or_below_what_the_rule_scores(
        value, says, tmp_path, capsys):
    from harken.export.cli import main as export_main
    out = tmp_path / "bundle"
    code = export_main(["wrap", str(PEER), "--preset", "dcase2020-ae", "--out", str(out),
                        f"--threshold={value}"])
    _one_line(capsys, code, "--threshold", says)
    assert not out.exists()
    assert export_main(["wrap", str(PEER), "--preset", "dcase2020-ae", "--out", str(out),
                        "--threshold=0.5"]) == 0


@pytest.fixture(scope="module")
def evaluation(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    assert cli.main(["train", "--method", "baseline-knn", "--data", str(tiny), "--out",
                     str(root / "runs"), "--quiet"]) == 0
    assert cli.main(["evaluate", str(root / "runs"), "--out", str(root / "ev"), "--no-plots",
                     "--no-baseline", "--quiet"]) == 0
    return root / "ev"


def test_report_refuses_a_label_given_twice(evaluation, tmp_path, capsys):
    code = cli.main(["report", f"x={evaluation}", f"x={evaluation}", "--out", str(tmp_path / "p.md")])
    _one_line(capsys, code, "label 'x' given twice")
    assert not (tmp_path / "p.md").exists()
    assert cli.main(["report", f"x={evaluation}", f"y={evaluation}", "--out", str(tmp_path / "p.md")]) == 0


@pytest.mark.parametrize("where", ["metrics.json", "page.md", "sub/page.md"])
def test_report_refuses_to_write_onto_or_inside_an_evaluation(evaluation, capsys, where):
    before = (evaluation / "metrics.json").read_bytes()
    code = cli.main(["report", str(evaluation), "--out", str(evaluation / where)])
    _one_line(capsys, code, "inside the evaluation folder")
    assert (evaluation / "metrics.json").read_bytes() == before
    assert not (evaluation / "page.md").exists()


def test_refit_from_inside_the_run_folder_says_to_run_it_from_another(tiny, tmp_path, capsys,
                                                                       monkeypatch):
    runs = tmp_path / "runs"
    assert cli.main(["train", "--method", "baseline-knn", "--data", str(tiny), "--out", str(runs),
                     "--quiet"]) == 0
    before = sorted(p.name for p in (runs / "fan").iterdir())
    monkeypatch.chdir(runs / "fan")
    _one_line(capsys, cli.main(["refit", ".", "--quiet"]), "run refit from another folder")
    monkeypatch.chdir(runs / "fan" / "..")          # above the run: refit may replace it
    _one_line(capsys, cli.main(["refit", ".", "--quiet"]), "fan: baseline-knn has no score state")
    assert sorted(p.name for p in (runs / "fan").iterdir()) == before


def _verify_rows(method: str, machine: str) -> list[dict]:
    row = {"artifact": "torch-fp32", "backend": "torch", "official": 0.6, "spearman": 1.0,
           "max_rel_error": 0.0, "size_bytes": 0, "latency_ms": 0.1}
    return [{"method": method, "machine": machine, **row},
            {"method": method, "machine": machine, **row, "artifact": "onnx-fp32", "size_bytes": 900}]


def test_export_report_takes_method_and_machine_from_inside_each_verify_output(tmp_path, capsys):
    import json

    from harken.export.cli import main as export_main
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "spectral-knn__pump.json").write_text(json.dumps(_verify_rows("spectral-knn", "pump")))
    page = tmp_path / "results.md"
    assert export_main(["report", str(checks), "--results", str(page)]) == 0
    assert "| spectral-knn | pump |" in page.read_text()
    (checks / "ae__pump.json").write_text(json.dumps(_verify_rows("spectral-knn", "pump")))
    before = page.read_text()
    code = export_main(["report", str(checks), "--results", str(page)])
    _one_line(capsys, code, "ae__pump.json", "file name says method 'ae'", "'spectral-knn'")
    assert page.read_text() == before
