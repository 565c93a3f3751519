import json

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
