"""How a .tflite file's input and outputs are written into a manifest, read back from the
model itself: shape, dtype and, for int8 tensors, the scale and zero point. Shared by the
converter (export/tflite_export.py) and the third-party import (export/wrap.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harken.export.graphs import ExportError


def open_interpreter(path: Path):
    from harken.agent.model.backends import interpreter_class
    interpreter, _ = interpreter_class()
    try:
        return interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"{path}: not a TFLite model the interpreter can load ({exc})") from None


def tensor_entry(details: dict, **fields) -> dict:
    """``fields`` + dtype, and scale / zero point when the tensor is int8."""
    entry = {**fields, "dtype": np.dtype(details["dtype"]).name}
    if entry["dtype"] == "int8":
        entry["scale"] = float(details["quantization"][0])
        entry["zero_point"] = int(details["quantization"][1])
    return entry


def input_entry(it) -> dict:
    inp = it.get_input_details()[0]
    return tensor_entry(inp, name=inp["name"], shape=[int(d) for d in inp["shape"]])


def output_entry(details: dict) -> dict:
    return tensor_entry(details, index=int(details["index"]))
