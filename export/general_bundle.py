"""The general model's bundle (docs/general-model.md): the embedding graph of a
``harken-train general`` run (mobilenetv2-dual, batch norm folded), int8 ONNX (and TFLite
on request), the ``embedding-density`` rule, and NO bank: ``harken enroll`` fits it on
site from the machine's normal audio (agent/site/enroll_embedding.py).

int8 calibration reads windows of the run's corpus's training clips, the same number from
every machine type in it (never test clips), so that no one type sets the ranges.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from harken.agent.features import windows
from harken.agent.model.bundle import open_bundle
from harken.agent.model.manifest import MANIFEST, SCHEMA_VERSION, Manifest
from harken.agent.model.rules import output_of
from harken.agent.model.rules.density import DEFAULT_K
from harken.agent.model.scorer import model_input
from harken.export.bundle import ExportOptions, _entry, int8_artifacts, provenance
from harken.export.graphs import ExportError, InferenceGraph, load_graph
from harken.training.data.corpus import CorpusError, machine_types, scan
from harken.training.data.windows import clip_features
from harken.training.runs import corpus_fingerprint, read_run, skipped_bad_clips

log = logging.getLogger("harken.export")
RULE = "embedding-density"
GENERAL_METHOD = "mobilenetv2-dual-general"
CLIPS_PER_TYPE = 8


def general_calibration(root: Path, spec, n: int, seed: int = 0, family_seed: int = 0,
                        skip_bad: bool = False, types: list[str] | None = None) -> np.ndarray:
    """``n`` feature windows from the TRAINING clips of the machine types ``types`` (the
    run's; default every type) under ``root``, as many from each type (topped up from the
    random family when they are too few); ``skip_bad``: damaged clips passed over."""
    try:
        types = types or machine_types(root)
        rng = np.random.default_rng(seed)
        picked = []
        for m in types:
            clips = scan(Path(root), [m], split="train", skip_bad=skip_bad)
            picked += [clips[i] for i in sorted(rng.choice(len(clips), min(len(clips),
                                                                           CLIPS_PER_TYPE), replace=False))]
    except CorpusError as exc:
        raise ExportError(f"calibration data: {exc}") from None
    feats = clip_features(picked, spec, progress=False)
    all_windows = np.concatenate([windows(f, spec) for f in feats])
    if len(all_windows) < n:
        # a corpus of short clips (the tiny one): topped up with clips of the random
        # family the model was trained on, so the ranges still see many machines
        from harken.agent.features import LogMelExtractor
        from harken.training.synth.randomised import random_machine, render
        log.info(f"calibration: {len(all_windows)} windows in the corpus's training clips; "
                 f"the rest from clips of the random family")
        extract, extra, i = LogMelExtractor(spec), [all_windows], 0
        while sum(len(w) for w in extra) < n:
            m = random_machine(family_seed, i)
            extra.append(windows(extract(render(m, i % 3, 0, 10.0, family_seed)), spec))
            i += 1
        all_windows = np.concatenate(extra)
    return all_windows[np.sort(rng.choice(len(all_windows), n, replace=False))]


def general_types(info) -> list[str]:
    """The machine types a general run was trained on ([] for a run that does not say)."""
    return list((getattr(info, "general", None) or {}).get("machine_types", []))


def _checked_corpus(run_dir: Path, info, data: Path | None, other_corpus: bool) -> Path:
    """The corpus int8 calibration reads: ``data`` or the one run.json names, accepted
    when the training clips of the run's machine types have the run's fingerprint
    (``other_corpus``: any, on purpose)."""
    root = Path(data or info.corpus.root)
    types = general_types(info)
    try:
        fingerprint = corpus_fingerprint(scan(root, types or None, split="train",
                                              skip_bad=skipped_bad_clips(info)),
                                         info.corpus.fingerprint_kind)
    except CorpusError as exc:
        if other_corpus:
            return root
        raise ExportError(f"{exc}; cannot check it is the corpus {run_dir} was trained on "
                          f"(--other-corpus to use it anyway)") from None
    if fingerprint != info.corpus.fingerprint and not other_corpus:
        raise ExportError(f"{root}: not the corpus {run_dir} was trained on (training clips "
                          f"of {types} have fingerprint {fingerprint[:12]}, the run's "
                          f"{info.corpus.fingerprint[:12]}); give it with --calib")
    return root


def write_embedding_general_bundle(run_dir: Path, out: Path, options: ExportOptions = ExportOptions(),
                                   calib_root: Path | None = None, other_corpus: bool = False) -> Path:
    """Export the general run in ``run_dir`` as a general bundle into ``out``."""
    info = read_run(run_dir)
    if info.method != GENERAL_METHOD:
        raise ExportError(f"{run_dir}: a {info.method} run; 'harken-export general --run' takes "
                          f"a {GENERAL_METHOD} run ('harken-train general'); other runs: "
                          f"'harken-export export'")
    graph: InferenceGraph = load_graph(run_dir)
    spec = graph.method.spec
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError(f"{out}: not empty; give a new folder for the bundle")
    from harken.export.onnx_export import INPUT_NAME, export_fp32
    log.info("ONNX fp32")
    onnx_fp32 = export_fp32(graph, out / "model.fp32.onnx")
    onnx_io = {"input": {"name": INPUT_NAME, "shape": list(graph.input_shape), "dtype": "float32"},
               "outputs": {o: {"name": o} for o in graph.outputs}}
    artifacts: dict[str, dict] = {}
    if "onnx" in options.formats and options.precision in ("fp32", "both"):
        artifacts["onnx-fp32"] = {**_entry(out, onnx_fp32), **onnx_io}
    if options.precision in ("int8", "both"):
        root = _checked_corpus(run_dir, info, calib_root, other_corpus)
        log.info(f"calibration windows from the training clips under {root}")
        calib = np.stack([model_input(w, graph.input_shape) for w in
                          general_calibration(root, spec, options.calibration_windows, options.seed,
                                              graph.method.config.family_seed,
                                              skipped_bad_clips(info) or other_corpus,
                                              # the run's types (another corpus: its own)
                                              None if other_corpus else general_types(info))])
        artifacts |= int8_artifacts(graph, onnx_fp32, onnx_io, calib, out, options, root)
    reference = {"onnx-fp32": {"size": onnx_fp32.stat().st_size,
                               "note": "size of the fp32 ONNX model, the reference for the "
                                       "int8 files' size"}}
    if "onnx-fp32" not in artifacts:
        onnx_fp32.unlink()
    digest = hashlib.sha256(json.dumps([info.run_id, spec.to_dict()], sort_keys=True)
                            .encode()).hexdigest()
    manifest = Manifest.model_validate({
        "schema_version": SCHEMA_VERSION,
        "model": {"id": f"{GENERAL_METHOD}-{digest[:8]}", "version": info.code_version,
                  "method": GENERAL_METHOD, "machine": "any", "sections": [0]},
        "feature_spec": spec.to_dict(),
        "input": {"window_frames": spec.window_frames, "n_mels": spec.n_mels,
                  "layout": "image", "window_hop_frames": spec.window_hop},
        "outputs": list(graph.outputs),
        "scoring": {"rule": RULE, "output": output_of(RULE), "sections": {}},
        "aggregation": {"interval_s": 10.0, "reduce": "agent/model/rules/ ScoreRule.reduce over "
                        "the windows of one interval"},
        "threshold": {"value": None, "how": "set by harken enroll from the enrollment audio "
                      "(leave-one-out scores); harken calibrate can re-set it"},
        "enrollment": {"required": True, "density_k": int(graph.method.config.density_k
                                                          or DEFAULT_K),
                       "how": "harken enroll --config AGENT.toml (--minutes M | --files WAV...): "
                              "the interval embeddings, standardised on site, kNN + LDN"},
        "artifacts": artifacts,
        "reference": reference,
        "provenance": provenance(run_dir=run_dir, info=info, general=True),
    })
    (out / MANIFEST).write_text(manifest.to_json())
    open_bundle(out)
    return out
