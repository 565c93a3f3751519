"""Domain-robust scoring: baseline-knn's distance with and without local density
normalisation (agent/rules/density.py), on the standard synthetic corpus.

The clip vectors are computed once per machine type; each rule scores the same vectors,
so the rows differ only in the score rule. The default neighbourhood (k = 4) was fixed
before this table from the size of a DCASE target domain (10 clips per section), not
chosen from it: the other k rows show how sensitive the rule is, and must not be used to
pick k (that would tune on test clips).

    .venv/bin/python bench/bench_normalisation.py [--corpus corpora/standard]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, record  # noqa: E402

SENSITIVITY_K = (1, 2, 4, 8, 16)


def main() -> None:
    from harken.agent.rules.density import DEFAULT_K
    from harken.training.baselines import KnnBaseline
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results
    from harken.training.metrics import machine_hmean, official_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "standard")
    args = ap.parse_args()
    if not (args.corpus / "corpus.json").is_file():
        sys.exit(f"{args.corpus}: no corpus; make it with "
                 f"'harken-train synth --size standard --out {args.corpus}'")
    variants = {"knn": ("knn", DEFAULT_K)} | {
        f"knn-density k={k}": ("knn-density", k) for k in SENSITIVITY_K}
    results: dict[str, list] = {v: [] for v in variants}
    machines = machine_types(args.corpus)
    for machine in machines:
        train, test = scan(args.corpus, [machine], "train"), scan(args.corpus, [machine], "test")
        print(f"{machine}: {len(train)} training clips, {len(test)} test clips", flush=True)
        model = KnnBaseline()
        model.fit_vectors(model.vectors(train), [c.section for c in train])
        test_vectors = model.vectors(test)
        for name, (rule, k) in variants.items():
            model.density_k = k
            model._fit_densities()
            scores = model.score_vectors(test_vectors, [c.section for c in test], rule)
            results[name] += section_results(machine, test, scores)
    rows = []
    for name, res in results.items():
        rows.append({"name": name, "default": name in ("knn", f"knn-density k={DEFAULT_K}"),
                     "official": official_score(res),
                     "auc_source": float(np.mean([r.auc_source for r in res])),
                     "auc_target": float(np.mean([r.auc_target for r in res])),
                     "pauc": float(np.mean([r.pauc for r in res])),
                     "machines": {m: machine_hmean(res, m) for m in machines}})
        print(f"{name:<22} official {rows[-1]['official']:.4f}  AUC source "
              f"{rows[-1]['auc_source']:.3f}  target {rows[-1]['auc_target']:.3f}")
    corpus = args.corpus.resolve()
    record("normalisation", "bench/bench_normalisation.py",
           {"corpus": {"root": str(corpus.relative_to(ROOT)) if corpus.is_relative_to(ROOT)
                       else str(corpus)},
            "default_k": DEFAULT_K, "machines": machines, "rows": rows})


if __name__ == "__main__":
    main()
