"""The general model's curve (docs/general-model.md): mobilenetv2-dual-general trained once
with 0 and more random machines (``--machines``, default 0,50,150,300) on the tuning types
of ``--train-data`` (corpora/standard), then, on ``--corpus``, enrolled on every section's
training clips and scored on its test clips, never trained on that corpus's types.

Enrollment and scoring are the site's own code: each clip is one report interval, its
mean embedding from the bundle's network (ONNX int8 through the agent's backend, and the
float network beside it), the bank fitted by agent/site/enroll_embedding.py
``fit_embedding_bank`` (what ``harken enroll`` writes) and the test clips scored by the
``embedding-density`` rule (what ``harken run`` scores with). Metrics: training/metrics.py
(DCASE official score, per type). Beside it on the same corpus: per-type baseline-knn,
trained and evaluated as ``harken-train train`` would.

Trained runs and bundles are cached under ``--cache`` (bench/.cache/general), keyed by
the settings and the training corpus, so evaluating on another corpus does not retrain.
Results: bench/results/<--name>.json (default general) and a table.

``--reach TEST_CORPUS``: the label-free check that the random family does not reach the
test types (randomised.py): for each clip, the clip statistics (per-band mean and spread
of the log-mel) standardised over the random clips; the distance of every clip of the
given corpus to its nearest random clip, beside the random clips' own nearest-neighbour
distances (held out one at a time) and the tuning types' (--train-data). No detection
score is computed for --reach.

    .venv/bin/python bench/bench_general.py --corpus corpora/validation
    .venv/bin/python bench/bench_general.py --corpus corpora/unseen --name general-unseen
    .venv/bin/python bench/bench_general.py --reach corpora/unseen --name general-reach
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (ROOT, baseline_knn_results, corpus_root,  # noqa: E402
                           detection_summary, record)

CACHE = ROOT / "bench" / ".cache" / "general"
CURVE = (0, 50, 150, 300)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="corpus to enroll on and evaluate")
    ap.add_argument("--train-data", type=Path, default=ROOT / "corpora" / "standard",
                    help="tuning-type corpus the models train on (default corpora/standard)")
    ap.add_argument("--machines", default=",".join(map(str, CURVE)),
                    help="numbers of random machines, comma-separated (default 0,50,150,300)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting for every model (harken-train general --set)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--name", default="general", help="bench/results/NAME.json")
    ap.add_argument("--int8", choices=("largest", "all", "none"), default="largest",
                    help="which models also run their int8 ONNX bundle (default: the largest)")
    ap.add_argument("--no-baseline", action="store_true", help="skip baseline-knn")
    ap.add_argument("--train-only", action="store_true", help="train and export, no evaluation")
    ap.add_argument("--reach", type=Path, metavar="CORPUS",
                    help="label-free reach check of the random family against CORPUS")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine two threads ran 10x slower)")
    args = ap.parse_args(argv)
    try:
        args.curve = sorted({int(x) for x in args.machines.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--machines {args.machines}: expected numbers separated by commas")
    if not args.curve or min(args.curve) < 0:
        ap.error(f"--machines {args.machines}: expected numbers of at least 0")
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: expected 1 or more")
    if not (args.corpus or args.reach or args.train_only):
        ap.error("give --corpus (evaluate), --reach (reach check) or --train-only")
    for path in [p for p in (args.corpus, args.reach, args.train_data) if p is not None]:
        if not path.is_dir():
            ap.error(f"{path}: no such corpus folder")
    return args


def model_dir(args: argparse.Namespace, n: int) -> Path:
    """The cache folder of the model with ``n`` random machines: keyed by the training
    corpus and every setting as it resolves (defaults included: a changed default is
    another model)."""
    from harken.training.config import config_dict, with_overrides
    from harken.training.data.corpus import scan
    from harken.training.general import GeneralConfig
    from harken.training.runs import corpus_fingerprint
    fp = corpus_fingerprint(scan(args.train_data, split="train"))
    cfg = config_dict(with_overrides(GeneralConfig(), [*args.set, f"random_machines={n}"]))
    cfg = {k: v for k, v in cfg.items() if k not in ("threads", "device")}
    key = hashlib.sha256(json.dumps([fp, cfg], sort_keys=True).encode()).hexdigest()[:10]
    return args.cache / f"rm{n}-{key}"


def trained(args: argparse.Namespace, n: int) -> tuple[Path, float]:
    """The cached run and bundle with ``n`` random machines (trained and exported when not
    there); the wall seconds its training took (as run.json records them)."""
    from harken.export.bundle import ExportOptions
    from harken.export.general_bundle import write_embedding_general_bundle
    from harken.training.general import train_general_run
    from harken.training.runs import read_run
    folder = model_dir(args, n)
    run, bundle = folder / "run", folder / "bundle"
    if not (run / "run.json").is_file():
        print(f"training {n} random machines -> {run}", flush=True)
        train_general_run(args.train_data, run, [*args.set, f"random_machines={n}",
                                                 f"threads={args.threads}"], force=True)
    if not (bundle / "manifest.json").is_file():
        import shutil
        shutil.rmtree(bundle, ignore_errors=True)
        write_embedding_general_bundle(run, bundle, ExportOptions(formats=("onnx",), precision="both"))
    info = read_run(run)
    return folder, float(info.training.seconds if info.training else float("nan"))


class Embedder:
    """A model's clip embeddings: the float network (torch, batched) and the bundle's int8
    ONNX through the agent's backend, window by window as on the device."""

    def __init__(self, folder: Path, int8: bool) -> None:
        from harken.agent.model.backends import open_backend
        from harken.agent.model.bundle import open_bundle
        from harken.training.general import GeneralMethod
        self.method = GeneralMethod.load(folder / "run")
        self.bundle = open_bundle(folder / "bundle")
        self.backend = None
        if int8:
            self.artifact = self.bundle.artifact("onnx-int8")
            self.backend = open_backend(self.artifact, 1)

    def __call__(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        from harken.agent.model.scorer import model_input
        out = {"float": self.method.embed_windows(windows).mean(axis=0)}
        if self.backend is not None:
            shape = self.artifact.input_shape
            out["int8"] = np.mean([self.backend.run(model_input(w, shape))["embedding"].reshape(-1)
                                   for w in windows], axis=0)
        return out


def _corpus_key(root: Path) -> str:
    from harken.training.data.corpus import scan
    from harken.training.runs import corpus_fingerprint
    return corpus_fingerprint(scan(root))[:12]


def _load_rows(path: Path) -> list | None:
    """Section results cached by an earlier evaluation of the same model on the same corpus."""
    from harken.training.metrics import SectionResult
    if not path.is_file():
        return None
    return [SectionResult(**{k: v for k, v in d.items() if k != "hmean"})
            for d in json.loads(path.read_text())]


def _save_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in rows]))


def evaluate(args: argparse.Namespace, models: dict[int, Path]) -> dict:
    """Every model's rows on ``args.corpus`` (each cached in its model folder, keyed by the
    corpus's fingerprint: a second run evaluates only what is new) and baseline-knn's."""
    key = _corpus_key(args.corpus)
    top = max(models)
    results: dict[str, list] = {}
    todo: dict[int, Path] = {}
    for n, folder in models.items():
        kinds = ["float"] + (["int8"] if args.int8 == "all" or (args.int8 == "largest" and n == top)
                             else [])
        cached = {k: _load_rows(folder / f"eval-{key}-{k}.json") for k in kinds}
        if all(v is not None for v in cached.values()):
            for k, v in cached.items():
                results[f"general-{n}-{k}"] = v
        else:
            todo[n] = folder
    baseline = args.cache / f"baseline-knn-{key}.json"
    fresh = _evaluate(args, todo, not args.no_baseline and not baseline.is_file()) if todo or (
        not args.no_baseline and not baseline.is_file()) else {}
    for name, rows in fresh.items():
        if name == "baseline-knn":
            _save_rows(baseline, rows)
        else:
            n, kind = int(name.split("-")[1]), name.split("-")[2]
            _save_rows(models[n] / f"eval-{key}-{kind}.json", rows)
    results |= fresh
    if not args.no_baseline:
        results["baseline-knn"] = _load_rows(baseline)
    order = sorted(results, key=lambda k: (k == "baseline-knn", int(k.split("-")[1])
                                           if k.startswith("general-") else 0, k))
    return {k: detection_summary(results[k]) for k in order}


def _evaluate(args: argparse.Namespace, models: dict[int, Path], baseline: bool) -> dict:
    import torch

    from harken.agent.features import LogMelExtractor, windows
    from harken.agent.model.rules.density import DEFAULT_K
    from harken.agent.site.enroll_embedding import fit_embedding_bank, held_out_scores
    from harken.agent.sources.wavio import read_wav
    from harken.training.data.corpus import machine_types, scan
    from harken.training.data.windows import fit_to_window
    from harken.training.evaluate import section_results
    torch.set_num_threads(args.threads)
    top = max(args.curve)
    embedders = {n: Embedder(f, args.int8 == "all" or (args.int8 == "largest" and n == top))
                 for n, f in models.items()}
    from harken.agent.features import preset
    spec = next(iter(embedders.values())).method.spec if embedders else preset("mobilenetv2-dual")
    extract = LogMelExtractor(spec)
    results: dict[str, list] = {}
    for machine in machine_types(args.corpus):
        train, test = scan(args.corpus, [machine], "train"), scan(args.corpus, [machine], "test")
        t0 = time.monotonic()
        emb: dict[tuple[int, str], list[np.ndarray]] = {}
        for c in (train + test) if embedders else ():
            w = windows(fit_to_window(extract(read_wav(c.path, spec.sample_rate)[0]), spec), spec)
            for n, e in embedders.items():
                for kind, v in e(w).items():
                    emb.setdefault((n, kind), []).append(v)
        for (n, kind), rows in emb.items():
            rows = np.stack(rows)
            tr, te = rows[:len(train)], rows[len(train):]
            scores = np.empty(len(test))
            for s in sorted({c.section for c in test}):
                fit = [i for i, c in enumerate(train) if c.section == s]
                at = [i for i, c in enumerate(test) if c.section == s]
                arrays, _ = fit_embedding_bank(tr[fit], DEFAULT_K)
                scores[at] = held_out_scores(arrays, te[at])
            results.setdefault(f"general-{n}-{kind}", []).extend(
                section_results(machine, test, scores))
        if baseline:
            results.setdefault("baseline-knn", []).extend(baseline_knn_results(
                machine, train, test, args.cache / "baseline-knn" / machine))
        print(f"{machine}: " + ", ".join(
            f"{k} {detection_summary([r for r in v if r.machine == machine])['official']:.4f}"
            for k, v in results.items()) + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    return results


def clip_statistics(x_logmel: np.ndarray, n_mels: int) -> np.ndarray:
    m = x_logmel[:, :n_mels]
    return np.concatenate([m.mean(axis=0), m.std(axis=0)])


def reach(args: argparse.Namespace) -> dict:
    """The label-free reach check (module docstring): no labels, no detection scores."""
    from harken.agent.features import LogMelExtractor, preset
    from harken.agent.sources.wavio import read_wav
    from harken.training.config import with_overrides
    from harken.training.general import GeneralConfig
    from harken.training.synth.randomised import random_machines, render
    from harken.training.data.corpus import machine_types, scan
    cfg = with_overrides(GeneralConfig(), args.set)
    spec = preset("mobilenetv2-dual")
    extract = LogMelExtractor(spec)
    seconds, n_rand = cfg.clip_seconds, max(args.curve)
    rng = np.random.default_rng(0)

    def stats_of(x: np.ndarray) -> np.ndarray:
        n = int(seconds * spec.sample_rate)
        if len(x) > n:                                   # a crop as long as a random clip
            start = int(rng.integers(0, len(x) - n + 1))
            x = x[start:start + n]
        return clip_statistics(extract(x), spec.n_mels)

    rand = np.stack([stats_of(render(m, p, 0, seconds, cfg.family_seed))
                     for m in random_machines(n_rand, cfg.family_seed) for p in range(3)])
    mu, sd = rand.mean(axis=0), rand.std(axis=0) + 1e-6
    z = (rand - mu) / sd
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    own = d.min(axis=1)

    def nearest(root: Path, per_type: int = 40) -> dict[str, dict]:
        out = {}
        for m in machine_types(root):
            clips = scan(root, [m], "train")
            pick = [clips[i] for i in sorted(rng.choice(len(clips), min(per_type, len(clips)),
                                                        replace=False))]
            s = (np.stack([stats_of(read_wav(c.path, spec.sample_rate)[0]) for c in pick]) - mu) / sd
            nn_d = np.sqrt(((s[:, None, :] - z[None, :, :]) ** 2).sum(-1)).min(axis=1)
            out[m] = {"clips": len(pick), "median_nn": float(np.median(nn_d)),
                      "ratio_to_random_median": float(np.median(nn_d) / np.median(own)),
                      "share_beyond_random_p95": float((nn_d > np.percentile(own, 95)).mean())}
            print(f"{m:>14}: median distance to the nearest random clip "
                  f"{out[m]['median_nn']:.2f} ({out[m]['ratio_to_random_median']:.2f} x the "
                  f"random clips' own), beyond their 95th percentile: "
                  f"{100 * out[m]['share_beyond_random_p95']:.0f} %", flush=True)
        return out
    print(f"{'random':>14}: median nearest-neighbour distance {np.median(own):.2f} "
          f"({len(rand)} clips, {n_rand} machines)")
    return {"random_clips": len(rand), "random_median_nn": float(np.median(own)),
            "random_p95_nn": float(np.percentile(own, 95)),
            "tuning": nearest(args.train_data), "checked": nearest(args.reach),
            "statistics": "per-band mean and standard deviation of the 128-band log-mel over "
                          f"{seconds:g}-s crops, standardised over the random clips; Euclidean"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    figures: dict = {"train_data": corpus_root(args.train_data), "settings": args.set}
    if args.reach:
        figures["reach"] = reach(args)
        figures["reach"]["corpus"] = corpus_root(args.reach)
        print(f"wrote {record(args.name, 'bench/bench_general.py --reach', figures)}")
        return
    models, seconds = {}, {}
    for n in args.curve:
        models[n], seconds[n] = trained(args, n)
        print(f"{n} random machines: trained in {seconds[n]:.0f} s ({models[n]})", flush=True)
    figures["models"] = {str(n): {"random_machines": n, "training_s": seconds[n],
                                  "cache": str(models[n])} for n in args.curve}
    if args.train_only:
        return
    rows = evaluate(args, models)
    figures |= {"corpus": {"root": corpus_root(args.corpus)}, "rows": rows}
    print(f"\n{'model':<24} {'official':>8} {'AUC src':>8} {'AUC tgt':>8} {'pAUC':>7}   "
          + " ".join(f"{m:>12}" for m in next(iter(rows.values()))["machines"]))
    for name, r in rows.items():
        print(f"{name:<24} {r['official']:>8.4f} {r['auc_source']:>8.4f} {r['auc_target']:>8.4f} "
              f"{r['pauc']:>7.4f}   " + " ".join(f"{v:>12.4f}" for v in r["machines"].values()))
    print(f"wrote {record(args.name, 'bench/bench_general.py', figures)}")


if __name__ == "__main__":
    main()
