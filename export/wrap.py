"""``harken-export wrap``: a bundle around a model trained elsewhere.

A preset says what the foreign model expects and how to score it; the model file is copied
as it is (never converted), its input/output read back from the file itself. Preset
``dcase2020-ae``: the DCASE 2020 Task 2 baseline family (MLPerf Tiny's anomaly-detection
reference among them): 5 x 128 log-mel frames in, the reconstruction out, score = mean
squared error.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from harken.agent.model.bundle import open_bundle, sha256_file
from harken.agent.model.manifest import MANIFEST, SCHEMA_VERSION, Manifest
from harken.agent.features import preset
from harken.export.bundle import provenance
from harken.export.graphs import ExportError
from harken.export.tflite_io import input_entry, open_interpreter, output_entry

PRESETS = {
    # lowest: the least score the rule can give (a mean squared error is never negative)
    "dcase2020-ae": {"feature_preset": "dcase2020-ae", "rule": "mse", "output": "reconstruction",
                     "layout": "vector", "lowest": 0.0},
}


def check_threshold(preset_name: str, threshold: float | None) -> None:
    """A finite threshold the preset's rule can be below: NaN or infinity would make every
    interval normal (or anomalous) without a word, as the manifest's rule says; a value
    below the rule's least score (a negative MSE) would make every interval anomalous. The
    manifest itself takes negative thresholds, because other rules' scores (spectral-knn's
    standardised distances) can be negative (docs/export.md, wrap)."""
    if threshold is None:
        return
    if not math.isfinite(threshold):
        raise ExportError(f"--threshold {threshold}: expected a finite number")
    lowest = PRESETS[preset_name].get("lowest")
    if lowest is not None and threshold < lowest:
        raise ExportError(f"--threshold {threshold:g}: the '{preset_name}' preset's rule "
                          f"'{PRESETS[preset_name]['rule']}' never scores below {lowest:g}, so "
                          f"every interval would be anomalous; give a threshold of at least "
                          f"{lowest:g}")


def _io_tflite(path: Path, output: str) -> tuple[str, dict, dict]:
    it = open_interpreter(path)
    inputs, outputs = it.get_input_details(), it.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: preset expects one input and one output, the model has "
                          f"{len(inputs)} and {len(outputs)}")
    kind = "tflite-int8" if any(np.dtype(d["dtype"]) == np.int8
                                for d in it.get_tensor_details()) else "tflite-fp32"
    return kind, input_entry(it), {output: output_entry(outputs[0])}


def _io_onnx(path: Path, output: str) -> tuple[str, dict, dict]:
    import onnxruntime as ort
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:     # noqa: BLE001 - onnxruntime raises its own types
        raise ExportError(f"{path}: not an ONNX model onnxruntime can load ({exc})") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: preset expects one input and one output, the model has "
                          f"{len(inputs)} and {len(outputs)}")
    shape = inputs[0].shape
    if not all(isinstance(d, int) for d in shape):
        raise ExportError(f"{path}: input shape {shape} is not static; export it with batch 1")
    quantized = any(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul")
                    for n in _onnx_nodes(path))
    return ("onnx-int8" if quantized else "onnx-fp32",
            {"name": inputs[0].name, "shape": list(shape), "dtype": "float32"},
            {output: {"name": outputs[0].name}})


def _onnx_nodes(path: Path):
    import onnx
    return onnx.load(str(path)).graph.node


def wrap(model: Path, preset_name: str, out: Path, machine: str = "unknown",
         threshold: float | None = None) -> Path:
    if preset_name not in PRESETS:
        raise ExportError(f"--preset: unknown preset {preset_name!r}; known: {sorted(PRESETS)}")
    check_threshold(preset_name, threshold)
    if not model.is_file():
        raise ExportError(f"{model}: no such model file")
    p = PRESETS[preset_name]
    suffix = model.suffix.lower()
    if suffix == ".tflite":
        kind, inp, outputs = _io_tflite(model, p["output"])
    elif suffix == ".onnx":
        kind, inp, outputs = _io_onnx(model, p["output"])
    else:
        raise ExportError(f"{model}: expected a .tflite or .onnx file")
    spec = preset(p["feature_preset"])
    window = spec.window_frames * spec.n_mels
    if int(np.prod(inp["shape"])) != window:
        raise ExportError(f"{model}: input shape {inp['shape']} does not hold one "
                          f"'{preset_name}' window ({spec.window_frames} frames x "
                          f"{spec.n_mels} mels = {window} values)")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError(f"{out}: not empty; give a new folder for the bundle")
    target = out / f"model{suffix}"
    shutil.copyfile(model, target)
    manifest = Manifest.model_validate({
        "schema_version": SCHEMA_VERSION,
        "model": {"id": f"{model.stem}", "version": "imported", "method": f"imported {preset_name}",
                  "machine": machine, "sections": [0]},
        "feature_spec": spec.to_dict(),
        "input": {"window_frames": spec.window_frames, "n_mels": spec.n_mels,
                  "layout": p["layout"], "window_hop_frames": spec.window_hop},
        "outputs": [p["output"]],
        "scoring": {"rule": p["rule"], "output": p["output"], "sections": {"00": {}}},
        "aggregation": {"interval_s": 10.0, "reduce": "agent/model/rules/ ScoreRule.reduce over the "
                        "windows of one interval"},
        "normal_scores": {},
        "threshold": {"value": float(threshold) if threshold is not None else None,
                      "how": "given with --threshold" if threshold is not None else
                      "none: calibrate on site from normal operation before relying on alarms"},
        "artifacts": {kind: {"path": target.name, "size": target.stat().st_size,
                             "sha256": sha256_file(target), "input": inp, "outputs": outputs}},
        "arrays": {},
        "provenance": provenance(imported_from=str(model), preset=preset_name),
    })
    (out / MANIFEST).write_text(manifest.to_json())
    open_bundle(out)
    return out
