"""AEGAN-AD's device graph in TensorFlow (training/models/aegan.py ``AeganDevice``): the dB
scaling and clamp, then the family's networks from the layers tflite_export.py maps
(Conv2d, GroupNorm, LeakyReLU, ConvTranspose2d, ReLU, Tanh). The image has one channel, so
the NHWC patch and its reconstruction flatten in torch's (mels, frames) order; the latent
code and the embedding are 1 x 1 maps (docs/export.md "AEGAN-AD")."""

from __future__ import annotations

from collections.abc import Callable

from harken.export.graphs import InferenceGraph
from harken.export.tflite_export import _layer, _tf, graph, input_signature
from harken.training.models.aegan import AeganDevice


@graph(AeganDevice)
def aegan_function(graph_: InferenceGraph, shape: tuple[int, ...]) -> Callable:
    tf = _tf()
    net: AeganDevice = graph_.module
    low, high = float(net.low), float(net.high)

    def scale(x):
        return tf.clip_by_value(2.0 * (x - low) / (high - low) - 1.0, -1.0, 1.0)

    if net.family == "d":
        features = _layer(net.features)

        @tf.function(input_signature=input_signature(shape), autograph=False)
        def run_d(x):
            e = features(scale(x))
            return {"embedding": tf.reshape(e, [-1, e.shape[-1]])}
        return run_d

    encoder, decoder = _layer(net.generator.encoder), _layer(net.generator.decoder)

    def encode(p):
        z = encoder(p)                                   # (n, 1, 1, latent)
        return tf.reshape(z, [-1, z.shape[-1]])

    def decode(z):
        return decoder(tf.reshape(z, [-1, 1, 1, z.shape[-1]]))

    if net.family == "x":
        @tf.function(input_signature=input_signature(shape), autograph=False)
        def run_x(x):
            r = decode(encode(scale(x)))                 # (n, mels, frames, 1)
            return {"reconstruction": tf.reshape(r, [-1, r.shape[1] * r.shape[2]])}
        return run_x

    @tf.function(input_signature=input_signature(shape), autograph=False)
    def run_z(x):
        z = encode(scale(x))
        return {"latent": z, "latent_aux": encode(decode(z))}
    return run_z
