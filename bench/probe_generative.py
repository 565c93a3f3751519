"""Why do AEGAN-AD's reconstruction rules (and GMGAN's rules) score below a random score? Evidence
from one trained run on the standard corpus, test labels used only to measure.

For every score rule of the run, per section: AUC on each domain, and the AUC of the
negated score (a rule that only points the wrong way would score 1 - AUC there). Then
what the reconstruction error follows: its rank correlation, over the normal test clips,
with the clip's spectral contrast (mean over frames of the standard deviation of the
log-mel across bands: deep valleys between tonal lines give high contrast) and its level
(mean log-mel), how well the score alone separates target-domain normal clips from
source-domain ones, and how anomalous and normal clips differ in contrast and level.

    .venv/bin/python bench/probe_generative.py runs/standard/aegan-ad/bearing
    .venv/bin/python bench/probe_generative.py runs/standard/gmgan/bearing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, record  # noqa: E402


def main() -> None:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from harken.training.data.corpus import scan
    from harken.training.data.features import clip_logmels
    from harken.training.method import ScoresAllRules
    from harken.training.methods import method_class
    from harken.training.runs import read_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "standard")
    args = ap.parse_args()
    info = read_run(args.run)
    model = method_class(info.method).load(args.run)
    test = scan(args.corpus, [info.machine], "test")
    scores = model.score_all(test, progress=True) if isinstance(model, ScoresAllRules) else \
        {r: model.score(test, progress=True, rule=r) for r in model.score_rules}
    logmels = clip_logmels(test, model.spec, progress=True)
    contrast = np.array([m.std(axis=1).mean() for m in logmels])
    level = np.array([m.mean() for m in logmels])
    y = np.array([c.is_anomaly for c in test])
    domain = np.array([c.domain for c in test])
    section = np.array([c.section for c in test])
    rows = {}
    for rule, s in scores.items():
        s = np.asarray(s, dtype=float)
        per = {}
        for d in ("source", "target"):
            aucs = []
            for sec in np.unique(section):
                m = (section == sec) & ((domain == d) | y)
                aucs.append(roc_auc_score(y[m], s[m]))
            per[d] = float(np.mean(aucs))
        normal = ~y
        rows[rule] = {
            "auc_source": per["source"], "auc_target": per["target"],
            "rho_contrast_normals": float(spearmanr(s[normal], contrast[normal]).statistic),
            "rho_level_normals": float(spearmanr(s[normal], level[normal]).statistic),
            "normal_target_over_source": float(np.median(s[normal & (domain == "target")])
                                               / np.median(s[normal & (domain == "source")])),
            # how well the score alone tells target-domain normal clips from source-domain
            # ones (0.5: blind to the domain; above: target normals look anomalous); unlike
            # the ratio of medians it holds for scores that can be negative (energies)
            "auc_target_vs_source_normals": float(roc_auc_score(
                domain[normal] == "target", s[normal]))}
        print(f"{rule:<8} AUC source {per['source']:.3f} target {per['target']:.3f}  "
              f"rho(contrast) {rows[rule]['rho_contrast_normals']:+.2f}  "
              f"rho(level) {rows[rule]['rho_level_normals']:+.2f}")
    clips = {"contrast_auc_anomaly_vs_normal": float(roc_auc_score(y, contrast)),
             "level_auc_anomaly_vs_normal": float(roc_auc_score(y, level)),
             "contrast_normal_median": float(np.median(contrast[~y])),
             "contrast_anomaly_median": float(np.median(contrast[y]))}
    print(clips)
    record(f"probe-{info.method}-{info.machine}", "bench/probe_generative.py",
           {"run": str(args.run), "method": info.method, "machine": info.machine,
            "rules": rows, "clips": clips})


if __name__ == "__main__":
    main()
