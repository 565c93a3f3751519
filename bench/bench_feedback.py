"""What false-alarm feedback does (issue 40; docs/agent.md "Feedback: how the bank and
threshold change"), on the standard corpus with the default detector's bundles.

Per machine type and section: every test clip is scored through the agent's own scorer
(agent/model/scorer.py, the bundle's first int8 or float artifact), keeping each clip's bank
statistics as the feedback store keeps an interval's. The normal test clips scoring above
the bundle's threshold are the false alarms; half of them (a fixed seed) are written to a
feedback store by the store's own code (agent/sinks/recent.py) and marked normal through
``mark_normal`` (agent/operator/feedback.py: the overlay; the threshold is kept), and the
rule and threshold a daemon would then use come from ``live_state``. Reported, before and
after: the fraction of the other half (held back) still above the threshold, the
false-alarm rate over all normal test clips, the anomaly AUC, the fraction of anomalous
clips above the threshold, and how many clips not fed back score higher after (none
should: the machine's own rows keep their densities).

    .venv/bin/python bench/bench_feedback.py [--corpus corpora/standard]
                                             [--bundles runs/new-default/bundles]

Writes bench/results/feedback.json; bench/report.py puts it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, corpus_root, record  # noqa: E402

SEED = 40


def _rel(path: Path) -> str:
    for p in (path.absolute(), path.resolve()):
        if p.is_relative_to(ROOT):
            return str(p.relative_to(ROOT))
    return str(path)


def score_clips(bundle, section: int, feats: list[np.ndarray]):
    """(scores, statistics per clip) through the agent's scorer of ``section``."""
    from harken.agent.features import windows
    from harken.agent.model.factory import make_scorer
    scorer = make_scorer(bundle, section)
    scores, stats = np.empty(len(feats)), []
    for i, f in enumerate(feats):
        ev = scorer.evidence(windows(f, bundle.spec))
        scores[i] = scorer.reduce(ev)
        stats.append(scorer.statistics(ev))
    return scores, stats


def feed_back(bundle_dir: Path, bundle, section: int, stats: list[dict], folder: Path):
    """The clips' statistics through the store and ``mark_normal``: (rule, threshold) that
    ``live_state`` then gives, and mark_normal's result."""
    from harken.agent.config import load_config
    from harken.agent.decision.records import IntervalResult
    from harken.agent.operator.feedback import live_state, mark_normal
    from harken.agent.sinks.recent import RecentStore, store_folder
    from harken.testkit.files import write_agent_config
    cfg = load_config(write_agent_config(
        folder / "agent.toml", agent={"machine": "m", "section": section,
                                      "state_dir": folder / "state"},
        model={"bundle": bundle_dir}, audio={"source": "file", "file": folder / "x.wav"},
        decision={"interval_s": 10}, output={"stdout": False}))
    t0 = time.time() - 3600
    store = RecentStore(store_folder(folder / "state", "m"), 24, 1000)
    for i, s in enumerate(stats):
        store.add(IntervalResult(t0 + 10 * i, i + 1, 0.0, bundle.threshold, True, 10.0,
                                 bundle.model_id, "bench", "ok", -30.0, 1, 0.0,
                                 statistics=s))
    store.close()
    out = mark_normal(cfg, start=t0, end=t0 + 10 * len(stats), operator="bench", via="cli")
    rule, threshold = live_state(cfg, bundle)
    return rule, threshold, out


def figures(scores: np.ndarray, normal: np.ndarray, held: np.ndarray, fed: np.ndarray,
            threshold: float) -> dict:
    """The figures of one section's clips; ``_not_fed`` ones leave the fed-back clips out
    (they are in the bank: each scores as a copy of itself, which flatters the figures)."""
    from sklearn.metrics import roc_auc_score
    rest = ~fed
    return {"held_back_above": float((scores[held] > threshold).mean()) if held.any() else None,
            "false_alarm_rate": float((scores[normal] > threshold).mean()),
            "false_alarm_rate_not_fed": float((scores[normal & rest] > threshold).mean()),
            "anomaly_auc": float(roc_auc_score(~normal, scores)),
            "anomaly_auc_not_fed": float(roc_auc_score(~normal[rest], scores[rest])),
            "anomalies_above": float((scores[~normal] > threshold).mean())}


def bench_machine(corpus: Path, bundle_dir: Path) -> list[dict]:
    from harken.agent.model.bundle import open_bundle
    from harken.training.data.corpus import scan
    from harken.training.data.windows import clip_features
    bundle = open_bundle(bundle_dir)
    clips = scan(corpus, [bundle.machine], "test")
    feats = clip_features(clips, bundle.spec, progress=False)
    rows = []
    for section in bundle.sections:
        idx = [i for i, c in enumerate(clips) if c.section == section]
        scores, stats = score_clips(bundle, section, [feats[i] for i in idx])
        normal = np.array([not clips[i].is_anomaly for i in idx])
        threshold = float(bundle.threshold)
        alarms = np.nonzero(normal & (scores > threshold))[0]
        rng = np.random.default_rng(SEED)
        alarms = rng.permutation(alarms)
        fed, held_idx = np.sort(alarms[:len(alarms) // 2]), alarms[len(alarms) // 2:]
        held, fed_mask = np.zeros(len(idx), bool), np.zeros(len(idx), bool)
        held[held_idx], fed_mask[fed] = True, True
        row = {"machine": bundle.machine, "section": section, "normal_clips": int(normal.sum()),
               "anomalous_clips": int((~normal).sum()), "false_alarms": int(len(alarms)),
               "fed_back": int(len(fed)), "threshold_before": threshold,
               "before": figures(scores, normal, held, fed_mask, threshold)}
        if len(fed):
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                rule, refitted, out = feed_back(bundle_dir, bundle, section,
                                                [stats[i] for i in fed], Path(d))
                row["feedback_s"] = time.perf_counter() - t
            names = list(stats[0])
            after = rule.score_statistics({k: np.stack([s[k] for s in stats]) for k in names})
            rose = (after > scores + 1e-9) & ~fed_mask
            row |= {"threshold_after": refitted, "rows_after": out["rows_after"],
                    "after": figures(after, normal, held, fed_mask, refitted),
                    "scores_rose_not_fed": int(rose.sum())}
        rows.append(row)
        print(f"{bundle.machine} s{section}: {len(alarms)} false alarms, {len(fed)} fed back; "
              f"held back above: {row['before']['held_back_above']} -> "
              f"{row.get('after', {}).get('held_back_above')}; threshold "
              f"{threshold:.3f} -> {row.get('threshold_after', threshold):.3f}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "standard")
    ap.add_argument("--bundles", type=Path, default=ROOT / "runs" / "new-default" / "bundles")
    args = ap.parse_args()
    if not (args.corpus / "corpus.json").is_file():
        sys.exit(f"{args.corpus}: no corpus; make it with 'harken-train synth --size standard "
                 f"--out {args.corpus}'")
    bundles = sorted(p for p in args.bundles.iterdir() if (p / "manifest.json").is_file()) \
        if args.bundles.is_dir() else []
    if not bundles:
        sys.exit(f"{args.bundles}: no bundles; export the default detector's (bench/bench_unseen.py "
                 f"writes them under runs/bench-unseen/standard/bundles)")
    t = time.perf_counter()
    rows = [r for b in bundles for r in bench_machine(args.corpus, b)]
    path = record("feedback", "bench/bench_feedback.py", {
        "corpus": corpus_root(args.corpus), "bundles": _rel(args.bundles), "seed": SEED,
        "rows": rows, "seconds": time.perf_counter() - t})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
