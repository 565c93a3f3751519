"""``harken-export verify``: does every artifact of a bundle still score like the torch fp32
model it came from? Scores the labelled test clips with torch fp32 (the training code) and
with each artifact through the agent's own scorer, compares, and gives each artifact a
verdict: PASS when its official score is within ``Tolerances.official`` of torch fp32's and
its clip scores' Spearman correlation with torch fp32's is at least ``Tolerances.spearman``
(docs/export.md). The torch reference must be the bundle's own run (its id, method, machine
and file digest, as the manifest's provenance records them) and the corpus the run was
trained on (its fingerprint)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
from tqdm import tqdm

from harken.agent.model.bundle import Bundle
from harken.agent.features import windows
from harken.agent.model.factory import make_scorer
from harken.agent.model.scorer import BundleScorer, model_input
from harken.export.graphs import ExportError
from harken.training.data.corpus import Clip, scan
from harken.training.data.windows import clip_features
from harken.training.evaluate import section_results
from harken.training.methods import method_class
from harken.training.metrics import official_score
from harken.training.runs import RunInfo, check_corpus, read_run, weights_digest


@dataclass(frozen=True)
class Tolerances:
    """How far an artifact may stray from torch fp32 and still pass (docs/export.md)."""
    official: float = 0.01          # |official - torch fp32 official| at most this
    spearman: float = 0.99          # clip-score Spearman with torch fp32 at least this


@dataclass
class ArtifactCheck:
    artifact: str
    backend: str
    spearman: float            # clip scores vs torch fp32
    max_rel_error: float       # max over clips of |score - torch| / |torch|
    max_abs_error: float       # max over clips of |score - torch| (a fused score is a z-score
                               # near 0, where the relative error says nothing)
    auc_source: float          # means over sections
    auc_target: float
    pauc: float
    official: float
    size_bytes: int
    size_vs_onnx_fp32: float | None
    latency_ms: float          # median per window, one thread
    quant_params_bytes: int | None = None   # scales and zero points inside the file
    verdict: str = "-"         # PASS | FAIL ("-": the torch fp32 reference itself)
    failed: list[str] = field(default_factory=list)   # what it missed, in words

    def to_dict(self) -> dict:
        return asdict(self)


def judge(checks: list[ArtifactCheck], tolerances: Tolerances) -> None:
    """Each artifact's verdict against the torch fp32 row (the first), in place. A NaN
    (scores that do not vary) fails."""
    ref = checks[0]
    for c in checks[1:]:
        c.failed = []
        gap = abs(c.official - ref.official)
        if not gap <= tolerances.official:
            c.failed.append(f"official {c.official:.4f} vs torch fp32 {ref.official:.4f} "
                            f"(off by {gap:.4f} > {tolerances.official:g})")
        if not c.spearman >= tolerances.spearman:
            c.failed.append(f"Spearman {c.spearman:.4f} < {tolerances.spearman:g}")
        c.verdict = "FAIL" if c.failed else "PASS"


def verdict_line(checks: list[ArtifactCheck], tolerances: Tolerances) -> str:
    """The one line that says whether the bundle passed, and what failed."""
    failed = [c for c in checks if c.verdict == "FAIL"]
    rule = (f"official within {tolerances.official:g} of torch fp32, Spearman >= "
            f"{tolerances.spearman:g}")
    if not failed:
        return f"verdict: PASS ({len(checks) - 1} artifacts; {rule})"
    return (f"verdict: FAIL ({rule}): " +
            "; ".join(f"{c.artifact}: {', '.join(c.failed)}" for c in failed))


def bundle_run(bundle: Bundle, run_dir: Path | None = None) -> tuple[Path, RunInfo]:
    """The run a bundle came from (``run_dir``, else the manifest's ``provenance.run``; a
    relative one is read against the bundle's own folder, never the current one), refused
    in one line when it is not the bundle's run: another id, method or machine, or files
    that differ from those the bundle was exported from."""
    prov = bundle.manifest.provenance
    if run_dir is None:
        named = prov.get("run")
        if not isinstance(named, str) or not named:
            raise ExportError(f"{bundle.root}/manifest.json: provenance names no run (an "
                              f"imported or general bundle?); pass --run RUN")
        run_dir = Path(named) if Path(named).is_absolute() else bundle.root / named
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        read_run(run_dir)                           # repairs an interrupted replacement
    if not (run_dir / "run.json").is_file():
        raise ExportError(f"{run_dir}: the run this bundle came from is not there (the "
                          f"torch fp32 reference); pass --run RUN")
    info = read_run(run_dir)
    model = bundle.manifest.model
    expected = {"run_id": prov.get("run_id"), "method": prov.get("method", model.method),
                "machine": prov.get("machine", model.machine),
                "corpus_fingerprint": prov.get("corpus_fingerprint")}
    actual = {"run_id": info.run_id, "method": info.method, "machine": info.machine,
              "corpus_fingerprint": info.corpus.fingerprint}
    for key, want in expected.items():
        if want is not None and actual[key] != want:
            raise ExportError(f"{run_dir}: not the run bundle {bundle.root} was exported from "
                              f"({key} {actual[key]!r}, the bundle's {want!r}); pass its "
                              f"run with --run")
    check_manifest_against_run(bundle, run_dir, info)
    want = prov.get("weights_sha256")
    if want is not None and weights_digest(run_dir, info) != want:
        raise ExportError(f"{run_dir}: its files differ from those bundle {bundle.root} was "
                          f"exported from (weights digest); retrained or edited since? export "
                          f"it again")
    return run_dir, info


# how far the threshold a bundle states may be from its run's (float32 round trips, JSON)
THRESHOLD_RTOL = 1e-6


def check_manifest_against_run(bundle: Bundle, run_dir: Path, info: RunInfo) -> None:
    """The manifest's own statements checked against the run it names, in one line each:
    the machine type (verify scores that machine's test clips), the sections (a scorer per
    run section; a manifest missing one would be a KeyError) and the threshold (the
    device's decision; verify's scores never see it, so an edited value would otherwise
    pass). A general or imported bundle has no run and is not checked here."""
    model = bundle.manifest.model
    where = f"{bundle.root}/manifest.json"
    if model.machine != info.machine:
        raise ExportError(f"{where}: model.machine {model.machine!r} differs from the run's "
                          f"{info.machine!r} ({run_dir}); export the run again")
    if sorted(model.sections) != sorted(info.sections):
        raise ExportError(f"{where}: model.sections {model.sections} differ from the run's "
                          f"{info.sections} ({run_dir}); export the run again")
    stated = bundle.manifest.threshold.value
    want = info.normal_scores.threshold
    if stated is None or not np.isclose(stated, want, rtol=THRESHOLD_RTOL, atol=1e-12):
        raise ExportError(f"{where}: threshold.value {stated!r} differs from the run's "
                          f"{want!r} ({run_dir}/run.json); export the run again")


def _summary(machine: str, clips: list[Clip], scores: np.ndarray) -> tuple[float, ...]:
    res = section_results(machine, clips, scores)
    return (float(np.mean([r.auc_source for r in res])), float(np.mean([r.auc_target for r in res])),
            float(np.mean([r.pauc for r in res])), official_score(res))


def verify(bundle: Bundle, data_root: Path, run_dir: Path | None = None,
           max_clips: int | None = None, threads: int = 1, progress: bool = True,
           tolerances: Tolerances = Tolerances(), other_corpus: bool = False
           ) -> list[ArtifactCheck]:
    """One row per artifact (the first: torch fp32 itself), each with its verdict."""
    run_dir, info = bundle_run(bundle, run_dir)
    check_corpus(run_dir, info, Path(data_root), other_corpus)
    machine = bundle.machine
    clips = scan(Path(data_root), [machine], split="test")
    if max_clips:
        clips = clips[:: max(1, len(clips) // max_clips)][:max_clips]
    if any(c.label is None for c in clips):
        raise ExportError(f"{data_root}: test clips of '{machine}' have no normal/anomaly "
                          f"labels; verify needs a labelled test set")
    info_method = bundle.manifest.model.method
    reference = method_class(info_method).load(run_dir)
    # the training score the device rule stands for (export/bundle.py ``training_score``);
    # a bundle written before it was recorded has a rule named as the training score
    score = bundle.manifest.scoring.training_score or bundle.rule_name
    torch_scores = np.asarray(reference.score(clips, progress=False, rule=score))
    onnx_fp32_size = bundle.manifest.reference.get("onnx-fp32", {}).get("size")
    feats = clip_features(clips, bundle.spec, progress, desc="features")
    checks = [ArtifactCheck("torch-fp32", "torch", 1.0, 0.0, 0.0, *_summary(machine, clips, torch_scores),
                            0, None, float("nan"))]
    seen = set()
    for kind in bundle.kinds:
        scorers = {s: make_scorer(bundle, s, kind, threads) for s in bundle.sections}
        first = scorers[bundle.sections[0]]
        if first.artifact_kind in seen:      # a fused bundle's members fell back alike
            continue
        seen.add(first.artifact_kind)
        scores = np.empty(len(clips))
        for i, (c, f) in enumerate(tqdm(list(zip(clips, feats)), desc=first.artifact_kind,
                                        disable=not progress, leave=False)):
            scores[i] = scorers[c.section].score_logmel(f)
        rel = np.abs(scores - torch_scores) / np.maximum(np.abs(torch_scores), 1e-12)
        parts = first.members if bundle.is_fused else [first]
        size = sum(p.artifact.path.stat().st_size for p in parts)
        quant = [q for p in parts if (q := quantization_bytes(p.artifact.path))]
        checks.append(ArtifactCheck(
            first.artifact_kind, first.backend_name,
            float(scipy.stats.spearmanr(scores, torch_scores).statistic), float(rel.max()),
            float(np.abs(scores - torch_scores).max()), *_summary(machine, clips, scores), size,
            size / onnx_fp32_size if onnx_fp32_size else None,
            sum(latency_ms(p, feats[0][:, :p.bundle.spec.n_features]) for p in parts),
            sum(quant) or None))
    judge(checks, tolerances)
    return checks


def quantization_bytes(path: Path) -> int | None:
    """Bytes of quantization parameters (scales and zero points) in an int8 model file:
    the part of its size that is not weights, which per-channel quantization makes
    large on narrow networks. None for a float model."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx
        model = onnx.load(str(path))
        inits = {i.name: i for i in model.graph.initializer}
        names = {x for n in model.graph.node if n.op_type in ("QuantizeLinear",
                                                                "DequantizeLinear")
                 for x in n.input[1:]}
        total = sum(onnx.numpy_helper.to_array(inits[x]).nbytes for x in names if x in inits)
    else:
        # The TFLite schema stores a float32 scale and an int64 zero point per channel.
        from harken.agent.model.backends import interpreter_class
        interpreter = interpreter_class()[0](model_path=str(path))
        total = sum(len(q["scales"]) * 4 + len(q["zero_points"]) * 8
                    for d in interpreter.get_tensor_details()
                    for q in [d["quantization_parameters"]])
    return total or None


def latency_ms(scorer: BundleScorer, logmel: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of one backend call on one window (after a warm-up)."""
    x = model_input(windows(logmel, scorer.bundle.spec)[0], scorer.artifact.input_shape)
    for _ in range(10):
        scorer.backend.run(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        scorer.backend.run(x)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def format_checks(checks: list[ArtifactCheck]) -> str:
    wa = max(12, *(len(c.artifact) for c in checks))
    wb = max(18, *(len(c.backend) for c in checks))
    head = (f"{'artifact':<{wa}} {'backend':<{wb}} {'spearman':>8} {'max rel err':>11} "
            f"{'max abs err':>11} {'AUC_s':>6} "
            f"{'AUC_t':>6} {'pAUC':>6} {'official':>8} {'size':>10} {'x fp32':>6} {'ms/window':>9} "
            f"{'verdict':>7}")
    lines = [head]
    for c in checks:
        ratio = f"{c.size_vs_onnx_fp32:.3f}" if c.size_vs_onnx_fp32 is not None else "-"
        size = f"{c.size_bytes:,}" if c.size_bytes else "-"
        lat = f"{c.latency_ms:.3f}" if np.isfinite(c.latency_ms) else "-"
        lines.append(f"{c.artifact:<{wa}} {c.backend:<{wb}} {c.spearman:>8.4f} "
                     f"{c.max_rel_error:>11.4f} {c.max_abs_error:>11.4g} "
                     f"{c.auc_source:>6.4f} {c.auc_target:>6.4f} {c.pauc:>6.4f} {c.official:>8.4f} "
                     f"{size:>10} {ratio:>6} {lat:>9} {c.verdict:>7}")
    return "\n".join(lines)
