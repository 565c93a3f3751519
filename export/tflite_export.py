"""int8 TFLite artifacts through TensorFlow's own converter.

The folded torch graph is re-expressed with TensorFlow ops (NHWC), weights copied as
constants, and ``tf.lite.TFLiteConverter`` quantizes it to full integer with a
representative dataset of training windows. Why not a generic ONNX -> TF converter: the
device graphs use a short list of op kinds (Linear, Conv2d, depthwise Conv2d, ReLU, ReLU6,
add, GAMP pooling, L2 normalisation, mean over time; for the generative detectors GroupNorm,
LeakyReLU, ConvTranspose2d, Tanh, Hardtanh, Flatten), so the mapping is short and checked
against torch by tests/export/test_tflite_graph.py, while the generic converters pin TensorFlow and numpy
versions that fight torch and onnxruntime in one environment (docs/export.md has the
comparison). TensorFlow is imported
only here, and only the ``export`` extra installs it.

A new method plugs in without editing this file: a module in export/tflite_graphs/ (every
module there is imported before a graph is converted) registers its layers in ``LAYERS``
and, where its graph is more than one Sequential, its graph in ``GRAPHS``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import pkgutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.nn.functional as F  # noqa: N812
from torch import nn

from harken.export.graphs import InferenceGraph, WindowMoments
from harken.export.tflite_io import input_entry, open_interpreter, output_entry
from harken.training.classifier import ClassifierNet
from harken.training.models.cosine_head import CosineHead
from harken.training.models.mobilenetv2 import InvertedResidual

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf():
    import tensorflow as tf
    return tf


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The TFLite input shape of a torch input shape (NCHW images become NHWC)."""
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


# A layer's TensorFlow builder: the torch module (folded, eval mode) -> a function of an
# NHWC (or vector) tensor computing it.
LayerBuilder = Callable[[nn.Module], Callable]
LAYERS: dict[type, LayerBuilder] = {}
"""Torch layer type -> its TensorFlow builder, consulted by ``_layer`` (by the module's
class and its bases) for any layer it does not map itself. A new method registers its
layers here (``LAYERS[BasicBlock] = build``, or ``@layer(BasicBlock)``), from a module in
export/tflite_graphs/, and checks them against torch in tests/export/test_tflite_graph.py."""

# A graph's TensorFlow maker: (graph, NHWC input shape) -> a tf.function with one float
# input named "input" that returns {output name: tensor} in the graph's ``outputs``.
GraphMaker = Callable[[InferenceGraph, tuple[int, ...]], Callable]
GRAPHS: dict[type, GraphMaker] = {}
"""Device module type -> its tf.function maker, consulted first by ``tf_function`` (by the
module's class and its bases). A new method whose device module is not one Sequential
(several outputs, a scaling in front) registers its maker here (``@graph(AeganDevice)``),
from a module in export/tflite_graphs/; ``input_signature(shape)`` gives its signature."""


def layer(cls: type) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator: register ``build`` as the TensorFlow builder of torch layer ``cls``."""
    def put(build: LayerBuilder) -> LayerBuilder:
        LAYERS[cls] = build
        return build
    return put


def graph(cls: type) -> Callable[[GraphMaker], GraphMaker]:
    """Decorator: register ``make`` as the tf.function maker of device module ``cls``."""
    def put(make: GraphMaker) -> GraphMaker:
        GRAPHS[cls] = make
        return make
    return put


def input_signature(shape: tuple[int, ...]) -> list:
    """The tf.function input signature every graph keeps: one float input named input."""
    tf = _tf()
    return [tf.TensorSpec(shape, tf.float32, name="input")]


@functools.cache
def _registered() -> None:
    """Import every module of export/tflite_graphs/ once: each registers its LAYERS/GRAPHS."""
    from harken.export import tflite_graphs
    for info in pkgutil.iter_modules(tflite_graphs.__path__):
        importlib.import_module(f"{tflite_graphs.__name__}.{info.name}")


def _lookup(table: dict[type, Callable], obj: object) -> Callable | None:
    """The entry of ``obj``'s class, or of its nearest base class that has one."""
    return next((table[c] for c in type(obj).__mro__ if c in table), None)


def _layer(m: nn.Module) -> Callable:
    """A TensorFlow function (NHWC) computing the torch module ``m`` (folded, eval mode)."""
    tf = _tf()
    if isinstance(m, nn.Sequential):
        parts = [_layer(x) for x in m]

        def seq(x):
            for p in parts:
                x = p(x)
            return x
        return seq
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return lambda x: x
    if isinstance(m, nn.ReLU):
        return tf.nn.relu
    if isinstance(m, nn.ReLU6):
        return tf.nn.relu6
    if isinstance(m, nn.Linear):
        w = tf.constant(_np(m.weight).T)
        b = tf.constant(_np(m.bias)) if m.bias is not None else None
        return lambda x: tf.matmul(x, w) + b if b is not None else tf.matmul(x, w)
    if isinstance(m, InvertedResidual):
        body = _layer(m.conv)
        return (lambda x: x + body(x)) if m.use_residual else body
    if isinstance(m, nn.Conv2d):
        return _conv(m)
    _registered()
    build = _lookup(LAYERS, m)
    if build is not None:
        return build(m)
    raise NotImplementedError(f"no TFLite mapping for {type(m).__name__} (register one in "
                              f"harken.export.tflite_export.LAYERS)")


def _conv(m: nn.Conv2d) -> Callable:
    tf = _tf()
    kh, kw = m.kernel_size
    ph, pw = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
    stride = [1, m.stride[0], m.stride[1], 1]
    w = _np(m.weight)                                   # (out, in / groups, kh, kw)
    b = tf.constant(_np(m.bias)) if m.bias is not None else tf.constant(
        np.zeros(m.out_channels, np.float32))
    pad = [[0, 0], [ph, ph], [pw, pw], [0, 0]]
    # torch pads symmetrically; TF's "SAME" pads the far side more at stride 2, so pad here
    padded = (lambda x: tf.pad(x, pad)) if (ph or pw) else (lambda x: x)
    if m.groups == 1:
        k = tf.constant(w.transpose(2, 3, 1, 0))        # HWIO
        return lambda x: tf.nn.conv2d(padded(x), k, stride, "VALID") + b
    if m.groups == m.in_channels == m.out_channels:
        k = tf.constant(w.transpose(2, 3, 0, 1))        # (kh, kw, channels, 1)
        return lambda x: tf.nn.depthwise_conv2d(padded(x), k, stride, "VALID") + b
    raise NotImplementedError(f"grouped convolution with {m.groups} groups")


def tf_function(graph: InferenceGraph):
    """A tf.function of the graph with one NHWC (or vector) float input and a dict of named
    outputs (the signature the TFLite model keeps)."""
    tf = _tf()
    net = graph.module
    shape = nhwc_shape(graph.input_shape)
    _registered()
    make = _lookup(GRAPHS, net)
    if make is not None:
        return make(graph, shape)
    if isinstance(net, WindowMoments):
        frames, values = net.frames, net.values

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")], autograph=False)
        def run_moments(x):
            w = tf.reshape(x, (frames, values))
            mean = tf.reduce_mean(w, axis=0, keepdims=True)
            std = tf.sqrt(tf.reduce_mean(tf.square(w - mean), axis=0, keepdims=True))
            return {"moments": tf.concat([mean, std], axis=1)}
        return run_moments
    if isinstance(net, ClassifierNet):
        features = _layer(net.cnn.features)
        mean, std = float(net.mean), float(net.std)
        if net.spectrum is not None:
            return _dual_function(net, shape, features)
        if isinstance(net.cosine, CosineHead):
            head = net.cosine
            project = _layer(head.project)
            centres = tf.constant(_np(F.normalize(head.centres, dim=1)).T)
            scale = float(head.scale)

            def classify(pooled):
                emb = project(pooled)
                return scale * tf.matmul(tf.math.l2_normalize(emb, axis=1), centres), emb
        else:
            linear = _layer(net.cnn.head)

            def classify(pooled):
                return linear(pooled), pooled

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")], autograph=False)
        def run(x):
            logits, emb = classify(_gamp(features((x - mean) * (1.0 / std))))
            return {"logits": logits, "embedding": emb}
        return run
    body = _layer(nn.Sequential(net.encoder, net.decoder))      # the dense AE

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")], autograph=False)
    def run_ae(x):
        return {"reconstruction": body(x)}
    return run_ae


def _gamp(f):
    """Global average plus global max pooling of an NHWC feature map (MobileNetV2.embed)."""
    tf = _tf()
    return tf.reduce_mean(f, axis=[1, 2]) + tf.reduce_max(f, axis=[1, 2])


def _dual_function(net: ClassifierNet, shape: tuple[int, ...], features: Callable):
    """The dual-input network (NHWC image: mels then spectrum bins as rows): the CNN over
    the mel rows, the spectrum branch over the mean of the spectrum rows, both heads."""
    tf = _tf()
    n_mels = net.n_mels
    mean, std = float(net.mean), float(net.std)
    project, body = _layer(net.project), _layer(net.spectrum.body)
    spec_mean, spec_inv = _np(net.spectrum.mean), 1.0 / _np(net.spectrum.std)
    heads = [_layer(h) for h in net.heads]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")], autograph=False)
    def run_dual(x):
        e_cnn = project(_gamp(features((x[:, :n_mels] - mean) * (1.0 / std))))
        spectra = tf.reduce_mean(x[:, n_mels:, :, 0], axis=2)
        e_spec = body((spectra - spec_mean) * spec_inv)
        return {"logits": heads[0](e_cnn) + heads[1](e_spec),
                "embedding": tf.concat([e_cnn, e_spec], axis=1)}
    return run_dual


# -- the generative detectors' layers (AEGAN-AD and GMGAN share them: docs/export.md) -----

@layer(nn.LeakyReLU)
def _leaky_relu(m: nn.LeakyReLU) -> Callable:
    tf = _tf()
    alpha = float(m.negative_slope)
    return lambda x: tf.nn.leaky_relu(x, alpha=alpha)


@layer(nn.Tanh)
def _tanh(m: nn.Tanh) -> Callable:
    return _tf().math.tanh


@layer(nn.Hardtanh)
def _hardtanh(m: nn.Hardtanh) -> Callable:
    """A clamp (``x.clamp(lo, hi)`` written as a layer)."""
    tf = _tf()
    lo, hi = float(m.min_val), float(m.max_val)
    return lambda x: tf.clip_by_value(x, lo, hi)


@layer(nn.Flatten)
def _flatten(m: nn.Flatten) -> Callable:
    """torch flattens NCHW: an NHWC map goes back to channel-first before the reshape, so
    the values come in torch's order (no transpose is made for a 1 x 1 map)."""
    tf = _tf()
    if (m.start_dim, m.end_dim) != (1, -1):
        raise NotImplementedError(f"Flatten({m.start_dim}, {m.end_dim})")

    def flat(x):
        if len(x.shape) == 4 and (x.shape[1] != 1 or x.shape[2] != 1):
            x = tf.transpose(x, [0, 3, 1, 2])
        return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
    return flat


@layer(nn.GroupNorm)
def _group_norm(m: nn.GroupNorm) -> Callable:
    """GroupNorm over an NHWC map: each group's mean and (biased) variance over height,
    width and its channels, then the per-channel affine. One group (AEGAN-AD's layer norm)
    needs no reshape."""
    tf = _tf()
    groups, eps = int(m.num_groups), float(m.eps)
    gamma = _np(m.weight) if m.affine else None
    beta = _np(m.bias) if m.affine else None

    def norm(x):
        _, h, w, c = x.shape
        g = tf.reshape(x, [-1, h, w, groups, c // groups]) if groups > 1 else x
        axes = [1, 2, 4] if groups > 1 else [1, 2, 3]
        mean = tf.reduce_mean(g, axis=axes, keepdims=True)
        centred = g - mean
        # centred * centred, not tf.square: the converter fuses square(x - mean) into
        # SQUARED_DIFFERENCE, whose int8 kernel lost most of the precision of GMGAN's codes
        var = tf.reduce_mean(centred * centred, axis=axes, keepdims=True)
        y = centred * tf.math.rsqrt(var + eps)
        y = tf.reshape(y, [-1, h, w, c]) if groups > 1 else y
        return y * gamma + beta if gamma is not None else y
    return norm


@layer(nn.ConvTranspose2d)
def _conv_transpose(m: nn.ConvTranspose2d) -> Callable:
    """A transposed convolution: TF's VALID one gives (H - 1) s + k rows, torch's removes
    ``padding`` from each side of that, so the result is cropped to match."""
    tf = _tf()
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or any(m.output_padding):
        raise NotImplementedError("ConvTranspose2d with groups, dilation or output_padding")
    kh, kw = m.kernel_size
    sh, sw = m.stride
    ph, pw = m.padding
    k = tf.constant(_np(m.weight).transpose(2, 3, 1, 0))     # (in, out, kh, kw) -> (kh, kw, out, in)
    b = _np(m.bias) if m.bias is not None else None
    cout = m.out_channels

    def up(x):
        n, h, w, _ = x.shape
        full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
        y = tf.nn.conv2d_transpose(x, k, [n if n is not None else tf.shape(x)[0], full_h, full_w, cout],
                                   [1, sh, sw, 1], "VALID")
        if ph or pw:
            y = y[:, ph:full_h - ph, pw:full_w - pw, :]
        return y + b if b is not None else y
    return up


def export_fp32(graph: InferenceGraph, path: Path) -> Path:
    """Float TFLite of the graph (a reference for the int8 one; no quantization)."""
    path.write_bytes(_saved_model_convert(graph, None, False))
    return path


def export_int8(graph: InferenceGraph, calibration_inputs: np.ndarray, path: Path,
                int8_io: bool = False) -> Path:
    """Full-integer int8 TFLite (int8 weights and activations). ``calibration_inputs`` are
    in the torch input shape; float I/O by default, int8 I/O with ``int8_io``."""
    path.write_bytes(_saved_model_convert(graph, calibration_inputs, int8_io))
    return path


@contextlib.contextmanager
def _root_logger_kept():
    """TensorFlow logs through absl, which calls ``logging.basicConfig()`` on its first
    message: a root handler that would print every later 'harken' line a second time.
    The root logger is put back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(h)
        root.setLevel(level)


def _saved_model_convert(graph: InferenceGraph, calibration_inputs: np.ndarray | None,
                         int8_io: bool) -> bytes:
    tf = _tf()
    fn = tf_function(graph)
    shape = nhwc_shape(graph.input_shape)

    def representative():
        for x in calibration_inputs:
            yield [np.ascontiguousarray(x, dtype=np.float32).reshape(shape)]

    with tempfile.TemporaryDirectory() as tmp, _root_logger_kept():
        # Through a SavedModel so that the TFLite model keeps the signature (named outputs).
        module = tf.Module()
        module.run = fn
        tf.saved_model.save(module, tmp, signatures={"serving_default": fn})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if calibration_inputs is None:
            return converter.convert()
        return _quantized(converter, representative, int8_io, graph.tflite_float_fallback)


def _quantized(converter, representative, int8_io: bool, float_fallback: bool = False) -> bytes:
    """Full-integer conversion; with ``float_fallback`` (the graph's
    ``tflite_float_fallback``) an op whose int8 kernel would not stay accurate may keep its
    float builtin instead of failing the conversion (docs/export.md)."""
    tf = _tf()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if float_fallback:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def tflite_io(path: Path) -> dict:
    """The manifest's input/outputs entry of a converted model, read back from the model;
    outputs by their signature names."""
    it = open_interpreter(path)
    outputs = {name: output_entry(d)
               for name, d in it.get_signature_runner().get_output_details().items()}
    return {"input": input_entry(it), "outputs": outputs}
