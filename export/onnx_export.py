"""ONNX artifacts: fp32 (one file, static shapes) and int8 (onnxruntime static
quantization, QDQ format, per-channel weights), calibrated on training windows."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.graphs import InferenceGraph

INPUT_NAME = "input"
OPSET = 17
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}


def export_fp32(graph: InferenceGraph, path: Path) -> Path:
    """The folded graph as one .onnx file, batch 1, outputs named by their semantics."""
    example = torch.zeros(graph.input_shape)
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) handles these plain conv/linear graphs
        # without onnxscript; torch warns that it is deprecated.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=list(graph.outputs), opset_version=OPSET,
                          do_constant_folding=True, dynamo=False, external_data=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return path


class _Windows(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray) -> None:
        self._it = iter(inputs)

    def get_next(self) -> dict | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


def quantize_int8(fp32: Path, calibration_inputs: np.ndarray, path: Path,
                  method: str = "minmax") -> Path:
    """Static int8 QDQ quantization with per-channel weights. ``calibration_inputs`` are
    model inputs (each one window in the graph's input shape) from normal training clips."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, "
                         f"got {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), _Windows(calibration_inputs),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION_METHODS[method],
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})
    return path
