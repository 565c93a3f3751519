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

from harken.common.errors import UsageError
from harken.export.graphs import InferenceGraph

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
                  method: str = "minmax", compacted: bool = True) -> Path:
    """Static int8 QDQ quantization with per-channel weights. ``calibration_inputs`` are
    model inputs (each one window in the graph's input shape) from normal training clips."""
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, "
                         f"got {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        onnx.save(additions_as_sums(onnx.load(str(prepared))), str(prepared))
        # uint8 activations: with int8 ones onnxruntime on x86 leaves every convolution
        # whose input is shared (a residual block's) as a float Conv between Dequantize and
        # Quantize, which arm64 runs as an integer QLinearConv; uint8 x int8 runs integer on
        # both (docs/export.md "Same scores on x86 and arm64")
        quantize_static(str(prepared), str(path), _Windows(calibration_inputs),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION_METHODS[method],
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})
    if compacted:
        model = compact(onnx.load(str(path)))
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return path


def additions_as_sums(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Add becomes a two-input Sum: the same float addition (broadcasting alike from
    opset 8 on; the export writes 17), which onnxruntime neither quantizes nor fuses. Its
    integer QLinearAdd rounds differently on x86 and arm64, one step apart now and then, and
    a deep network (a ResNet's residual additions) carries the step to the scores;
    Dequantize, a float add and Quantize give the same bits on every CPU. Only float
    additions: Sum has no integer form (an index computation stays an Add)."""
    typed = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*typed.value_info, *typed.input, *typed.output]}
    for node in model.graph.node:
        if node.op_type == "Add" and node.domain in ("", "ai.onnx") \
                and types.get(node.output[0]) == onnx.TensorProto.FLOAT:
            node.op_type = "Sum"
    return model


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Bytes that carry no information, removed without changing a single output value:
    the all-zero int32 zero points of quantized biases (DequantizeLinear's zero point is
    optional and defaults to 0), and the long generated tensor names (``..._quantized``,
    ``..._zero_point``), replaced by short ids. On the width-0.5 MobileNetV2 these were
    about an eighth of the int8 file."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3:
            zp = inits.get(node.input[2])
            if zp is not None and zp.data_type == onnx.TensorProto.INT32 and \
                    not onnx.numpy_helper.to_array(zp).any():
                del node.input[2]
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    fixed = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in fixed:
            return name
        return short.setdefault(name, f"t{len(short):x}")
    for init in g.initializer:
        init.name = rename(init.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i:x}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    del g.value_info[:]          # shape annotations: recomputed by the runtime
    return model
