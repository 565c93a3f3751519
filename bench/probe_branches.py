"""spectral-knn's branches on a corpus of TUNING (or validation) types: the official score
of every score variant, and of the cepstrum branch over a few quefrency ranges (the range
is chosen on the tuning types: docs/architecture.md "spectral-knn"). One feature pass per
machine type; the same functions as ``harken-train train``/``evaluate --score all``.
Never run it on the test types (issue 39's protocol).

    .venv/bin/python bench/probe_branches.py corpora/standard [--machines fan valve]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import record  # noqa: E402


CHOSEN = "0.5-8ms"           # agent/features/cepstrum.py QUEFRENCY, chosen on the tuning types
RANGES = {CHOSEN: (8, 129), "1-32ms": (16, 513), "1-16ms": (16, 257), "2-32ms": (32, 513)}


def main() -> None:
    from harken.agent.features import cepstrum
    from harken.training.data.corpus import scan
    from harken.training.data.features import clip_logmels
    from harken.training.evaluate import section_results
    from harken.training.metrics import official_score
    from harken.training.spectral_knn import VARIANT_WEIGHTS, SpectralKnn, clip_statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--machines", nargs="*")
    args = ap.parse_args()
    root = Path(args.corpus)
    machines = args.machines or sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    results: dict[str, list] = {}
    t0 = time.time()
    for m in machines:
        train, test = scan(root, [m], "train"), scan(root, [m], "test")
        model = SpectralKnn()
        spec = model.spec
        lm_train = clip_logmels(train, spec, False)
        lm_test = clip_logmels(test, spec, False)
        per_range = {}
        for name, q in RANGES.items():
            cepstrum.QUEFRENCY = q
            branches = None if name == CHOSEN else ("cepstrum",)
            kw = {} if branches is None else {"branches": branches}
            per_range[name] = (clip_statistics(lm_train, spec, spec.n_mels, **kw),
                               clip_statistics(lm_test, spec, spec.n_mels, **kw))
        cepstrum.QUEFRENCY = RANGES[CHOSEN]
        vtrain, vtest = per_range[CHOSEN]
        model.fit(vtrain, [c.section for c in train])
        sections = [c.section for c in test]
        for v in VARIANT_WEIGHTS:
            s = model.score_vectors(vtest, sections, v)
            results.setdefault(v, []).extend(section_results(m, test, s))
        for name, (a, b) in per_range.items():
            if name == CHOSEN:
                continue
            model.fit({**vtrain, "cepstrum": a["cepstrum"]}, [c.section for c in train])
            s = model.score_vectors({**vtest, "cepstrum": b["cepstrum"]}, sections, "cepstrum")
            results.setdefault(f"cepstrum@{name}", []).extend(section_results(m, test, s))
        print(f"{m}: done ({time.time() - t0:.0f} s)", flush=True)
    results[f"cepstrum@{CHOSEN}"] = results["cepstrum"]
    table = {v: round(official_score(r), 4) for v, r in results.items()}
    per_machine = {v: {m: round(official_score([x for x in r if x.machine == m]), 4)
                       for m in machines} for v, r in results.items()}
    for v, s in table.items():
        print(f"{v:<20} {s:.4f}  " + "  ".join(f"{m} {per_machine[v][m]:.3f}" for m in machines))
    path = record(f"branches-{root.name}", "python bench/probe_branches.py " + " ".join(sys.argv[1:]),
                  {"corpus": str(root), "machines": machines, "official": table,
                   "per_machine": per_machine, "seconds": round(time.time() - t0)})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
