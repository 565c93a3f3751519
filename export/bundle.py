"""Writing bundles (docs/export.md): model files, scoring arrays and the manifest that
``agent/model/bundle.py`` checks. The reader lives in the agent; this module only writes.
What a method gives a bundle (its graph, device rule and rule arrays) is training/method.py's
``Exportable``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harken.agent.model.bundle import open_bundle, sha256_file
from harken.agent.model.manifest import MANIFEST, SCHEMA_VERSION, Manifest
from harken.agent.model.rules import output_of
from harken.agent.model.scorer import model_input
from harken.export.artifact_arrays import refit_per_artifact
from harken.export.graphs import ExportError, InferenceGraph, calibration_windows, load_graph
from harken.common.atomic import building
from harken.training.runs import (RunInfo, check_corpus, code_version, read_run,
                                  run_training_clips, skipped_bad_clips, weights_digest)

# progress lines ("ONNX fp32", "TFLite int8 ..."): the CLI shows them on stderr
log = logging.getLogger("harken.export")

FORMATS = ("onnx", "tflite")
PRECISIONS = ("int8", "fp32", "both")


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    precision: str = "int8"           # int8 | fp32 | both (ONNX fp32 is always written)
    calibration_windows: int = 300
    calibration_method: str = "minmax"
    int8_io: bool = False             # TFLite int8 input/output instead of float
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ExportError(f"--formats: {bad or 'nothing'} given; choose from {list(FORMATS)}")
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision must be one of {list(PRECISIONS)}, got "
                              f"{self.precision!r}")
        if self.calibration_windows < 200:
            raise ExportError(f"--calib-windows: int8 calibration needs at least 200 windows, "
                              f"got {self.calibration_windows}")


def _entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
            "sha256": sha256_file(path)}


def provenance(*, run_dir: Path | None = None, info: RunInfo | None = None, **fields) -> dict:
    """A bundle's provenance block: where it came from (the run, or what ``fields`` say:
    an imported model, a general bundle), which code trained and exported it, and when.
    Every writer of a manifest (this module, export/wrap.py) fills it here. A run is named
    by its absolute path (a relative one would be read from wherever verify runs) and bound
    by its id, method, machine and the digest of its files (``verify`` checks them)."""
    block: dict = {}
    if run_dir is not None:
        block["run"] = str(Path(run_dir).absolute())
    if info is not None:
        block |= {"run_id": info.run_id, "method": info.method, "machine": info.machine,
                  "corpus_fingerprint": info.corpus.fingerprint,
                  "trained_with": info.code_version}
        if run_dir is not None:
            block["weights_sha256"] = weights_digest(run_dir, info)
    return {**block, **fields, "exported_with": code_version(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _model_block(info: RunInfo, method: str) -> dict:
    return {"id": f"{method}-{info.machine}-{info.corpus.fingerprint[:8]}",
            "version": info.code_version, "method": method, "machine": info.machine,
            "sections": list(info.sections)}


def scoring_arrays(graph: InferenceGraph, sections_of: list[int]
                   ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """The device rule's arrays (name -> array) and, per section, which array is which:
    each method says what its rule needs (``Exportable.rule_arrays``); an array that
    several sections share (the embedding standardisation) is stored once."""
    m = graph.method
    arrays: dict[str, np.ndarray] = {}
    sections: dict[str, dict[str, str]] = {}
    for s in sections_of:
        key = f"{s:02d}"
        sections[key] = {role: stored(arrays, role, key, a)
                         for role, a in m.rule_arrays(s).items()}
    return arrays, sections


def stored(arrays: dict[str, np.ndarray], role: str, suffix: str, a: np.ndarray) -> str:
    """The name ``a`` has in ``arrays``: an equal array of the same role already there
    (stored once), else ``<role>_<suffix>``, added."""
    a = np.asarray(a)
    same = next((n for n, b in arrays.items() if n.startswith(f"{role}_")
                 and b.dtype == a.dtype and np.array_equal(b, a)), None)
    name = same or f"{role}_{suffix}"
    arrays[name] = a
    return name


def per_artifact_arrays(fitted: dict[str, dict[int, dict[str, np.ndarray]]],
                        arrays: dict[str, np.ndarray], sections: dict[str, dict[str, str]]
                        ) -> dict[str, dict[str, dict[str, str]]]:
    """The manifest's ``scoring.per_artifact`` for arrays fitted per artifact
    (export/artifact_arrays.py), new arrays added to ``arrays``: only the roles whose array
    differs from the section's own (a k or a standardisation the refit keeps is not
    stored twice)."""
    block: dict[str, dict[str, dict[str, str]]] = {}
    for kind, by_section in fitted.items():
        tag = kind.replace("-", "_")
        for s, roles in by_section.items():
            key = f"{s:02d}"
            own = {role: name for role, a in roles.items()
                   if (name := stored(arrays, role, f"{key}_{tag}", a)) != sections[key][role]}
            if own:
                block.setdefault(kind, {})[key] = own
    return block


def training_score(method, info: RunInfo) -> dict:
    """The manifest's ``scoring.training_score`` (the method's own score the device rule
    reproduces, which ``verify`` scores torch with: a device rule such as ``aegan-d-lof``
    stands for the training score ``d-lof``) and ``scoring.choice`` (how a run that chose
    its score chose it: the method's ``score_choice``, else run.json's)."""
    block: dict = {}
    score = getattr(method, "default_rule", None)
    if isinstance(score, str) and score:
        block["training_score"] = score
    choice = getattr(method, "score_choice", None)
    if choice is None:
        choice = getattr(info, "score_choice", None)
    if isinstance(choice, dict):
        block["choice"] = choice
    return block


def _write_models(graph: InferenceGraph, out: Path, options: ExportOptions, method: str,
                  calibration: Callable[[], tuple[Path, str, object, bool]]
                  ) -> tuple[dict[str, dict], dict]:
    """The model files of a bundle and their manifest entries; ``calibration`` gives the
    corpus, machine type and spec int8 calibration reads, and whether it leaves damaged
    clips out (only asked when int8 is made)."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError(f"{out}: not empty; give a new folder for the bundle")
    artifacts: dict[str, dict] = {}
    precision = options.precision
    weightless = not any(p.numel() for p in graph.module.parameters())
    if weightless and precision != "fp32":
        # Nothing to quantize but the activations, and those are dB statistics whose
        # small differences are the signal: int8 only loses them and saves nothing.
        log.info(f"{method}: the graph has no weights; writing float artifacts "
                 f"instead of int8")
        precision = "fp32"

    log.info("ONNX fp32")
    from harken.export.onnx_export import INPUT_NAME, export_fp32
    onnx_fp32 = export_fp32(graph, out / "model.fp32.onnx")
    onnx_io = {"input": {"name": INPUT_NAME, "shape": list(graph.input_shape), "dtype": "float32"},
               "outputs": {o: {"name": o} for o in graph.outputs}}
    if "onnx" in options.formats and precision in ("fp32", "both"):
        artifacts["onnx-fp32"] = {**_entry(out, onnx_fp32), **onnx_io}
    if precision in ("int8", "both"):
        root, machine, spec, skip_bad = calibration()
        log.info(f"calibration windows from the training clips under {root}")
        windows = calibration_windows(root, machine, spec, options.calibration_windows,
                                      options.seed, skip_bad)
        calib = np.stack([model_input(w, graph.input_shape) for w in windows])
        artifacts |= int8_artifacts(graph, onnx_fp32, onnx_io, calib, out, options, root)
    if "tflite" in options.formats and precision in ("fp32", "both"):
        log.info("TFLite fp32")
        from harken.export.tflite_export import export_fp32 as tflite_fp32
        from harken.export.tflite_export import tflite_io
        path = tflite_fp32(graph, out / "model.fp32.tflite")
        artifacts["tflite-fp32"] = {**_entry(out, path), **tflite_io(path)}
    reference = {"onnx-fp32": {"size": onnx_fp32.stat().st_size,
                               "note": "size of the fp32 ONNX model, the reference for the "
                                       "int8 files' size (the file ships only with fp32)"}}
    if weightless:
        reference["int8"] = {"note": "not written: the graph has no weights (window "
                                     "moments); int8 activations would only lose precision"}
    if "onnx-fp32" not in artifacts:
        onnx_fp32.unlink()
    return artifacts, reference


def _clip_seconds(info, root: Path | None = None) -> float | None:
    """The length of the run's training clips (under ``root``, the checked corpus, or the
    one run.json names): the interval its threshold was fitted at, which the agent checks
    against decision.interval_s (docs/agent.md); None if the corpus is not here to say."""
    from harken.agent.sources.wavio import read_pcm
    from harken.common.errors import HarkenError
    try:
        clip = run_training_clips(Path(root or info.corpus.root), info)[0]
        data, rate = read_pcm(clip.path, mmap=True)
        return round(len(data) / rate, 3)
    except (HarkenError, OSError, ValueError, IndexError):
        return None


def write_bundle(run_dir: Path, out: Path, calib_root: Path | None = None,
                 options: ExportOptions = ExportOptions(), other_corpus: bool = False) -> Path:
    """Export the run in ``run_dir`` into the bundle directory ``out``; returns ``out``.
    int8 calibration reads the training clips of the run's own corpus (``calib_root`` or
    the path run.json names, checked by its fingerprint), or of another one on purpose
    (``other_corpus``)."""
    info = read_run(run_dir)
    if info.method == "fusion":
        return write_fused_bundle(run_dir, out, calib_root, options, other_corpus)
    graph = load_graph(run_dir)
    spec = graph.method.spec
    rule = graph.method.device_rule()

    corpus: list[Path] = []              # checked once, when first asked
    # the clips training passed over stay out (the refit below splits them as training
    # did); another corpus, read for calibration only, has its damaged clips passed over
    skip_bad = skipped_bad_clips(info)

    def calibration() -> tuple[Path, str, object, bool]:
        if not corpus:
            corpus.append(Path(check_corpus(run_dir, info, calib_root, other_corpus,
                                            test_clips=False, data_flag="--calib")["path"]))
        return corpus[0], info.machine, spec, skip_bad or other_corpus
    artifacts, reference = _write_models(graph, out, options, info.method, calibration)

    arrays, sections = scoring_arrays(graph, list(info.sections))
    (out / "arrays").mkdir(exist_ok=True)

    def array_entries() -> dict[str, dict]:
        for name, a in arrays.items():
            if not (out / "arrays" / f"{name}.npy").exists():
                np.save(out / "arrays" / f"{name}.npy", a, allow_pickle=False)
        return {name: _entry(out, out / "arrays" / f"{name}.npy") for name in arrays}

    normal = info.normal_scores
    fitted_at = _clip_seconds(info, corpus[0] if corpus and not other_corpus else None)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "model": _model_block(info, info.method),
        "feature_spec": spec.to_dict(),
        "input": {"window_frames": spec.window_frames, "n_mels": spec.n_mels,
                  "layout": "vector" if len(graph.input_shape) == 2 else "image",
                  "window_hop_frames": spec.window_hop},
        "outputs": list(graph.outputs),
        "scoring": {"rule": rule, "output": output_of(rule), "sections": sections,
                    **training_score(graph.method, info)},
        "aggregation": {"interval_s": fitted_at or 10.0, "reduce": "agent/model/rules/ "
                        "ScoreRule.reduce over the windows of one interval"},
        "normal_scores": normal.model_dump(exclude_unset=True),
        "threshold": {"value": float(normal.threshold),
                      "how": normal.threshold_rule + " (torch fp32, held-out "
                      "training clips); on-site calibration re-sets it",
                      **({"interval_s": fitted_at} if fitted_at else {})},
        "artifacts": artifacts,
        "reference": reference,
        "arrays": array_entries(),
        "provenance": provenance(run_dir=run_dir, info=info),
    }
    (out / MANIFEST).write_text(Manifest.model_validate(doc).to_json())
    bundle = open_bundle(out)   # the agent's own checks, before anyone copies it anywhere
    # int8 artifacts were made: their own rule arrays, from the run's own training clips
    # (another corpus's clips are int8 calibration only, never the rule's reference)
    if corpus and other_corpus:
        log.info("rule arrays per artifact not fitted: --other-corpus's clips are not the "
                 "run's training clips; every artifact scores with the run's arrays")
    elif corpus:
        fitted = refit_per_artifact(bundle, graph.method, corpus[0], info.machine,
                                    skip_bad=skip_bad)
        if fitted:
            doc["scoring"]["per_artifact"] = per_artifact_arrays(fitted, arrays, sections)
            doc["arrays"] = array_entries()
            (out / MANIFEST).write_text(Manifest.model_validate(doc).to_json())
            open_bundle(out)
    return out


def write_fused_bundle(run_dir: Path, out: Path, calib_root: Path | None = None,
                       options: ExportOptions = ExportOptions(),
                       other_corpus: bool = False) -> Path:
    """A fusion run (training/fusion.py) as one bundle: each member's run exported into
    ``members/<method>/`` with the same options, and a manifest that pins each member's
    manifest by sha256 and carries the per-section standardisation and the fused
    threshold (agent/model/fused.py scores it)."""
    run_dir, out = Path(run_dir), Path(out)
    info = read_run(run_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: not empty; give a new folder for the bundle")
    members = []
    if not info.members or info.standardise is None:
        raise ExportError(f"{run_dir}/run.json: a fusion run without 'members' and "
                          f"'standardise'; train it again")
    for entry in info.members:
        name = entry.method
        log.info(f"member {name}")
        path = write_bundle(run_dir / entry.run, out / "members" / name, calib_root, options,
                            other_corpus)
        members.append({"name": name, "path": f"members/{name}", "weight": entry.weight,
                        "manifest_sha256": sha256_file(path / MANIFEST)})
    normal = info.normal_scores
    fitted_at = _clip_seconds(info)
    manifest = Manifest.model_validate({
        "schema_version": SCHEMA_VERSION,
        "model": _model_block(info, "fusion"),
        "feature_spec": info.feature_spec,
        "scoring": {"rule": "fused", "sections": {}},
        "aggregation": {"interval_s": fitted_at or 10.0, "reduce": "each member's rule over the "
                        "interval's windows, standardised per section, weighted mean "
                        "(agent/model/fused.py)"},
        "normal_scores": normal.model_dump(exclude_unset=True),
        "threshold": {"value": float(normal.threshold),
                      "how": normal.threshold_rule + " (fused torch fp32 scores of "
                      "the training clips every member held out); on-site calibration "
                      "re-sets it", **({"interval_s": fitted_at} if fitted_at else {})},
        "fusion": {"members": members, "standardise": info.standardise},
        "artifacts": {},
        "provenance": provenance(run_dir=run_dir, info=info),
    })
    (out / MANIFEST).write_text(manifest.to_json())
    open_bundle(out)
    return out


def write_general_bundle(out: Path, preset_name: str = "spectral-knn",
                         options: ExportOptions = ExportOptions(), variant: str = "fused"
                         ) -> Path:
    """A bundle for any machine: spectral-knn's window-moments graph and feature spec with
    no reference bank; ``harken enroll`` learns the bank on site. spectral-knn learns
    nothing across machine types (its statistics are fixed), so no run is needed.
    ``variant``: the score variant (training/spectral_knn.py) whose branches enrollment
    fits and whose weights the rule uses; other than ``fused`` it is in the model id, so a
    bank enrolled with one is never read with another."""
    import hashlib

    from harken.agent.features import preset
    from harken.agent.model.rules.density import DEFAULT_K
    from harken.export.graphs import WindowMoments
    from harken.training.spectral_knn import VARIANT_WEIGHTS, weighed
    branches, weights = weighed(VARIANT_WEIGHTS[variant])
    spec = preset(preset_name)
    graph = InferenceGraph(WindowMoments(spec.window_frames, spec.n_features).eval(),
                           (1, spec.window_frames * spec.n_features), ("moments",), None)
    artifacts, reference = _write_models(graph, out, options, "spectral-knn",
                                         lambda: None)
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    manifest = Manifest.model_validate({
        "schema_version": SCHEMA_VERSION,
        "model": {"id": f"spectral-knn-general-{'' if variant == 'fused' else variant + '-'}"
                        f"{digest[:8]}", "version": code_version(),
                  "method": "spectral-knn", "machine": "any", "sections": [0]},
        "feature_spec": spec.to_dict(),
        "input": {"window_frames": spec.window_frames, "n_mels": spec.n_mels,
                  "layout": "vector", "window_hop_frames": spec.window_hop},
        "outputs": list(graph.outputs),
        "scoring": {"rule": "spectral-knn", "output": output_of("spectral-knn"), "sections": {}},
        "aggregation": {"interval_s": 10.0, "reduce": "agent/model/rules/ ScoreRule.reduce over the "
                        "windows of one interval"},
        "threshold": {"value": None, "how": "set by harken enroll from the enrollment audio "
                      "(leave-one-out scores); harken calibrate can re-set it"},
        "enrollment": {"required": True, "density_k": DEFAULT_K,
                       "branches": list(branches), "weights": weights.tolist(),
                       "how": "harken enroll --config AGENT.toml (--minutes M | --files WAV...)"},
        "artifacts": artifacts,
        "reference": reference,
        "provenance": provenance(general=True),
    })
    (out / MANIFEST).write_text(manifest.to_json())
    open_bundle(out)
    return out


def int8_artifacts(graph, onnx_fp32: Path, onnx_io: dict, calib: np.ndarray, out: Path,
                   options: ExportOptions, root: Path) -> dict[str, dict]:
    """The int8 files of the asked formats, quantized with the calibration inputs ``calib``
    (drawn from the training clips under ``root``): their manifest artifact entries. A
    per-machine bundle and a general learned one quantize alike."""
    from harken.export.onnx_export import quantize_int8
    artifacts: dict[str, dict] = {}
    if "onnx" in options.formats:
        log.info("ONNX int8 (onnxruntime static quantization)")
        path = quantize_int8(onnx_fp32, calib, out / "model.int8.onnx",
                             options.calibration_method)
        artifacts["onnx-int8"] = {**_entry(out, path), **onnx_io,
                                  "calibration": _calibration(options, root)}
    if "tflite" in options.formats:
        log.info("TFLite int8 (TensorFlow converter)")
        from harken.export.tflite_export import export_int8, tflite_io
        path = export_int8(graph, calib, out / "model.int8.tflite", options.int8_io)
        artifacts["tflite-int8"] = {**_entry(out, path), **tflite_io(path),
                                    "calibration": _calibration(options, root)}
    return artifacts


def _calibration(options: ExportOptions, root: Path) -> dict:
    return {"windows": options.calibration_windows, "method": options.calibration_method,
            "from": f"training clips under {root}", "seed": options.seed}


def tar_path_of(bundle: Path) -> Path:
    """Where ``--tar`` writes a bundle's tarball: beside it, BUNDLE.tar.gz."""
    return bundle.with_name(bundle.name + ".tar.gz")


def make_tar(bundle: Path, tar_path: Path | None = None, force: bool = False,
             arcname: str | None = None) -> Path:
    """One .tar.gz of the bundle folder, to copy to a device: written beside its place and
    renamed in when whole; one already there is refused unless ``force``. ``arcname``: the
    folder's name inside (default its own; the export names the bundle's place while the
    folder is still being built under a private name)."""
    tar_path = tar_path or tar_path_of(bundle)
    with building(tar_path, force=force, what="tarball", folder=False, keep=(bundle,)) as new:
        with tarfile.open(new, "w:gz") as tar:
            tar.add(bundle, arcname=arcname or bundle.name)
    return tar_path


def tarball_manifest(tar_path: Path) -> bytes | None:
    """The manifest.json bytes inside a bundle tarball (None: none there, or unreadable)."""
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name == MANIFEST and \
                        len(Path(member.name).parts) <= 2:
                    f = tar.extractfile(member)
                    return f.read() if f is not None else None
    except (OSError, tarfile.TarError, EOFError):
        return None
    return None


def check_bundle_and_tarball(path: Path) -> None:
    """A bundle folder and its ``BUNDLE.tar.gz`` beside it (``--tar``) must hold one bundle:
    ``export --tar --force`` places the tarball first and the folder second, so a kill
    between them leaves a new tarball beside the old folder, which this refuses in one
    line (docs/export.md). Either one alone is taken as it is."""
    path = Path(path)
    if path.is_dir():
        folder, tar = path, tar_path_of(path)
    elif path.name.endswith(".tar.gz"):
        folder, tar = path.with_name(path.name[:-len(".tar.gz")]), path
    else:
        return
    if not (folder / MANIFEST).is_file() or not tar.is_file():
        return
    if tarball_manifest(tar) != (folder / MANIFEST).read_bytes():
        raise ExportError(f"{tar} and {folder} hold different bundles (an export --tar "
                          f"interrupted between them?); export again with --tar --force")
