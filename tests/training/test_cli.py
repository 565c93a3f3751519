import csv
import json
import subprocess
import sys

from harken.training.cli import main


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
        return subprocess.run([sys.executable, "-m", "harken.training.cli", *args],
                              capture_output=True, text=True)
    r = run("train", "--method", "baseline-knn", "--data", str(tmp_path / "nope"),
            "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "corpus folder does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate", str(tmp_path))
    assert r.returncode == 2 and "no run.json" in r.stderr and "Traceback" not in r.stderr
    r = run("synth", "--size", "huge", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr


def test_train_with_settings_then_evaluate_every_rule_beside_the_baseline(tiny_corpus, tmp_path,
                                                                          capsys):
    runs = tmp_path / "ae"
    assert main(["train", "--method", "ae", "--data", str(tiny_corpus), "--machine", "valve",
                 "--out", str(runs), "--set", "epochs=2", "--set", "batch_size=64", "--seed", "7",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ae valve: trained on 20 clips" in out and "2 epochs on cpu" in out
    info = json.loads((runs / "valve" / "run.json").read_text())
    assert info["params"]["epochs"] == 2 and info["params"]["seed"] == 7
    assert info["training"]["seconds"] > 0 and info["training"]["epochs"] == 2
    assert (runs / "valve" / "loss.png").is_file()

    assert main(["evaluate", str(runs), "--score", "mahalanobis", "--out", str(tmp_path / "e"),
                 "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "beside baseline-knn on the same data" in out
    assert "ae (mahalanobis score)" in out and "official" in out
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["methods"] == {"valve": "ae (mahalanobis score)"}
    assert (tmp_path / "e" / "baseline-knn" / "metrics.json").is_file()


def test_methods_lists_every_method_and_its_settings(capsys):
    assert main(["methods", "--settings"]) == 0
    out = capsys.readouterr().out
    for name in ("baseline-knn", "ae", "ae-mahalanobis", "ae-bu", "ae-snp", "mobilenetv2",
                 "contrastive"):
        assert f"\n{name} " in "\n" + out
    assert "ntxent_weight = 0.0005" in out and "width = 0.5" in out


def test_bad_settings_and_rules_are_one_line_errors(tiny_corpus, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "harken.training.cli", *args],
                              capture_output=True, text=True)
    r = run("train", "--method", "mobilenetv2", "--data", str(tiny_corpus), "--out",
            str(tmp_path / "r"), "--set", "width=0.6")
    assert r.returncode == 2 and "width must be one of" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--method", "ae", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"),
            "--set", "epochs")
    assert r.returncode == 2 and "expected KEY=VALUE" in r.stderr
    assert not (tmp_path / "r").exists()          # refused before any work
    r = run("train", "--method", "ae", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"),
            "--device", "cuda:0", "--set", "epochs=1")
    if r.returncode == 2:                          # no GPU here: said so, no traceback
        assert "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_recording_goes_from_normal_to_faulty(small_fan, tmp_path, capsys):
    from harken.agent.sources.wavio import read_wav
    out = tmp_path / "rec.wav"
    assert main(["recording", "--data", str(small_fan), "--machine", "fan", "--normal", "2",
                 "--faulty", "3", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    x, rate = read_wav(out)
    assert info["fault_starts_at_s"] == 20.0 and len(x) == 50 * rate
    assert main(["recording", "--data", str(small_fan), "--machine", "fan", "--normal", "99",
                 "--out", str(out), "--force"]) == 2
    assert "99 and 6 wanted" in capsys.readouterr().err


def test_train_without_a_method_trains_the_default_and_evaluates_its_ablations(tiny_corpus,
                                                                                tmp_path, capsys):
    from harken.training.methods import DEFAULT_METHOD
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(tiny_corpus), "--machine", "gearbox", "--out",
                 str(runs), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert f"{DEFAULT_METHOD} gearbox: trained on 20 clips" in printed.out
    assert "has no 'device' setting (it trains no network); --device ignored" in printed.err
    assert json.loads((runs / "gearbox" / "run.json").read_text())["method"] == DEFAULT_METHOD
    assert main(["evaluate", str(runs), "--score", "all", "--out", str(tmp_path / "e"),
                 "--quiet", "--no-plots", "--no-baseline"]) == 0
    for rule in ("fused", "plain", "density", "mel", "spectrum"):
        assert (tmp_path / "e" / rule / "metrics.json").is_file()
