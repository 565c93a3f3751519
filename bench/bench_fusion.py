"""Score fusion against its members, on the standard synthetic corpus, through the same path
a device takes.

Per machine type: the fusion of spectral-knn (the default detector) and ae-mahalanobis (the
exportable trained method with the best official score on the results page), equal
weights, nothing tuned; every test clip scored by the fused rule and by each member alone
(the "did it help?" rows: fusion off is a member alone), then the fused bundle exported
(int8 where a member has weights) and scored through the agent's own scorer
(``harken-export verify``), baseline-knn beside it on the same clips.

    .venv/bin/python bench/bench_fusion.py [--corpus corpora/standard] [--trained DIR]

``--trained DIR`` copies members trained before (DIR/<member>/<machine>, e.g. by
``harken-train train --method ae-mahalanobis --out DIR/ae-mahalanobis``) instead of
training them; their recorded training times are reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, baseline_knn_results, bundle_row,  # noqa: E402
                           corpus_root, detection_summary, export_and_verify, record)

MEMBERS = ("spectral-knn", "ae-mahalanobis")
RUNS = ROOT / "runs" / "bench-fusion"
TARGETS = {"official": 0.72, "auc_target": 0.65, "int8_vs_float": 0.01}


def member_seconds(run: Path) -> float | None:
    from harken.training.runs import read_run
    training = read_run(run).training
    return training.seconds if training is not None else None


def main() -> None:
    from harken.agent.model.factory import make_scorer
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results
    from harken.training.fusion import Fusion, fuse
    from harken.training.methods import make_method

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "standard")
    ap.add_argument("--trained", type=Path, help="members trained before: DIR/<member>/<machine>")
    args = ap.parse_args()
    corpus = args.corpus
    if not (corpus / "corpus.json").is_file():
        sys.exit(f"{corpus}: no corpus; make it with "
                 f"'harken-train synth --size standard --out {corpus}'")
    shutil.rmtree(RUNS, ignore_errors=True)
    settings = [f"members={','.join(MEMBERS)}"]
    if args.trained:
        settings.append(f"trained={args.trained}")
    per_rule: dict[str, list] = {"fused": [], **{m: [] for m in MEMBERS}}
    knn: list = []
    artifacts: dict[str, dict[str, dict]] = {}
    train_s: dict[str, dict[str, float | None]] = {}
    machines = machine_types(corpus)
    for machine in machines:
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        run = RUNS / "runs" / machine
        t = time.perf_counter()
        make_method("fusion", settings).train(train, run, progress=False)
        wall = time.perf_counter() - t
        train_s[machine] = ({m: member_seconds(run / m) for m in MEMBERS} if args.trained
                            else {"fusion": wall})
        fusion = Fusion.load(run)
        # each member scores once: alone (fusion off) and fused from the same scores
        member_scores = [m.score(test, progress=False) for m in fusion.members]
        for name, scores in zip(MEMBERS, member_scores):
            per_rule[name] += section_results(machine, test, scores)
        fused = fuse(member_scores, [c.section for c in test], fusion.scales, fusion.weights)
        per_rule["fused"] += section_results(machine, test, fused)
        knn += baseline_knn_results(machine, train, test, RUNS / "baseline-knn" / machine)
        bundle, checks = export_and_verify(run, RUNS / "bundles" / machine, corpus)
        default_artifact = make_scorer(bundle, bundle.sections[0]).artifact_kind
        for kind, figures in checks.items():
            artifacts.setdefault(kind, {})[machine] = figures
        print(f"{machine}: " + ", ".join(f"{a} {artifacts[a][machine]['official']:.4f}"
                                         for a in artifacts), flush=True)

    rows = [{"name": "fusion" if r == "fused" else f"{r} alone", "rule": r,
             **detection_summary(res)} for r, res in per_rule.items()]
    knn_row = {"name": "baseline-knn", "rule": "knn", **detection_summary(knn)}
    float_row = rows[0]
    bundle_rows = []
    for kind, by_machine in artifacts.items():
        bundle_rows.append({**bundle_row(f"fusion bundle {kind}", by_machine), "artifact": kind,
                            "int8": "int8" in kind, "default_artifact": kind == default_artifact})
    int8 = [b for b in bundle_rows if b["int8"]]
    device = next(b for b in bundle_rows if b["default_artifact"])      # what the agent runs
    met = {"official": device["official"] >= TARGETS["official"],
           "auc_target": device["auc_target"] >= TARGETS["auc_target"],
           "no_machine_below_baseline": all(device["machines"][m] > knn_row["machines"][m]
                                            for m in machines),
           "int8_vs_float": all(abs(b["official"] - float_row["official"])
                                <= TARGETS["int8_vs_float"] for b in int8)}
    for r in [*rows, knn_row, *bundle_rows]:
        print(f"{r['name']:<44} official {r['official']:.4f}  AUC source {r['auc_source']:.3f}"
              f"  target {r['auc_target']:.3f}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    path = record("fusion", " ".join(["bench/bench_fusion.py", *sys.argv[1:]]), {
        "corpus": {"root": corpus_root(corpus)}, "members": list(MEMBERS),
        "settings": settings, "machines": machines, "rows": rows, "baseline": knn_row,
        "bundles": bundle_rows, "device_artifact": device["artifact"], "train_s": train_s,
        "train_s_from": "the members' own run.json, trained before" if args.trained
        else "wall time of the fusion's training, this run",
        "targets": TARGETS, "met": met})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
