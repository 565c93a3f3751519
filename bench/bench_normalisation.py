"""Domain-robust scoring: baseline-knn's distance with and without local density
normalisation (agent/model/rules/density.py), and the two fused (each standardised on its
section's leave-one-out training scores, equal weights), on the standard synthetic corpus.

The clip vectors are computed once per machine type; each rule scores the same vectors,
so the rows differ only in the score rule. ``knn-density`` uses the k that baseline-knn's
training chooses per machine type from training clips alone (held-out normals against
pseudo-anomalous copies, training/baselines.py ``choose_density_k``); the fixed-k rows show
how sensitive the rule is and must not be used to pick k (that would tune on test clips).

The classifier's two bank rules (``embedding``: per-domain scale, the earlier default;
``embedding-density``: LDN over every training clip) are read from an evaluation of a
mobilenetv2 run on the same corpus when there is one:
``harken-train train --method mobilenetv2 --data corpora/standard --out runs/standard/mobilenetv2``
then ``harken-train evaluate runs/standard/mobilenetv2 --score all --out
runs/standard/eval-rules/mobilenetv2``.

    .venv/bin/python bench/bench_normalisation.py [--corpus corpora/standard]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, corpus_root, detection_summary, record,  # noqa: E402
                           standard_corpus)

SENSITIVITY_K = (1, 2, 4, 8, 16)


def main() -> None:
    from harken.training.baselines import KnnBaseline, clip_vector
    from harken.training.data.features import clip_logmels
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results

    corpus = standard_corpus(__doc__.splitlines()[0])
    variants = {"knn": ("knn", None), "knn-density": ("knn-density", None),
                "knn-fused": ("knn-fused", None)} | {
        f"knn-density k={k}": ("knn-density", k) for k in SENSITIVITY_K}
    results: dict[str, list] = {v: [] for v in variants}
    chosen: dict[str, int] = {}
    choice_auc: dict[str, dict] = {}
    machines = machine_types(corpus)
    for machine in machines:
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        print(f"{machine}: {len(train)} training clips, {len(test)} test clips", flush=True)
        model = KnnBaseline()
        logmels = clip_logmels(train, model.spec)
        model.fit_vectors(np.stack([clip_vector(m) for m in logmels]), [c.section for c in train])
        chosen[machine], choice_auc[machine] = model.choose_density_k(train, logmels)
        print(f"{machine}: k chosen on training data = {chosen[machine]} "
              f"(pseudo-anomaly AUC by k: {choice_auc[machine]})", flush=True)
        test_vectors = model.vectors(test)
        for name, (rule, k) in variants.items():
            model.density_k = chosen[machine] if k is None else k
            model._fit_densities()
            scores = model.score_vectors(test_vectors, [c.section for c in test], rule)
            results[name] += section_results(machine, test, scores)
    rows = []
    for name, res in results.items():
        rows.append({"name": name, "default": name in ("knn", "knn-density", "knn-fused"),
                     **detection_summary(res)})
        print(f"{name:<22} official {rows[-1]['official']:.4f}  AUC source "
              f"{rows[-1]['auc_source']:.3f}  target {rows[-1]['auc_target']:.3f}")
    classifier = {}
    for rule in ("embedding", "embedding-density"):
        metrics = ROOT / "runs" / "standard" / "eval-rules" / "mobilenetv2" / rule / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            secs = m["sections"]
            classifier[rule] = {"official": m["official_score"],
                                "auc_source": float(np.mean([x["auc_source"] for x in secs])),
                                "auc_target": float(np.mean([x["auc_target"] for x in secs])),
                                "pauc": float(np.mean([x["pauc"] for x in secs])),
                                "machines": m["machines"]}
    record("normalisation", "bench/bench_normalisation.py",
           {"corpus": {"root": corpus_root(corpus)},
            "chosen_k": chosen, "choice_auc": choice_auc, "machines": machines, "rows": rows,
            "classifier": classifier})


if __name__ == "__main__":
    main()
