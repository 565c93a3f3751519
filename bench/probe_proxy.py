"""Does the label-free proxy rank spectral-knn's variants as the real test clips do?

For each corpus and machine type: the proxy score of every variant (training clips only:
held-out normals against faint pseudo-faults mixed into them, training/branch_choice.py)
beside the real official score of that variant (from ``harken-train evaluate --score all``
metrics.json files given with ``--metrics``, or computed here with ``--compute`` from the
corpus's labelled test clips), and the Spearman and Kendall rank correlations between the
two rankings per machine type and overall (rank correlation of the variants after taking
each machine type's mean out). Also the real score of the variant the proxy would choose,
beside the default's and the best's (what choosing by the proxy gains or costs).

The issue 39 protocol: run it yourself on tuning types (corpora/standard) and validation
types; the test types are run once, at the end, after every setting is frozen.

    .venv/bin/python bench/probe_proxy.py --corpus corpora/standard \\
        --metrics runs/standard/spectral-knn/eval/*/metrics.json
    .venv/bin/python bench/probe_proxy.py --corpus corpora/validation --compute \\
        --name probe-proxy-validation
    # how the pseudo-fault levels were set (tuning types only):
    .venv/bin/python bench/probe_proxy.py --corpus corpora/standard \\
        --sweep -30 -25 -20 -15 -10 -5 0 --name probe-proxy-levels
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import corpus_root, positive, record  # noqa: E402

DEFAULT = "fused"


def read_metrics(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """variant -> machine -> {"score": hmean, "sections": [section dicts]} from evaluate's
    metrics.json files; the variant is read from ``methods`` ("spectral-knn (mel score)"),
    else the folder's name."""
    out: dict[str, dict[str, dict]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
            machines, methods = data["machines"], data.get("methods", {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"{path}: not an evaluate metrics.json ({exc})")
        for machine, score in machines.items():
            m = re.search(r"\((\S+) score\)", methods.get(machine, ""))
            variant = m.group(1) if m else path.parent.name
            out.setdefault(variant, {})[machine] = {
                "score": float(score),
                "sections": [s for s in data.get("sections", []) if s.get("machine") == machine]}
    return out


def computed_real(corpus: Path, machine: str, weights: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each variant's real official score on the corpus's labelled test clips: spectral-knn
    fitted on every training clip, as ``harken-train train`` does."""
    from harken.agent.features import preset
    from harken.training.branch_choice import component_matrix, statistics_of
    from harken.training.data.corpus import load, scan
    from harken.training.evaluate import section_results
    from harken.training.metrics import machine_hmean
    from harken.training.spectral_knn import SpectralKnn

    spec = preset("spectral-knn")
    train, test = scan(corpus, [machine], split="train"), scan(corpus, [machine], split="test")
    model = SpectralKnn()
    model.fit(statistics_of([load(c, spec.sample_rate) for c in train], spec),
              [c.section for c in train])
    comp = component_matrix(model, statistics_of([load(c, spec.sample_rate) for c in test], spec),
                            [c.section for c in test])
    out = {}
    for name, w in weights.items():
        results = section_results(machine, test, comp @ w / w.sum())
        out[name] = {"score": machine_hmean(results, machine),
                     "sections": [r.to_dict() for r in results]}
    return out


def level_sweep(corpus: Path, machines: list[str], levels: list[float], seed: int) -> dict:
    """AUC of the default variant for each pseudo-fault kind alone at each fixed level:
    held-out fold 0 of each section against copies of it with that kind at that level (how
    fault_proxy.ANR_DB was set, on tuning types only)."""
    from sklearn.metrics import roc_auc_score

    from harken.agent.features import preset
    from harken.training.branch_choice import assign_folds, component_matrix, statistics_of
    from harken.training.data.corpus import load, scan
    from harken.training.data.fault_proxy import FAULT_KINDS, mix_fault
    from harken.training.spectral_knn import VARIANT_WEIGHTS, SpectralKnn

    spec = preset("spectral-knn")
    w = np.asarray(VARIANT_WEIGHTS[DEFAULT], float)
    out: dict[str, dict[str, list[float]]] = {}
    for machine in machines:
        clips = scan(corpus, [machine], split="train")
        audio = [load(c, spec.sample_rate) for c in clips]
        sections = np.asarray([c.section for c in clips])
        held = assign_folds(sections, [c.domain for c in clips], seed=seed) == 0
        vectors = statistics_of(audio, spec)
        model = SpectralKnn()
        model.fit({b: v[~held] for b, v in vectors.items()}, sections[~held])
        normal = component_matrix(model, {b: v[held] for b, v in vectors.items()},
                                  sections[held]) @ w / w.sum()
        out[machine] = {}
        for kind in FAULT_KINDS:
            row = []
            for anr in levels:
                faulty = [mix_fault(audio[i], spec.sample_rate, np.random.default_rng([seed, i]),
                                    kind, anr)[0] for i in np.flatnonzero(held)]
                score = component_matrix(model, statistics_of(faulty, spec),
                                         sections[held]) @ w / w.sum()
                row.append(round(float(roc_auc_score(
                    np.r_[np.zeros(len(normal)), np.ones(len(score))], np.r_[normal, score])), 3))
            out[machine][kind] = row
            print(f"{machine:<10} {kind:<11} " + " ".join(f"{a:.2f}" for a in row), flush=True)
    return out


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def correlations(proxy: list[float], real: list[float]) -> dict[str, float | None]:
    import scipy.stats
    if len(proxy) < 2 or np.ptp(proxy) == 0 or np.ptp(real) == 0:
        return {"spearman": None, "kendall": None}
    return {"spearman": float(scipy.stats.spearmanr(proxy, real).statistic),
            "kendall": float(scipy.stats.kendalltau(proxy, real).statistic)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, action="append", required=True,
                   help="a corpus folder (repeat for several)")
    p.add_argument("--metrics", type=Path, nargs="+", default=[],
                   help="evaluate --score all metrics.json files (one per variant)")
    p.add_argument("--compute", action="store_true",
                   help="compute the real scores from the corpus's test clips instead")
    p.add_argument("--variants", nargs="+", help="spectral-knn variants (default: all that fit "
                   "the branches)")
    p.add_argument("--machines", nargs="+", help="machine types (default: all of each corpus)")
    p.add_argument("--rounds", type=positive, default=5, help="folds held out in turn (1-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="probe-proxy", help="bench/results/NAME.json")
    p.add_argument("--no-balance", action="store_true",
                   help="count every held-out clip once (default: source and target equally)")
    p.add_argument("--sweep", type=float, nargs="+", metavar="DB",
                   help="instead: each pseudo-fault kind's AUC (default variant) at these "
                   "fixed levels, e.g. --sweep -30 -25 -20 -15 -10 -5 0")
    args = p.parse_args()
    if args.sweep:
        from harken.training.data.corpus import machine_types
        started = time.time()
        sweep = {corpus_root(c): level_sweep(c, args.machines or machine_types(c), args.sweep,
                                             args.seed) for c in args.corpus}
        path = record(args.name, "bench/probe_proxy.py " + " ".join(sys.argv[1:]),
                      {"variant": DEFAULT, "levels_db": args.sweep, "auc": sweep,
                       "seconds": round(time.time() - started, 1)})
        print(f"wrote {path}")
        return 0
    if not args.metrics and not args.compute:
        p.error("give --metrics files or --compute for the real scores")
    if args.rounds > 5:
        p.error(f"--rounds {args.rounds}: expected 1..5 (the folds)")

    from harken.common.errors import HarkenError
    from harken.training.branch_choice import choose_variant, default_candidates
    from harken.training.data.corpus import machine_types, scan
    from harken.training.spectral_knn import VARIANT_WEIGHTS

    real_from_files = read_metrics(args.metrics)
    known = default_candidates(["mel", "spectrum"]) | {k: tuple(v) for k, v in VARIANT_WEIGHTS.items()}
    variants = args.variants or list(real_from_files) or list(VARIANT_WEIGHTS)
    variants = sorted(variants, key=lambda v: v != DEFAULT)     # ties go to the default
    unknown = [v for v in variants if v not in known]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {sorted(known)}")
    candidates = {v: known[v] for v in variants}
    started = time.time()
    rows, per_machine = [], []
    for corpus in args.corpus:
        if not corpus.is_dir():
            p.error(f"--corpus {corpus}: no such folder")
        for machine in args.machines or machine_types(corpus):
            try:
                choice = choose_variant(scan(corpus, [machine], split="train"), candidates,
                                        seed=args.seed, rounds=args.rounds,
                                        balance=not args.no_balance)
                real = computed_real(corpus, machine, {v: np.asarray(w, float)
                                                       for v, w in candidates.items()}) \
                    if args.compute else {v: real_from_files[v][machine] for v in variants
                                          if machine in real_from_files.get(v, {})}
            except HarkenError as exc:
                sys.exit(f"{corpus}/{machine}: {exc}")
            have = [v for v in variants if v in real]
            proxy = [choice.row(v).proxy for v in have]
            actual = [real[v]["score"] for v in have]
            best = have[int(np.argmax(actual))] if have else None
            entry = {"corpus": corpus_root(corpus), "machine": machine, "chosen": choice.chosen,
                     "proxy": {v: round(choice.row(v).proxy, 4) for v in variants},
                     "real": {v: round(real[v]["score"], 4) for v in have},
                     "real_of_chosen": round(real[choice.chosen]["score"], 4)
                     if choice.chosen in real else None,
                     "real_of_default": round(real[DEFAULT]["score"], 4) if DEFAULT in real else None,
                     "best_real": best, **correlations(proxy, actual),
                     "proxy_by_kind": {v: choice.row(v).by_kind for v in variants}}
            per_machine.append(entry)
            rows.append((entry, have, proxy, actual))
    # overall: every machine's variants, each machine's mean taken out of both
    centred = [(np.asarray(px) - np.mean(px), np.asarray(ac) - np.mean(ac))
               for _, _, px, ac in rows if len(px) > 1]
    overall = correlations(list(np.concatenate([c[0] for c in centred])) if centred else [],
                           list(np.concatenate([c[1] for c in centred])) if centred else [])
    rhos = [e["spearman"] for e in per_machine if e["spearman"] is not None]
    overall["mean_spearman_per_machine"] = float(np.mean(rhos)) if rhos else None
    chosen = [e for e in per_machine if e["real_of_chosen"] is not None
              and e["real_of_default"] is not None]
    overall["mean_real_chosen_minus_default"] = float(np.mean(
        [e["real_of_chosen"] - e["real_of_default"] for e in chosen])) if chosen else None
    seconds = round(time.time() - started, 1)

    print(f"{'machine':<14} {'variant':<10} {'proxy':>6} {'real':>6}")
    for e in per_machine:
        for v in variants:
            mark = " chosen" if v == e["chosen"] else ""
            real = e["real"].get(v)
            print(f"{e['machine']:<14} {v:<10} {e['proxy'][v]:6.3f} "
                  f"{'-' if real is None else f'{real:6.3f}':>6}{mark}")
        print(f"{e['machine']:<14} spearman {fmt(e['spearman'])} kendall {fmt(e['kendall'])}")
    print(f"overall: spearman {fmt(overall['spearman'])} kendall {fmt(overall['kendall'])} "
          f"mean per-machine spearman {fmt(overall['mean_spearman_per_machine'])}; real score "
          f"of the chosen minus the default's, mean {fmt(overall['mean_real_chosen_minus_default'])}"
          f" ({seconds} s)")
    path = record(args.name, "bench/probe_proxy.py " + " ".join(sys.argv[1:]),
                  {"variants": {v: list(candidates[v]) for v in variants},
                   "real_from": "computed" if args.compute else [str(m) for m in args.metrics],
                   "rounds": args.rounds, "seed": args.seed, "seconds": seconds,
                   "balance": not args.no_balance,
                   "machines": per_machine, "overall": overall})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
