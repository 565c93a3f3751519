import csv
import json
import subprocess
import sys

from training.cli import main


def test_train_evaluate_end_to_end(tiny_corpus, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--method", "baseline-knn", "--data", str(tiny_corpus),
                 "--machines", "fan,valve", "--out", str(runs), "--quiet"]) == 0
    assert "baseline-knn fan: trained on 20 clips" in capsys.readouterr().out
    info = json.loads((runs / "fan" / "run.json").read_text())
    assert info["method"] == "baseline-knn" and info["machine"] == "fan"
    assert info["feature_spec"]["name"] == "dcase2020-ae"
    assert info["normal_scores"]["threshold"] > info["normal_scores"]["percentiles"]["50"]
    assert len(info["corpus"]["fingerprint"]) == 64

    out = tmp_path / "eval"
    assert main(["evaluate", str(runs), "--out", str(out), "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "metrics.json").read_text())
    assert printed == report
    assert set(report["machines"]) == {"fan", "valve"}
    assert len(report["sections"]) == 4
    assert 0.0 <= report["official_score"] <= 1.0
    for machine in ("fan", "valve"):
        for section in (0, 1):
            stem = f"{machine}_section_{section:02d}_test.csv"
            rows = list(csv.reader(open(out / f"anomaly_score_{stem}")))
            decisions = list(csv.reader(open(out / f"decision_result_{stem}")))
            assert len(rows) == len(decisions) == 8
            assert all(r[0].startswith(f"section_{section:02d}_") for r in rows)
            assert {d[1] for d in decisions} <= {"0", "1"}
            float(rows[0][1])
        assert (out / f"roc_{machine}.png").stat().st_size > 10_000
    header = next(csv.reader(open(out / "metrics.csv")))
    assert header[:5] == ["machine", "section", "auc_source", "auc_target", "pauc"]


def test_user_mistakes_give_one_clear_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "training.cli", *args],
                              capture_output=True, text=True)
    r = run("train", "--method", "baseline-knn", "--data", str(tmp_path / "nope"),
            "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "corpus folder does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate", str(tmp_path))
    assert r.returncode == 2 and "no run.json" in r.stderr and "Traceback" not in r.stderr
    r = run("synth", "--size", "huge", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr
