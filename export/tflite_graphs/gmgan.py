"""GMGAN's device graph in TensorFlow (export/tflite_export.py GRAPHS; docs/export.md
"GMGAN"): the [-1, 1] scaling, the encoder, and for the ``latent`` score the decoder and
the auxiliary encoder. Every layer is one of the shared GAN layers (Conv2d, GroupNorm,
LeakyReLU, ConvTranspose2d, ReLU, Tanh), so only the graph's wiring is here."""

from __future__ import annotations

from collections.abc import Callable

from harken.export.graphs import InferenceGraph
from harken.export.tflite_export import _layer, _tf, graph, input_signature
from harken.training.models.gmgan import GmganDevice


@graph(GmganDevice)
def gmgan_function(g: InferenceGraph, shape: tuple[int, ...]) -> Callable:
    tf = _tf()
    net: GmganDevice = g.module
    low, high = float(net.low), float(net.high)
    encoder = _layer(net.encoder)
    decoder = _layer(net.decoder) if net.decoder is not None else None
    aux = _layer(net.aux_encoder) if net.aux_encoder is not None else None

    def flat(x):
        # a 1 x 1 NHWC map: its channels are the code, in torch's order
        return tf.reshape(x, [-1, x.shape[-1]])

    @tf.function(input_signature=input_signature(shape), autograph=False)
    def run(x):
        scaled = tf.clip_by_value(2.0 * (x - low) / (high - low) - 1.0, -1.0, 1.0)
        z = flat(encoder(scaled))
        if decoder is None:
            return {"latent": z}
        z_aux = flat(aux(decoder(tf.reshape(z, [-1, 1, 1, z.shape[-1]]))))
        return {"latent": z, "latent_aux": z_aux}
    return run
