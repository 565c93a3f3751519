"""The default detector (spectral-knn) against the detection-quality targets, on the
standard synthetic corpus, through the same path a device takes.

Per machine type: train spectral-knn (wall seconds, this machine), score every test clip
with every score rule (the training code: the ablations), export the bundle and score
every test clip through the agent's own scorer for each artifact (``harken-export
verify``), and baseline-knn beside it on the same clips. Nothing is chosen on test clips:
spectral-knn's two settings keep their defaults.

    .venv/bin/python bench/bench_default_detector.py [--corpus corpora/standard]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, baseline_knn_results, bundle_row,  # noqa: E402
                           corpus_root, detection_summary, export_and_verify, record,
                           standard_corpus)

TARGETS = {"official": 0.72, "auc_target": 0.65, "bundle_vs_float": 0.01, "train_s": 300.0}
RUNS = ROOT / "runs" / "bench-default"


def main() -> None:
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results
    from harken.training.methods import DEFAULT_METHOD, make_method, method_class

    corpus = standard_corpus(__doc__.splitlines()[0])
    shutil.rmtree(RUNS, ignore_errors=True)
    rules = method_class(DEFAULT_METHOD).score_rules
    per_rule: dict[str, list] = {r: [] for r in rules}
    knn: list = []
    artifacts: dict[str, dict[str, dict]] = {}       # artifact -> machine -> verify figures
    train_s: dict[str, float] = {}
    machines = machine_types(corpus)
    for machine in machines:
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        run = RUNS / "runs" / machine
        t = time.perf_counter()
        make_method(DEFAULT_METHOD).train(train, run, progress=False)
        train_s[machine] = time.perf_counter() - t
        model = method_class(DEFAULT_METHOD).load(run)
        for rule, scores in model.score_all(test, progress=False).items():
            # score_all also gives the default's own rule (auto: the chosen variant's weights)
            per_rule.setdefault(rule, []).extend(section_results(machine, test, scores))
        knn += baseline_knn_results(machine, train, test, RUNS / "baseline-knn" / machine)
        bundle, checks = export_and_verify(run, RUNS / "bundles" / machine, corpus)
        for kind, figures in checks.items():
            artifacts.setdefault(kind, {})[machine] = figures
        default_artifact = bundle.artifact().kind
        print(f"{machine}: trained in {train_s[machine]:.1f} s; " + ", ".join(
            f"{a} {artifacts[a][machine]['official']:.4f}" for a in artifacts), flush=True)

    rows = [{"name": f"{DEFAULT_METHOD} [{r}]", "rule": r, **detection_summary(res)}
            for r, res in per_rule.items()]
    knn_row = {"name": "baseline-knn", "rule": "knn", **detection_summary(knn)}
    float_row = next(r for r in rows if r["rule"] == model.default_rule)
    bundle_rows = []
    for kind, by_machine in artifacts.items():
        bundle_rows.append({**bundle_row(f"{DEFAULT_METHOD} bundle {kind}", by_machine),
                            "artifact": kind, "default_artifact": kind == default_artifact})
    device = next(b for b in bundle_rows if b["default_artifact"])
    met = {"official": device["official"] >= TARGETS["official"],
           "auc_target": device["auc_target"] >= TARGETS["auc_target"],
           "no_machine_below_baseline": all(device["machines"][m] > knn_row["machines"][m]
                                            for m in machines),
           "bundle_vs_float": all(abs(b["official"] - float_row["official"])
                                  <= TARGETS["bundle_vs_float"] for b in bundle_rows),
           "train_s": max(train_s.values()) <= TARGETS["train_s"]}
    for r in [*rows, knn_row, *bundle_rows]:
        print(f"{r['name']:<36} official {r['official']:.4f}  AUC source {r['auc_source']:.3f}"
              f"  target {r['auc_target']:.3f}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    path = record("default-detector", "bench/bench_default_detector.py", {
        "corpus": {"root": corpus_root(corpus)},
        "method": DEFAULT_METHOD, "default_rule": model.default_rule,
        "settings": dict(model.info.params), "machines": machines, "rows": rows,
        "baseline": knn_row, "bundles": bundle_rows, "train_s": train_s,
        "targets": TARGETS, "met": met})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
