"""docs/results.md from evaluation outputs (metrics.json), so every figure in the docs
comes from a run anyone can repeat."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def load_evaluation(path: Path) -> dict:
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path}: no metrics.json (run 'harken-train evaluate' first)")
    return json.loads(file.read_text())


def results_markdown(evaluations: dict[str, dict], corpus: dict, command: str) -> str:
    """evaluations: method label -> metrics.json content."""
    lines = ["# Results", "",
             f"Made by `{command}` on {dt.date.today().isoformat()}; re-run it to refresh "
             "every number on this page. Metrics follow the DCASE 2024 evaluator "
             "(training/metrics.py): AUC per domain (that domain's normals against all "
             "anomalies of the section), pAUC at FPR <= 0.1 over the section, official score = "
             "harmonic mean of all of them.", ""]
    if corpus:
        lines += [f"Corpus: synthetic, size `{corpus.get('size')}`, seed {corpus.get('seed')}, "
                  f"machine types {', '.join(corpus.get('machines', []))}, "
                  f"{corpus.get('sections')} sections each, {corpus.get('clip_seconds')} s clips, "
                  f"{len(corpus.get('clips', []))} clips in all.", ""]
    lines += ["## Official score", "", "| method | official score | "
              + " | ".join(sorted(next(iter(evaluations.values()))["machines"])) + " |",
              "|---|---|" + "---|" * len(next(iter(evaluations.values()))["machines"])]
    for label, ev in evaluations.items():
        machines = " | ".join(f"{v:.4f}" for _, v in sorted(ev["machines"].items()))
        lines.append(f"| {label} | **{ev['official_score']:.4f}** | {machines} |")
    knn = evaluations.get("baseline-knn")
    if knn:
        src = sum(x["auc_source"] for x in knn["sections"]) / len(knn["sections"])
        tgt = sum(x["auc_target"] for x in knn["sections"]) / len(knn["sections"])
        in_band = 0.55 <= knn["official_score"] <= 0.80
        lines += ["", "Corpus difficulty check: the naive baseline should score between 0.55 and "
                  f"0.80 with target AUCs below source AUCs. Official score "
                  f"{knn['official_score']:.4f}: {'met' if in_band else '**missed**'}; mean AUC "
                  f"target {tgt:.4f} vs source {src:.4f}: {'met' if tgt < src - 0.05 else '**missed**'}."]
    for label, ev in evaluations.items():
        lines += ["", f"## {label}: per section", "",
                  "| machine | section | AUC source | AUC target | pAUC | hmean |",
                  "|---|---|---|---|---|---|"]
        for s in ev["sections"]:
            lines.append(f"| {s['machine']} | {s['section']:02d} | {s['auc_source']:.4f} | "
                         f"{s['auc_target']:.4f} | {s['pauc']:.4f} | {s['hmean']:.4f} |")
        src = [s["auc_source"] for s in ev["sections"]]
        tgt = [s["auc_target"] for s in ev["sections"]]
        lines += ["", f"Mean AUC over sections: source {sum(src) / len(src):.4f}, "
                  f"target {sum(tgt) / len(tgt):.4f}."]
    return "\n".join(lines) + "\n"
