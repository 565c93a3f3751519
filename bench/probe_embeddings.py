"""What the section classifiers' embeddings can see, on training data only.

The classifiers (mobilenetv2, contrastive) trail baseline-knn on the standard corpus and
miss the additive broadband faults it finds (docs/results.md, "Which faults each method
catches"). Is that the score rule's fault (the final GAMP vector, k-means bank), or does the
trained network not carry the information? This probe swaps the embedding under the
deployed embedding rule (training/classifier.py ``_fit_bank`` and agent/model/rules/, unchanged)
for the GAMP vector of every stage of the network, and for baseline-knn's clip vector (mean
and std of the log-mel frames), and measures how well each separates normal training clips
from pseudo-anomalous versions of themselves (another machine type or pink noise mixed in,
training/data/pseudo_anomalies.py). Five folds per (section, domain): the bank is fitted on
four, the fifth is scored, normal and mixed. No test clip is read.

    .venv/bin/python bench/probe_embeddings.py [--methods mobilenetv2 contrastive]
    # the dual-input runs: each half of the embedding instead of each stage
    .venv/bin/python bench/probe_embeddings.py --methods mobilenetv2-dual --name probe-dual
    # any classifier runs, e.g. trained with other settings (not rendered in the docs):
    .venv/bin/python bench/probe_embeddings.py --runs DIR --methods NAME --name probe-NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ROOT, record  # noqa: E402

RUNS = ROOT / "runs" / "standard"
LDN_ROW = "deployed, embedding-density rule"
ANR_RANGES = {"-30..-10 dB": (-30.0, -10.0), "-20..0 dB": (-20.0, 0.0)}


def stage_ends() -> dict[str, int]:
    """Index in ``MobileNetV2.features`` of the last module of each stage: the stem (conv,
    BN, ReLU6), each group of inverted residual blocks of the paper's table, the final 1x1
    conv (its ReLU6: the GAMP input the deployed rule uses)."""
    from harken.training.models.mobilenetv2 import INVERTED_RESIDUAL_SETTING
    ends, at = {"stem": 2}, 2
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        at += n
        ends[f"blocks c={c}"] = at
    ends["final 1x1 conv (deployed)"] = at + 3
    return ends


def band_statistics(h):
    """Frequency-preserving pooling: mean and std over time of every (channel, frequency
    row) of a (batch, channels, freq, time) map, flattened: what GAMP throws away (where in
    frequency a channel fires) is kept, as baseline-knn's clip vector keeps it per band."""
    return __import__("torch").cat([h.mean(dim=3), h.std(dim=3)], dim=2).flatten(1)


def stage_embeddings(method, feats: list[np.ndarray], bands: bool = False
                     ) -> dict[str, np.ndarray]:
    """Clip-mean GAMP (mean + max over frequency and time) of every stage's output; with
    ``bands`` also each stage's band statistics (rows '<stage> per band')."""
    import torch

    from harken.training.data.windows import as_images, stack_windows
    from harken.training.torch_method import batched
    name_at = {end: name for name, end in stage_ends().items()}
    x, owner = stack_windows(feats, method.spec)
    images, net = as_images(x), method.model.eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in name_at.values()}
    with torch.no_grad():
        for idx in batched(len(images), 256):
            h = net.standardise(images[idx])
            for i, layer in enumerate(net.cnn.features):
                h = layer(h)
                if i in name_at:
                    parts[name_at[i]].append((h.mean(dim=(2, 3)) + h.amax(dim=(2, 3))).numpy())
                    if bands:
                        parts.setdefault(f"{name_at[i]} per band", []).append(
                            band_statistics(h).numpy())
    return clip_means(parts, owner, len(feats))


def clip_means(parts: dict[str, list[np.ndarray]], owner: np.ndarray, n_clips: int
               ) -> dict[str, np.ndarray]:
    """Per embedding name, each clip's mean over its windows (batches joined first)."""
    out = {}
    for name, p in parts.items():
        e = np.concatenate(p).astype(np.float64)
        out[name] = np.stack([e[owner == i].mean(axis=0) for i in range(n_clips)])
    return out


def dual_embeddings(method, feats: list[np.ndarray], bands: bool = False
                    ) -> dict[str, np.ndarray]:
    """Clip-mean embedding of a dual-input run (mobilenetv2-dual), whole and by half: the
    CNN's projected GAMP vector and the spectrum branch's vector."""
    import torch

    from harken.training.data.windows import as_images, stack_windows
    from harken.training.torch_method import batched
    x, owner = stack_windows(feats, method.spec)
    images, net = as_images(x), method.model.eval()
    halves: dict[str, list[np.ndarray]] = {"CNN half": [], "spectrum half": []}
    with torch.no_grad():
        for idx in batched(len(images), 256):
            (_, e_cnn), (_, e_spec) = net.branches(images[idx])
            halves["CNN half"].append(e_cnn.numpy())
            halves["spectrum half"].append(e_spec.numpy())
    out = clip_means(halves, owner, len(feats))
    out["both halves (deployed)"] = np.concatenate([out["CNN half"], out["spectrum half"]], 1)
    return out


def folds_of(clips, k: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(clips), int)
    for key in sorted({(c.section, c.domain) for c in clips}):
        idx = [i for i, c in enumerate(clips) if (c.section, c.domain) == key]
        fold[idx] = rng.permutation(len(idx)) % k
    return fold


def pseudo_aucs(method, clips, normal: np.ndarray, mixed: dict[str, np.ndarray],
                fold: np.ndarray, rule: str = "embedding") -> dict[str, float]:
    """AUC of an embedding rule (the per-domain scale by default, or ``embedding-density``),
    bank cross-fitted on the normal clips, normal vs each set of mixed clips (one bank per
    fold serves every set)."""
    from sklearn.metrics import roc_auc_score
    n_scores, p_scores = [], {label: [] for label in mixed}
    for f in np.unique(fold):
        fit, held = np.where(fold != f)[0], np.where(fold == f)[0]
        method._fit_bank(normal[fit], [clips[i] for i in fit])
        held_clips = [clips[i] for i in held]
        none = [None] * len(held)
        n_scores.append(method._rule_scores(none, normal[held], held_clips, rule))
        for label, emb in mixed.items():
            p_scores[label].append(method._rule_scores(none, emb[held], held_clips, rule))
    n_s = np.concatenate(n_scores)
    out = {}
    for label, parts in p_scores.items():
        p_s = np.concatenate(parts)
        out[label] = float(roc_auc_score(np.r_[np.zeros(len(n_s)), np.ones(len(p_s))],
                                         np.r_[n_s, p_s]))
    return out


def probe(run: Path, bands: bool = False) -> dict:
    import torch

    from harken.training.baselines import clip_vector
    from harken.training.data.corpus import scan
    from harken.training.data.pseudo_anomalies import pseudo_anomalous, pseudo_anomaly_pool
    from harken.training.data.windows import clip_features
    from harken.training.methods import METHODS
    from harken.training.runs import read_run
    torch.set_num_threads(2)
    trained = read_run(run).method
    method = METHODS[trained].load(run)
    embed = dual_embeddings if method.spectrum_branch else stage_embeddings
    n_mels = method.spec.n_mels
    clips = scan(Path(method.info.corpus.root), [method.info.machine], split="train")
    feats = clip_features(clips, method.spec, progress=False)
    pool, _ = pseudo_anomaly_pool(clips, method.spec, seed=1, progress=False)
    normal = embed(method, feats, bands)
    normal["baseline-knn clip vector"] = np.stack([clip_vector(f[:, :n_mels]) for f in feats])
    mixed = {}
    for label, anr in ANR_RANGES.items():
        mixed_feats = pseudo_anomalous(feats, pool, method.spec, seed=2, anr_db=anr)
        mixed[label] = embed(method, mixed_feats, bands)
        mixed[label]["baseline-knn clip vector"] = np.stack([clip_vector(f[:, :n_mels])
                                                         for f in mixed_feats])
    fold = folds_of(clips)
    by_stage = {name: pseudo_aucs(method, clips, normal[name],
                                  {label: m[name] for label, m in mixed.items()}, fold)
                for name in normal}
    # the deployed embedding under the domain-agnostic rule too (LDN instead of the
    # per-domain scale): how a run's default score rule is chosen on training data
    deployed = next(name for name in normal if name.endswith("(deployed)"))
    by_stage[LDN_ROW] = pseudo_aucs(method, clips, normal[deployed],
                                    {label: m[deployed] for label, m in mixed.items()}, fold,
                                    "embedding-density")
    return {label: {name: aucs[label] for name, aucs in by_stage.items()}
            for label in ANR_RANGES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["mobilenetv2", "contrastive"],
                    help="folders under --runs holding one classifier run per machine type")
    ap.add_argument("--runs", type=Path, default=RUNS, help=f"default: {RUNS}")
    ap.add_argument("--bands", action="store_true",
                    help="also each stage's frequency-preserving pooling (band statistics)")
    ap.add_argument("--name", default="probe", help="bench/results/NAME.json (docs show 'probe')")
    args = ap.parse_args()
    results, missing = {}, []
    for method in args.methods:
        for run in sorted((args.runs / method).glob("*/run.json")):
            machine = run.parent.name
            print(f"{method} {machine} ...", flush=True)
            results.setdefault(method, {})[machine] = probe(run.parent, args.bands)
            for anr, aucs in results[method][machine].items():
                print(f"  mixed at {anr}: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
        if method not in results:
            missing.append(method)
    if missing:
        print(f"no runs for {', '.join(missing)} in {args.runs}: run scripts/make-results first")
    if results:
        rows = {m: list(next(iter(by_machine.values()))[next(iter(ANR_RANGES))])
                for m, by_machine in results.items()}          # each method's table rows
        record(args.name, " ".join(["bench/probe_embeddings.py", *sys.argv[1:]]),
               {"runs": str(args.runs), "anr_ranges": list(ANR_RANGES), "stages": rows,
                "band_stages": [f"{s} per band" for s in stage_ends()] if args.bands else [],
                "results": results})


if __name__ == "__main__":
    main()
