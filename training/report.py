"""docs/results.md from evaluation outputs (metrics.json), so every figure in the docs
comes from a run anyone can repeat."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, StrictInt, StrictStr
from sklearn.metrics import roc_auc_score

from harken.common.errors import UsageError
from harken.common.readers import read_model
from harken.training.markdown import table


class _SectionMetrics(BaseModel):
    machine: StrictStr
    section: StrictInt
    auc_source: float
    auc_target: float
    pauc: float


class _Metrics(BaseModel):
    """What the results page reads of a metrics.json (training/evaluate.py ``to_dict``)."""
    official_score: float
    machines: dict[str, float] = Field(min_length=1)
    methods: dict[str, str] = Field(default_factory=dict)
    training: dict[str, dict] = Field(default_factory=dict)
    sections: list[_SectionMetrics] = Field(min_length=1)


def load_evaluation(path: Path) -> dict:
    """An evaluation's metrics.json, checked (harken/common/readers.py: a file without
    ``machines`` or not JSON at all is one line naming it); a folder whose result files are
    not the ones that metrics.json was written with is refused (``check_evaluation``): its
    figures and its per-fault table would come from two evaluations."""
    from harken.common.atomic import repair
    from harken.training.evaluate import check_evaluation
    path = Path(path)
    repair(path)                # an evaluation a kill left mid-swap: the old one back
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: no metrics.json (run 'harken-train evaluate' first)")
    metrics = read_model(file, _Metrics, "an evaluation's metrics.json")[1]
    if path.is_dir():
        check_evaluation(path, metrics)
    return metrics


def run_ids(ev: dict) -> str:
    """The runs an evaluation scored, as the page names them (machine: run id)."""
    runs = ev.get("runs") or {}
    return ", ".join(f"{m} `{r.get('run_id') or '?'}`" + ("" if r.get("corpus", {}).get(
        "matches_run", True) else " (on another corpus, on purpose)")
        for m, r in sorted(runs.items()) if isinstance(r, dict))


def results_markdown(evaluations: dict[str, dict], corpus: dict, command: str,
                     clip_scores: dict[str, dict[tuple[str, str], float]] | None = None) -> str:
    """evaluations: method label -> metrics.json content; clip_scores: method label -> its
    test clips' scores (for the per-fault table, where the corpus names each clip's fault)."""
    lines = ["# Results", "",
             f"Made by `{command}` on {dt.date.today().isoformat()}; re-run it to refresh "
             "every number on this page. Metrics follow the DCASE 2024 evaluator "
             "(training/metrics.py): AUC per domain (that domain's normals against all "
             "anomalies of the section), pAUC at FPR <= 0.1 over the section, official score = "
             "harmonic mean of all of them.", ""]
    if corpus:
        lines += [f"Corpus: synthetic, size `{corpus.get('size')}`, seed {corpus.get('seed')}, "
                  f"machine types {', '.join(corpus.get('machines', []))}, "
                  f"{corpus.get('sections')} sections each, {corpus.get('clip_seconds')} s clips, "
                  f"{len(corpus.get('clips', []))} clips in all.", ""]
    lines += ["## Official score", ""] + table(
        ["method", "official score", *sorted(next(iter(evaluations.values()))["machines"])],
        [[label, f"**{ev['official_score']:.4f}**",
          *(f"{v:.4f}" for _, v in sorted(ev["machines"].items()))]
         for label, ev in evaluations.items()])
    knn = evaluations.get("baseline-knn")
    if knn:
        src = sum(x["auc_source"] for x in knn["sections"]) / len(knn["sections"])
        tgt = sum(x["auc_target"] for x in knn["sections"]) / len(knn["sections"])
        in_band = 0.55 <= knn["official_score"] <= 0.80
        lines += ["", "Corpus difficulty check: the naive baseline should score between 0.55 and "
                  f"0.80 with target AUCs below source AUCs. Official score "
                  f"{knn['official_score']:.4f}: {'met' if in_band else '**missed**'}; mean AUC "
                  f"target {tgt:.4f} vs source {src:.4f}: {'met' if tgt < src - 0.05 else '**missed**'}."]
    lines += _default_lines(evaluations) + _variant_lines(evaluations) \
        + fault_lines(clip_scores or {}, corpus) + _generative_lines(evaluations) \
        + _training_lines(evaluations)
    for label, ev in evaluations.items():
        if " [" in label:           # another score rule of a method shown above
            continue
        lines += ["", f"## {label}: per section", ""] + table(
            ["machine", "section", "AUC source", "AUC target", "pAUC", "hmean"],
            [[s["machine"], f"{s['section']:02d}", f"{s['auc_source']:.4f}",
              f"{s['auc_target']:.4f}", f"{s['pauc']:.4f}", f"{s['hmean']:.4f}"]
             for s in ev["sections"]])
        src = [s["auc_source"] for s in ev["sections"]]
        tgt = [s["auc_target"] for s in ev["sections"]]
        lines += ["", f"Mean AUC over sections: source {sum(src) / len(src):.4f}, "
                  f"target {sum(tgt) / len(tgt):.4f}."]
        if run_ids(ev):
            lines += ["", f"Runs: {run_ids(ev)}."]
    return "\n".join(lines) + "\n"


# (variant, the row it changes, what the change is): each a "did it help?" row
VARIANTS = [
    # "spectral-knn" is the default rule (auto); [fused] is the fixed mel + spectrum fusion
    ("spectral-knn", "spectral-knn [fused]", "branch weights chosen per machine type on "
     "training data (auto) instead of the fixed mel + spectrum fusion"),
    ("spectral-knn [fused]", "spectral-knn [plain]", "local density normalisation, on vs off"),
    ("spectral-knn [fused]", "spectral-knn [mel]", "the spectrum branch (new features), on vs off"),
    ("spectral-knn [fused]", "spectral-knn [spectrum]", "the mel branch, on vs off"),
    ("spectral-knn [fused]", "spectral-knn [density]", "fusing in the plain distances, on vs off"),
    ("spectral-knn [all]", "spectral-knn [fused]", "the modulation, temporal and cepstrum "
     "branches (issue 39) added to mel and spectrum"),
    ("spectral-knn [stats]", "spectral-knn [mel]", "the modulation, temporal and cepstrum "
     "branches added to mel (no 513-bin spectrum)"),
    ("spectral-knn [modulation]", "baseline-knn", "the modulation branch alone"),
    ("spectral-knn [temporal]", "baseline-knn", "the temporal branch alone"),
    ("spectral-knn [cepstrum]", "baseline-knn", "the cepstrum branch alone"),
    ("ae-mahalanobis", "ae", "selective Mahalanobis instead of MSE"),
    ("ae-bu", "ae", "batch uniformization"),
    ("ae-snp", "ae", "Neyman-Pearson loss"),
    ("mobilenetv2-dual", "mobilenetv2", "the spectrum branch (new embedding), on vs off"),
    ("mobilenetv2-dual [embedding-density]", "mobilenetv2-dual",
     "LDN instead of the per-domain scale"),
    ("mobilenetv2-dual [64 epochs]", "mobilenetv2-dual",
     "the longer setting: 64 epochs instead of 16 (early stopping as always)"),
    ("contrastive", "mobilenetv2", "contrastive AE training"),
    ("contrastive [logit]", "mobilenetv2 [logit]", "contrastive AE training"),
    ("baseline-knn [knn-density]", "baseline-knn", "local density normalisation"),
    ("baseline-knn [knn-fused]", "baseline-knn", "fusion of plain and LDN distances"),
    ("mobilenetv2 [embedding-density]", "mobilenetv2", "LDN instead of the per-domain scale"),
]


def _mean_auc(ev: dict, domain: str) -> float:
    return sum(x[f"auc_{domain}"] for x in ev["sections"]) / len(ev["sections"])


def _default_lines(evaluations: dict[str, dict]) -> list[str]:
    """Which method ``harken-train train`` trains when none is named, and whether the
    figures on this page still bear that choice out (computed, not written by hand)."""
    from harken.training.methods import DEFAULT_METHOD
    if DEFAULT_METHOD not in evaluations:
        return []
    best = max(evaluations, key=lambda k: evaluations[k]["official_score"])
    tgt = max(evaluations, key=lambda k: _mean_auc(evaluations[k], "target"))
    ev = evaluations[DEFAULT_METHOD]
    knn = evaluations.get("baseline-knn")
    below = [m for m, v in ev["machines"].items()
             if knn and v < knn["machines"].get(m, float("-inf"))]
    lines = ["", "## The default method", "",
             f"`harken-train train` without `--method` trains **{DEFAULT_METHOD}**: official "
             f"score {ev['official_score']:.4f}, mean AUC source "
             f"{_mean_auc(ev, 'source'):.4f} / target {_mean_auc(ev, 'target'):.4f}."]
    lines.append("It has the highest official score on this page." if best == DEFAULT_METHOD
                 else f"**{best} scores higher ({evaluations[best]['official_score']:.4f})**; "
                      f"the default should be reconsidered.")
    lines.append("It has the highest mean target-domain AUC." if tgt == DEFAULT_METHOD else
                 f"{tgt} has a higher mean target-domain AUC "
                 f"({_mean_auc(evaluations[tgt], 'target'):.4f}).")
    if knn:
        lines.append("No machine type scores below baseline-knn." if not below else
                     f"**Below baseline-knn on {', '.join(below)}.**")
    lines += ["", "Why it is the default: it needs no network training (seconds per machine "
              "type on a Raspberry Pi), holds nothing that could over-fit one corpus (two "
              "settings with defaults fixed in advance), needs no domain label at test time "
              "(local density normalisation), and its bank can be learned on site. "
              "training/spectral_knn.py and agent/model/rules/spectral_knn.py describe it."]
    return lines


def _variant_lines(evaluations: dict[str, dict]) -> list[str]:
    rows = [(v, b, what) for v, b, what in VARIANTS if v in evaluations and b in evaluations]
    knn = evaluations.get("baseline-knn")
    if not rows and not knn:
        return []
    lines = ["", "## Did it help?", "",
             "Each variant against the method it changes, and every method against "
             "baseline-knn (official score; the verdicts are computed, not written by hand).", ""]
    pairs = rows + ([(label, "baseline-knn", "") for label in evaluations
                     if label != "baseline-knn"] if knn else [])
    cells = []
    for v, b, what in pairs:
        ov, ob = evaluations[v]["official_score"], evaluations[b]["official_score"]
        verdict = "helped" if ov > ob + 0.005 else ("did not help" if ov < ob - 0.005
                                                      else "no difference")
        if b == "baseline-knn":
            verdict = "beats baseline-knn" if ov > ob else "**below baseline-knn**"
        cells.append([v, b, what, f"{ov:.4f}", f"{ob:.4f}", f"{ov - ob:+.4f}", verdict])
    lines += table(["method", "compared with", "what changes", "official", "theirs", "change",
                    "verdict"], cells)
    bu, ae = evaluations.get("ae-bu"), evaluations.get("ae")
    if bu and ae and bu["sections"] == ae["sections"]:
        lines += ["", "ae-bu scored every section exactly as ae did. With the default "
                  "bandwidth (Scott's rule, n^(-1/(d+4)), about 1 for d = 640 inputs) the "
                  "Gaussian kernel between two different standardised inputs underflows to "
                  "zero, so every sample's density is its own kernel alone, every weight is "
                  "1, and batch uniformization trains exactly the plain AE with the same seed. "
                  "A bandwidth on the scale of the inputs' distances (`--set bu_bandwidth=...`, "
                  "of the order of sqrt(d)) makes the weights vary; it would have to be "
                  "chosen on training data, which this page does not do."]
    return lines


def fault_aucs(scores: dict[tuple[str, str], float], corpus: dict
               ) -> dict[tuple[str, str], float]:
    """(machine, fault) -> AUC of that fault's anomalous test clips against the normal test
    clips of their section (both domains), averaged over sections. Needs a corpus.json that
    names each test clip's fault (the synthetic corpus's does)."""
    groups: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in corpus.get("clips", []):
        key = (c["machine"], Path(c["file"]).name)
        if c.get("split") == "test" and key in scores:
            kind = "normal" if c.get("label") == "normal" else c.get("fault") or "unnamed"
            groups[(c["machine"], c["section"])][kind].append(scores[key])
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (machine, _), kinds in groups.items():
        normal = kinds.get("normal", [])
        for fault, anomalous in kinds.items():
            if fault != "normal" and normal and anomalous:
                y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
                per[(machine, fault)].append(float(roc_auc_score(y, normal + anomalous)))
    return {k: float(np.mean(v)) for k, v in sorted(per.items())}


def fault_lines(clip_scores: dict[str, dict[tuple[str, str], float]], corpus: dict,
                gap: float = 0.1) -> list[str]:
    """Which faults each method catches: a method can beat another on the official score
    while missing a whole kind of fault the other finds."""
    by_label = {label: fault_aucs(s, corpus) for label, s in clip_scores.items() if " [" not in label}
    by_label = {label: aucs for label, aucs in by_label.items() if aucs}
    if not by_label:
        return []
    labels = list(by_label)
    rows = sorted({k for aucs in by_label.values() for k in aucs})
    lines = ["", "## Which faults each method catches", "",
             "AUC of each fault's anomalous test clips against the normal test clips of the "
             "same section (both domains), averaged over sections; 0.5 is chance. The fault "
             "of each clip comes from the synthetic corpus's corpus.json.", ""]
    lines += table(["machine", "fault", *labels], [
        [machine, fault, *(f"{by_label[label][(machine, fault)]:.2f}"
                           if (machine, fault) in by_label[label] else "" for label in labels)]
        for machine, fault in rows])
    base = by_label.get("baseline-knn")
    if base:
        lines += ["", f"Faults a method misses that baseline-knn finds (AUC at least {gap} below "
                  "baseline-knn's):", ""]
        for label in labels:
            missed = [f"{m} {f} ({aucs[(m, f)]:.2f} vs {base[(m, f)]:.2f})"
                      for (m, f) in rows if (m, f) in base and (m, f) in (aucs := by_label[label])
                      and aucs[(m, f)] < base[(m, f)] - gap]
            if label != "baseline-knn":
                lines.append(f"- {label}: " + (", ".join(missed) if missed else "none"))
    return lines


GENERATIVE = {
    "aegan-ad": "the generator's reconstruction scores (`x-*`, `z-*`) need the convolutional "
                "autoencoder on the device; the critic-embedding scores (`d-*`) also the "
                "discriminator and the section's embedding bank (LOF: its neighbour graph)",
    "gmgan": "`latent` needs the encoder, decoder and auxiliary encoder; `energy` the encoder, "
             "the estimation network's GMM arrays and a log-sum-exp on the device",
    "oevae": "the ResNet and the VAE encoder, plus the segment bank per section for `beta` "
             "(the same kind of bank the classifier's embedding rule ships)",
}


def _generative_lines(evaluations: dict[str, dict]) -> list[str]:
    shown = [m for m in GENERATIVE if m in evaluations]
    if not shown:
        return []
    lines = ["", "## Generative detectors", "",
             "AEGAN-AD, GMGAN and OEVAE are trained and evaluated like the edge scorers; the "
             "rows `method [rule]` are the same runs scored with each of their score rules. "
             "None of them exports to the device yet: `harken-export` refuses their runs "
             "(it builds device graphs for the dense AE and the MobileNetV2 classifiers). "
             "What each would need:", ""]
    lines += [f"- {m}: {GENERATIVE[m]}." for m in shown]
    lines += ["", "Where the defaults are smaller than the papers' networks, to train a machine "
              "type in minutes on two CPU cores: AEGAN-AD `channels=16` (a 256-d critic "
              "embedding; the paper's 512-d is `--set channels=32`), OEVAE `width=16` (ResNet-18 "
              "layout at a quarter of its width; the paper's is `--set width=64`). GMGAN's "
              "paper gives no audio network size; its pyramid is AEGAN-AD's on 64 x 64 patches."]
    below = [label for label, ev in evaluations.items()
             if label.split(" [")[0] in GENERATIVE and ev["official_score"] < 0.5]
    if below:
        lines += ["", "Official score below 0.5, the level of a random score (AUC and "
                  "McClish-standardised pAUC both 0.5): "
                  + ", ".join(f"`{b}`" for b in below) + ". Why, with the evidence "
                  "(`bench/probe_generative.py`: AUC per domain, how each score follows the "
                  "clip's level and spectral contrast, target over source normal scores): "
                  "docs/benchmarks.md, \"Why aegan-ad's reconstruction rules score below random\" and "
                  "\"Why gmgan's rules score below random\"."]
    chosen = evaluations.get("aegan-ad", {}).get("methods", {})
    if chosen:
        lines += ["", "AEGAN-AD's default score is chosen per machine type without test "
                  "labels (held-out normal training clips against pseudo-anomalous copies of "
                  "them): " + ", ".join(f"{m}: {v.split('(')[-1].split()[0]}"
                                        for m, v in sorted(chosen.items())) + "."]
    return lines


def _training_lines(evaluations: dict[str, dict]) -> list[str]:
    timed = {label: ev["training"] for label, ev in evaluations.items() if ev.get("training")}
    if not timed:
        return []
    machines = sorted({m for t in timed.values() for m in t})
    first = next(iter(next(iter(timed.values())).values()))
    lines = ["", "## Training time", "",
             f"Wall seconds to train one machine type with the method's default settings "
             f"(features, training, score-rule fitting), on {first['cpu_cores']} CPU cores "
             f"({first['machine']}), device `{first['device']}`. Target: under 300 s. Wall time "
             "counts whatever else the machine was running; `bench/bench_training.py` "
             "measures per-epoch throughput on its own (docs/benchmarks.md).", ""]
    seen, cells = set(), []
    for label, t in timed.items():
        key = tuple(sorted((m, v["seconds"]) for m, v in t.items()))
        if key in seen:        # a second score rule of the same runs
            continue
        seen.add(key)
        secs = [t[m]["seconds"] if m in t else None for m in machines]
        epochs = ", ".join(str(t[m]["epochs"]) for m in machines if m in t and t[m]["epochs"]) or "-"
        ok = all(x is not None and x < 300 for x in secs)
        threads = ", ".join(sorted({str(v.get("torch_threads", "?")) for v in t.values()}))
        cells.append([label, *("" if x is None else f"{x:.0f}" for x in secs), epochs, threads,
                      "yes" if ok else "**no**"])
    lines += table(["method", *machines, "epochs run", "torch threads", "under 300 s"], cells)
    devices = {v["device"] for t in timed.values() for v in t.values()}
    if not any(d.startswith("cuda") for d in devices):
        lines += ["", "GPU: these runs had no CUDA GPU. On a GPU, `harken-train train` uses it "
                  "automatically (bf16 autocast)." + _gpu_epoch_line()]
    return lines


def _gpu_epoch_line(bench: Path = Path(__file__).resolve().parent.parent / "bench" / "results"
                    / "training-gpu.json") -> str:
    """GPU vs CPU seconds per epoch from the last `bench_training.py --name training-gpu`."""
    if not bench.is_file():
        return (" `bench/bench_training.py` prints seconds per epoch on each device it finds; "
                "no GPU run of it is recorded.")
    r = json.loads(bench.read_text())
    parts = [f"{name} {row['cpu']['seconds_per_epoch']:.1f} s on CPU vs "
             f"{row['cuda']['seconds_per_epoch']:.2f} s on the GPU"
             for name, row in r["methods"].items() if "cuda" in row]
    return (f" Seconds per epoch on {r['gpu']} with {r['machine']['cores']} CPU cores beside it "
            f"(`bench/bench_training.py --name training-gpu`, {r['when'][:10]}): "
            + "; ".join(parts) + ". The 5-minute training target is for 2 CPU cores.")
