"""Inference backends: onnxruntime, or a TFLite interpreter (ai-edge-litert, falling back to
tflite-runtime). One window in, the bundle's named outputs out, always float32: int8 I/O
is quantized and dequantized here with the model's own scales."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from harken.agent.model.bundle import Artifact, BundleError


class Backend(Protocol):
    name: str
    input_shape: tuple[int, ...]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One input (``input_shape``, float32) -> outputs by semantics (float32)."""
        ...


def open_backend(artifact: Artifact, threads: int = 1) -> Backend:
    """The backend of the artifact's runtime (``BACKENDS``, after the classes)."""
    return BACKENDS[artifact.runtime](artifact, threads)


class BackendPool:
    """Backends opened once per artifact and shared by the machines that run the same one.
    A pool belongs to one thread: an ONNX session or TFLite interpreter runs one call at a
    time, so machines on different inputs (threads) get a pool each."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], Backend] = {}

    def get(self, artifact: Artifact, threads: int = 1) -> Backend:
        key = (str(artifact.path.resolve()), threads)
        if key not in self._open:
            self._open[key] = open_backend(artifact, threads)
        return self._open[key]


class OnnxBackend:
    def __init__(self, artifact: Artifact, threads: int = 1) -> None:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(artifact.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:      # noqa: BLE001 - onnxruntime raises its own types
            raise BundleError(f"{artifact.path}: onnxruntime cannot load it ({exc})") from None
        inp = self.session.get_inputs()[0]
        if tuple(inp.shape) != artifact.input_shape:
            raise BundleError(f"{artifact.path}: model input shape is {list(inp.shape)}, the "
                              f"manifest's 'artifacts.{artifact.kind}.input.shape' says "
                              f"{list(artifact.input_shape)}")
        have = {o.name for o in self.session.get_outputs()}
        self.outputs = {}
        for semantics, entry in artifact.outputs.items():
            name = entry.get("name", semantics)
            if name not in have:
                raise BundleError(f"{artifact.path}: no output '{name}' (manifest "
                                  f"'artifacts.{artifact.kind}.outputs.{semantics}'); the "
                                  f"model has {sorted(have)}")
            self.outputs[semantics] = name
        self.input_name = inp.name
        self.input_shape = artifact.input_shape
        self.name = f"onnxruntime {ort.__version__}"
        self._names = list(self.outputs.values())

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        got = self.session.run(self._names, {self.input_name: x.astype(np.float32, copy=False)})
        return dict(zip(self.outputs, got))


def interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise BundleError("no TFLite interpreter installed: pip install 'harken[tflite]' "
                          "(ai-edge-litert), or tflite-runtime on old images") from None


class TfliteBackend:
    def __init__(self, artifact: Artifact, threads: int = 1) -> None:
        interpreter, lib = interpreter_class()
        try:
            self.it = interpreter(model_path=str(artifact.path), num_threads=threads)
            self.it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{artifact.path}: the TFLite interpreter cannot load it "
                              f"({exc})") from None
        inp = self.it.get_input_details()[0]
        if tuple(int(d) for d in inp["shape"]) != artifact.input_shape:
            raise BundleError(f"{artifact.path}: model input shape is {inp['shape'].tolist()}, "
                              f"the manifest's 'artifacts.{artifact.kind}.input.shape' says "
                              f"{list(artifact.input_shape)}")
        if np.dtype(inp["dtype"]).name != artifact.input_dtype:
            raise BundleError(f"{artifact.path}: model input is {np.dtype(inp['dtype']).name}, "
                              f"the manifest's 'artifacts.{artifact.kind}.input.dtype' says "
                              f"{artifact.input_dtype}")
        self.input_index = inp["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = inp["quantization"]
        details = {d["index"]: d for d in self.it.get_output_details()}
        self.outputs = {}
        for semantics, entry in artifact.outputs.items():
            index = entry.get("index")
            if index not in details:
                raise BundleError(f"{artifact.path}: no output tensor {index} (manifest "
                                  f"'artifacts.{artifact.kind}.outputs.{semantics}.index')")
            d = details[index]
            self.outputs[semantics] = (index, np.dtype(d["dtype"]), d["quantization"])
        self.input_shape = artifact.input_shape
        self.name = lib

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.input_dtype == np.int8:
            scale, zero = self.input_quant
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        self.it.set_tensor(self.input_index, x.astype(self.input_dtype, copy=False))
        self.it.invoke()
        out = {}
        for semantics, (index, dtype, (scale, zero)) in self.outputs.items():
            y = self.it.get_tensor(index)
            out[semantics] = ((y.astype(np.float32) - zero) * scale if dtype == np.int8
                              else y.astype(np.float32, copy=False))
        return out


# artifact runtime (the part of its kind before "-") -> backend: a new runtime is a class
# with ``run`` and one line here
BACKENDS: dict[str, type] = {"onnx": OnnxBackend, "tflite": TfliteBackend}
