"""Detection on machine types nobody tuned for: the protocol of docs/generalisation.md.

Four corpora, each with its role (docs/corpus.md has the machine types):

* ``standard``    tuning types (every setting was chosen here): reported, never chosen on;
* ``validation``  validation types: the default's choices (variant, general model) are made here;
* ``unseen``      test types: reported only, after every choice was committed;
* ``unseen-real`` the test types with real recorded backgrounds and events: reported only.

Per corpus and machine type, as a new user would: the default method trained with its
default settings; every test clip scored with every score rule by the training code; the
default bundle exported and every test clip scored through the agent's own scorer
(``harken-export verify``: that is the row the targets are judged on); baseline-knn beside it
with each of its rules. A missing corpus is made first with ``--make`` (``harken-train synth``;
``unseen-real`` needs ``scripts/fetch-sounds`` once).

    .venv/bin/python bench/bench_unseen.py [--corpora standard validation unseen unseen-real]
                                           [--make]

Writes bench/results/unseen.json; bench/report.py turns it into docs/benchmarks.md and the
"Machine types nobody tuned for" section of docs/results.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, bundle_row, corpus_root, detection_summary,  # noqa: E402
                           export_and_verify, record)

# corpus name -> (role, harken-train synth arguments that make it)
CORPORA = {
    "standard": ("tuning", ["--size", "standard"]),
    "validation": ("validation", ["--size", "validation"]),
    "unseen": ("test", ["--size", "unseen"]),
    "unseen-real": ("test", ["--size", "unseen", "--real-sounds", "corpora/real-sounds"]),
}
# Fixed in advance (issue 39), judged on the exported default bundle through the agent:
# official and mean target AUC on the test types; no test type below baseline-knn's
# knn-fused rule (the strongest floor rule, fixed before any test number was seen); the
# tuning corpus not below the 0.7327 the default scored there before this work.
TARGETS = {"unseen_official": 0.72, "unseen_auc_target": 0.68, "standard_official": 0.7327}
FLOOR_RULE = "knn-fused"
RUNS = ROOT / "runs" / "bench-unseen"


def make_corpus(name: str, folder: Path) -> None:
    args = CORPORA[name][1]
    if "--real-sounds" in args:
        sounds = ROOT / args[args.index("--real-sounds") + 1]
        if not sounds.is_dir():
            sys.exit(f"{sounds}: no real recordings; run scripts/fetch-sounds first")
    print(f"making {folder} (harken-train synth {' '.join(args)})", flush=True)
    subprocess.run([str(ROOT / ".venv" / "bin" / "harken-train"), "synth", *args, "--out",
                    str(folder), "--quiet"], check=True)


def evaluate_corpus(name: str, corpus: Path) -> dict:
    """Every row of one corpus (see the module docstring)."""
    from harken.training.data.corpus import machine_types, scan
    from harken.training.evaluate import section_results
    from harken.training.methods import DEFAULT_METHOD, make_method, method_class

    runs = RUNS / name
    shutil.rmtree(runs, ignore_errors=True)
    cls = method_class(DEFAULT_METHOD)
    per_rule: dict[str, list] = {}
    floor: dict[str, list] = {}
    artifacts: dict[str, dict[str, dict]] = {}
    train_s: dict[str, float] = {}
    choices: dict[str, object] = {}
    proxies: dict[str, dict] = {}
    machines = machine_types(corpus)
    default_artifact = default_rule = None
    settings: dict = {}
    for machine in machines:
        train, test = scan(corpus, [machine], "train"), scan(corpus, [machine], "test")
        run = runs / "runs" / machine
        t = time.perf_counter()
        make_method(DEFAULT_METHOD).train(train, run, progress=False)
        train_s[machine] = time.perf_counter() - t
        model = cls.load(run)
        default_rule, settings = model.default_rule, dict(model.info.params)
        if "chosen" in settings:
            choices[machine] = settings["chosen"]
        scored = model.score_all(test, progress=False)
        if "auto" not in scored:      # the label-free per-machine choice is always a row
            auto = make_method(DEFAULT_METHOD, overrides=["score=auto"])
            auto.train(train, runs / "auto" / machine, progress=False)
            auto = cls.load(runs / "auto" / machine)
            choices[machine] = auto.info.params["chosen"]
            proxies[machine] = auto.info.params["proxy"]
            scored["auto"] = auto.score(test, progress=False)
        else:
            proxies[machine] = settings["proxy"]
        for rule, scores in scored.items():
            per_rule.setdefault(rule, []).extend(section_results(machine, test, scores))
        baseline = make_method("baseline-knn")
        baseline.train(train, runs / "baseline-knn" / machine, progress=False)
        vectors = baseline.vectors(test, False)        # one pass over the clips, every rule
        for rule in baseline.score_rules:
            scores = baseline.score_vectors(vectors, [c.section for c in test], rule)
            floor.setdefault(rule, []).extend(section_results(machine, test, scores))
        bundle, checks = export_and_verify(run, runs / "bundles" / machine, corpus)
        for kind, figures in checks.items():
            artifacts.setdefault(kind, {})[machine] = figures
        default_artifact = bundle.artifact().kind
        print(f"{name}/{machine}: trained in {train_s[machine]:.1f} s; " + ", ".join(
            f"{a} {artifacts[a][machine]['official']:.4f}" for a in artifacts), flush=True)
    rows = [{"name": f"{DEFAULT_METHOD} [{r}]", "rule": r, **detection_summary(res)}
            for r, res in per_rule.items()]
    floors = [{"name": f"baseline-knn [{r}]", "rule": r, **detection_summary(res)}
              for r, res in floor.items()]
    bundles = [{**bundle_row(f"{DEFAULT_METHOD} bundle {kind}", by_machine), "artifact": kind,
                "default_artifact": kind == default_artifact}
               for kind, by_machine in artifacts.items()]
    return {"role": CORPORA[name][0], "root": corpus_root(corpus), "machines": machines,
            "method": DEFAULT_METHOD, "default_rule": default_rule, "settings": settings,
            "choices": choices, "rows": rows, "baseline": floors, "bundles": bundles,
            "train_s": train_s, "proxy_rank": proxy_rank(proxies, rows)}


def proxy_rank(proxies: dict[str, dict], rows: list[dict]) -> dict:
    """How well the label-free proxy's ranking of the variants (training clips only)
    predicts their real ranking on this corpus's test clips: Spearman's rho per machine type
    and over all (machine, variant) pairs, ranks taken within each machine type."""
    import numpy as np
    from scipy.stats import spearmanr
    real = {x["rule"]: x["machines"] for x in rows}
    out: dict[str, float | None] = {}
    pooled_p, pooled_r = [], []
    for machine, table in proxies.items():
        pairs = [(v["proxy"], real[v["variant"]][machine]) for v in table["variants"]
                 if v["variant"] in real and v["proxy"] is not None]
        if len(pairs) < 3:
            continue
        p, r = np.array(pairs).T
        out[machine] = float(spearmanr(p, r).statistic)
        pooled_p += list(np.argsort(np.argsort(p)))
        pooled_r += list(np.argsort(np.argsort(r)))
    out["all"] = float(spearmanr(pooled_p, pooled_r).statistic) if pooled_p else None
    return out


def judge(results: dict) -> dict:
    """The targets that the corpora present can be judged on (None: corpus not run)."""
    def device(name: str) -> dict | None:
        r = results.get(name)
        return None if r is None else next(b for b in r["bundles"] if b["default_artifact"])

    def floor(name: str) -> dict:
        return next(b for b in results[name]["baseline"] if b["rule"] == FLOOR_RULE)

    met: dict[str, bool | None] = {}
    d = device("unseen")
    met["unseen_official"] = None if d is None else d["official"] >= TARGETS["unseen_official"]
    met["unseen_auc_target"] = None if d is None else \
        d["auc_target"] >= TARGETS["unseen_auc_target"]
    met["unseen_no_type_below_baseline"] = None if d is None else all(
        d["machines"][m] > floor("unseen")["machines"][m] for m in d["machines"])
    d = device("unseen-real")
    met["unseen_real_above_baseline"] = None if d is None else \
        d["official"] > floor("unseen-real")["official"]
    d = device("standard")
    met["standard_official"] = None if d is None else \
        d["official"] >= TARGETS["standard_official"] - 5e-5
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    ap.add_argument("--make", action="store_true", help="synthesize a missing corpus first")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    previous = ROOT / "bench" / "results" / "unseen.json"
    if previous.is_file():       # corpora not asked for keep their earlier figures
        import json
        results = json.loads(previous.read_text()).get("corpora", {})
    for name in args.corpora:
        folder = ROOT / "corpora" / name
        if not (folder / "corpus.json").is_file():
            if not args.make:
                sys.exit(f"{folder}: no corpus; add --make to synthesize it")
            make_corpus(name, folder)
        results[name] = evaluate_corpus(name, folder)
    met = judge(results)
    for name, r in results.items():
        d = next(b for b in r["bundles"] if b["default_artifact"])
        f = next(b for b in r["baseline"] if b["rule"] == FLOOR_RULE)
        print(f"{name:<12} ({r['role']}): default bundle official {d['official']:.4f} "
              f"(AUC target {d['auc_target']:.3f}); baseline-knn [{FLOOR_RULE}] "
              f"{f['official']:.4f}")
    print("targets: " + ", ".join(f"{k} {'-' if v is None else 'met' if v else 'MISSED'}"
                                  for k, v in met.items()))
    path = record("unseen", "bench/bench_unseen.py", {"corpora": results, "targets": TARGETS,
                                                       "floor_rule": FLOOR_RULE, "met": met})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
