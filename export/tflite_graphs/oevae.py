"""OEVAE's TensorFlow mappings (docs/export.md "OEVAE"): the ResNet-18 layers its
extractor adds to the shared ones (BasicBlock, MaxPool2d, AdaptiveAvgPool2d(1)) and the
device graph (standardisation, features -> ``embedding``, VAE encoder -> ``latent``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harken.export.graphs import InferenceGraph
from harken.export.tflite_export import _layer, _tf, graph, input_signature, layer
from harken.training.models.oevae import BasicBlock, OevaeDevice


@layer(BasicBlock)
def _basic_block(m: BasicBlock) -> Callable:
    """relu(body(x) + shortcut(x)); the batch norms are folded into the convolutions."""
    tf = _tf()
    body, shortcut = _layer(m.body), _layer(m.shortcut)
    return lambda x: tf.nn.relu(body(x) + shortcut(x))


@layer(nn.MaxPool2d)
def _max_pool(m: nn.MaxPool2d) -> Callable:
    """torch pads with -inf on both sides; here the padding is explicit zeros, which is
    exact only on a map that is never negative: the pool must follow a ReLU, as ResNet's
    stem pool does (TF's "SAME" would pad the far side more at stride 2)."""
    tf = _tf()

    def pair(v) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
    (kh, kw), (sh, sw), (ph, pw) = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    if m.ceil_mode or pair(m.dilation) != (1, 1):
        raise NotImplementedError("MaxPool2d with ceil_mode or dilation")
    pad = [[0, 0], [ph, ph], [pw, pw], [0, 0]]

    def pool(x):
        if ph or pw:
            x = tf.pad(x, pad)
        return tf.nn.max_pool2d(x, [kh, kw], [sh, sw], "VALID")
    return pool


@layer(nn.AdaptiveAvgPool2d)
def _global_avg_pool(m: nn.AdaptiveAvgPool2d) -> Callable:
    """Only the global pool (output size 1): the mean over height and width, kept 1 x 1 so
    that Flatten needs no transpose."""
    tf = _tf()
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    if tuple(size) != (1, 1):
        raise NotImplementedError(f"AdaptiveAvgPool2d({m.output_size}): only output size 1")
    return lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=True)


@graph(OevaeDevice)
def _oevae(g: InferenceGraph, shape: tuple[int, ...]):
    tf = _tf()
    net: OevaeDevice = g.module
    features, encoder = _layer(net.features), _layer(net.encoder)
    mean, inv_std = float(net.mean), 1.0 / float(net.std)

    @tf.function(input_signature=input_signature(shape), autograph=False)
    def run(x):
        e = features((x - mean) * inv_std)
        return {"embedding": e, "latent": encoder(e)}
    return run
