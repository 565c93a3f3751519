"""Detection quality on the standard synthetic corpus, side by side: the official DCASE score
(harmonic mean of AUC source, AUC target and pAUC over every section) of every method and
int8 bundle that scripts/make-results produced, of `baseline-knn`, and of the PyPI package
`audio-anomaly` (a numpy spectral detector a user might pick instead).

audio-anomaly is used as its README shows for monitoring: `audio_anomaly.Monitor` built
from a healthy reference recording of the same section (here: that section's training
clips, source and target domain, joined), each test clip checked against it, and the
clip's score is its highest frame score. It is computed here, on 2 processes.

The methods and bundles are read from the runs of scripts/make-results (runs/standard:
evaluations and `harken-export verify` records); a bundle's corpus score is the harmonic
mean of its per-machine scores, which equals the official score because every machine has
the same number of sections. What is missing is listed; `--train-missing` retrains it with
scripts/make-results (about 1.5 h on 2 cores for everything), which bench/run_all does not do.

    .venv/bin/python bench/bench_detection.py [--train-missing]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, record  # noqa: E402

CORPUS = ROOT / "corpora" / "standard"
RUNS = ROOT / "runs" / "standard"
# the evaluation labels scripts/make-results writes, by the method that trains them
EVALS = {"spectral-knn": ["spectral-knn"], "baseline-knn": ["baseline-knn"],
         "ae": ["ae", "ae-mahalanobis"], "ae-bu": ["ae-bu"],
         "ae-snp": ["ae-snp"], "mobilenetv2": ["mobilenetv2", "mobilenetv2_[logit]"],
         "contrastive": ["contrastive", "contrastive_[logit]"]}
BUNDLED = ["spectral-knn", "ae", "mobilenetv2"]


def audio_anomaly_section(task: tuple[str, int]) -> list[tuple[str, float]]:
    """(test clip name, score) for one section, against its training clips as reference."""
    import audio_anomaly
    import numpy as np

    from harken.agent.sources.wavio import read_wav
    from harken.training.data.corpus import scan
    machine, section = task
    rate = 16000
    train = [c for c in scan(CORPUS, [machine], "train") if c.section == section]
    reference = np.concatenate([read_wav(c.path, rate)[0] for c in train])
    monitor = audio_anomaly.Monitor(reference, sample_rate=rate)
    test = [c for c in scan(CORPUS, [machine], "test") if c.section == section]
    return [(c.name, float(monitor.check(read_wav(c.path, rate)[0]).max_score)) for c in test]


def audio_anomaly_evaluation() -> dict:
    import numpy as np

    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import Evaluation, section_results
    ev = Evaluation()
    test = {m: scan(CORPUS, [m], "test") for m in machine_types(CORPUS)}
    tasks = [(m, s) for m, clips in test.items() for s in sorted({c.section for c in clips})]
    with get_context("spawn").Pool(min(2, os.cpu_count() or 1)) as pool:
        scored = dict(zip(tasks, pool.map(audio_anomaly_section, tasks)))
    for m, clips in test.items():
        by_name = {name: s for (mm, _), pairs in scored.items() if mm == m for name, s in pairs}
        ev.results.extend(section_results(m, clips, np.array([by_name[c.name] for c in clips])))
    return {"official": ev.official, "machines": ev.machine_scores(), **domain_aucs(
        [r.to_dict() for r in ev.results])}


def domain_aucs(sections: list[dict]) -> dict:
    """Mean AUC on the source and on the target domain: where a detector loses ground."""
    return {f"auc_{d}": sum(s[f"auc_{d}"] for s in sections) / len(sections)
            for d in ("source", "target")}


def method_rows() -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for method, labels in EVALS.items():
        for label in labels:
            path = RUNS / "eval" / label / "metrics.json"
            if not path.is_file():
                missing.append(method)
                continue
            m = json.loads(path.read_text())
            rows.append({"name": label.replace("_", " "), "kind": "method",
                         "official": m["official_score"], "machines": m["machines"],
                         **domain_aucs(m["sections"])})
    return rows, sorted(set(missing))


def bundle_rows() -> list[dict]:
    from harken.training.metrics import hmean
    rows = []
    for method in BUNDLED:
        per: dict[str, list[dict]] = {}
        for path in sorted((RUNS / "verify").glob(f"{method}__*.json")):
            machine = path.stem.split("__", 1)[1]
            for r in json.loads(path.read_text()):
                if r["artifact"] != "torch-fp32":
                    per.setdefault(r["artifact"], []).append({"machine": machine, **r})
        for artifact, rs in per.items():
            machines = {r["machine"]: r["official"] for r in rs}
            rows.append({"name": f"{method} bundle {artifact}", "kind": "bundle",
                         "official": hmean(list(machines.values())), "machines": machines,
                         **domain_aucs(rs)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-missing", action="store_true",
                   help="retrain the methods whose evaluations are missing (scripts/make-results)")
    args = p.parse_args()
    import audio_anomaly
    if not (CORPUS / "corpus.json").is_file():
        subprocess.run([str(ROOT / ".venv" / "bin" / "harken-train"), "synth", "--size",
                        "standard", "--out", str(CORPUS)], check=True)
    rows, missing = method_rows()
    if missing and args.train_missing:
        subprocess.run([str(ROOT / "scripts" / "make-results")], check=True,
                       env={**os.environ, "METHODS": " ".join(missing)})
        rows, missing = method_rows()
    if missing:
        print(f"no evaluation of {', '.join(missing)} in {RUNS}: run "
              f"METHODS=\"{' '.join(missing)}\" scripts/make-results", file=sys.stderr)
    rows += bundle_rows()
    aa = audio_anomaly_evaluation()
    rows.append({"name": "audio-anomaly (PyPI)", "kind": "peer", **aa})
    for r in rows:
        print(f"{r['name']:<34} {r['official']:.4f}")
    corpus = json.loads((CORPUS / "corpus.json").read_text())
    figures = {"corpus": {"root": "corpora/standard", "size": corpus["size"],
                          "seed": corpus["seed"], "machines": corpus["machines"]},
               "audio_anomaly_version": audio_anomaly.__version__, "rows": rows,
               "missing": missing}
    print(f"wrote {record('detection', 'bench/bench_detection.py', figures)}")


if __name__ == "__main__":
    main()
