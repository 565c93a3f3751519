"""The TensorFlow re-expression of the device graphs computes what torch computes, for
every head and the dense AE (random weights and inputs, no training needed)."""

import numpy as np
import pytest
import torch

from harken.export.graphs import InferenceGraph, fold_batchnorm
from harken.export.tflite_export import nhwc_shape, tf_function
from harken.training.classifier import ClassifierNet
from harken.training.models.dense_ae import DenseAE


def randomise_batchnorm(net):
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("kind", ["softmax", "adacos", "dual", "ae"])
def test_tensorflow_graph_matches_torch(kind):
    if kind == "ae":
        net, shape, outputs = randomise_batchnorm(DenseAE()), (1, 640), ("reconstruction",)
    elif kind == "dual":       # 128 mel rows, then 40 spectrum rows
        net = ClassifierNet(5, 0.35, mean=-30.0, std=12.0, embedding_dim=16, n_mels=128,
                            n_freqs=40)
        net.spectrum.mean.uniform_(-40.0, -20.0)
        net.spectrum.std.uniform_(5.0, 15.0)
        net = randomise_batchnorm(net)
        shape, outputs = (1, 1, 168, 64), ("logits", "embedding")
    else:
        net = randomise_batchnorm(ClassifierNet(5, 0.35, mean=-30.0, std=12.0, head=kind,
                                                embedding_dim=16))
        shape, outputs = (1, 1, 128, 64), ("logits", "embedding")
    graph = InferenceGraph(fold_batchnorm(net), shape, outputs, None)
    fn = tf_function(graph)
    x = (np.random.default_rng(1).standard_normal(shape) * 12 - 30).astype(np.float32)
    got = {k: v.numpy() for k, v in fn(x.reshape(nhwc_shape(shape))).items()}
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    ref = ref if isinstance(ref, tuple) else (ref,)
    for name, r in zip(outputs, ref):
        np.testing.assert_allclose(got[name], r.numpy(), rtol=1e-4, atol=1e-4 * np.abs(r.numpy()).max())


def _randomise_groupnorm(net):
    """GroupNorm affines away from (1, 0), so a wrong channel order would show."""
    g = torch.Generator().manual_seed(2)
    for m in net.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g) - 0.5
    return net.eval()


def _nchw(t):
    return t.numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.numpy()


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(np.abs(want).max(), 1e-6))


def test_gan_layers_match_torch_on_a_small_aegan_generator_and_critic():
    """The layers AEGAN-AD and GMGAN share (GroupNorm, LeakyReLU, ConvTranspose2d with its
    padding crop, Tanh; GMGAN's nets are these same pyramids): the encoder, decoder and
    critic features of a random AeganGenerator(size=16) in TF against torch."""
    from harken.export.tflite_export import _layer
    from harken.training.models.aegan import AeganDiscriminator, AeganGenerator
    torch.manual_seed(3)
    gen = _randomise_groupnorm(AeganGenerator(size=16, channels=4, latent=8))
    critic = _randomise_groupnorm(AeganDiscriminator(size=16, channels=4))
    x = torch.from_numpy(np.random.default_rng(4).uniform(-1, 1, (1, 1, 16, 16)).astype(np.float32))
    xt = _nchw(x)
    with torch.no_grad():
        z = gen.encoder(x)
        _close(_layer(gen.encoder)(xt).numpy(), _nchw(z))
        _close(_layer(gen.decoder)(_nchw(z)).numpy(), _nchw(gen.decoder(z)))
        _close(_layer(critic.features)(xt).numpy(), _nchw(critic.features(x)))


def test_group_norm_of_several_groups_clamp_and_flatten_keep_torchs_order():
    from harken.export.tflite_export import _layer
    torch.manual_seed(5)
    net = _randomise_groupnorm(torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, 1, 1), torch.nn.GroupNorm(3, 6), torch.nn.LeakyReLU(0.1),
        torch.nn.ConvTranspose2d(6, 4, 3, 2, 1, bias=True), torch.nn.Hardtanh(-0.5, 0.5),
        torch.nn.Flatten()))
    x = torch.randn(1, 1, 5, 7)
    with torch.no_grad():
        _close(_layer(net)(_nchw(x)).numpy(), net(x).numpy())


def test_a_new_method_registers_its_layers_and_its_graph():
    """LAYERS and GRAPHS are where a method plugs in: an unknown layer is refused naming
    the registry, a registered one is used, and a registered graph maker is asked first."""
    from harken.export import tflite_export as te

    class Twice(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    class Device(torch.nn.Module):
        def forward(self, x):
            return x + 1, x.mean()
    with pytest.raises(NotImplementedError, match="register one in .*LAYERS"):
        te._layer(Twice())
    te.LAYERS[Twice] = lambda m: (lambda x: 2 * x)
    try:
        assert float(te._layer(torch.nn.Sequential(Twice(), Twice()))(np.float32(1.5))) == 6.0
    finally:
        te.LAYERS.pop(Twice)

    @te.graph(Device)
    def make(graph, shape):
        import tensorflow as tf

        @tf.function(input_signature=te.input_signature(shape), autograph=False)
        def run(x):
            return {"latent": x + 1, "latent_aux": tf.reduce_mean(x, axis=1, keepdims=True)}
        return run
    try:
        fn = te.tf_function(InferenceGraph(Device(), (1, 3), ("latent", "latent_aux"), None))
        out = fn(np.array([[1.0, 2.0, 3.0]], np.float32))
        np.testing.assert_allclose(out["latent"].numpy(), [[2.0, 3.0, 4.0]])
        np.testing.assert_allclose(out["latent_aux"].numpy(), [[2.0]])
    finally:
        te.GRAPHS.pop(Device)


@pytest.mark.parametrize("fallback", [False, True])
def test_a_graph_may_let_int8_tflite_keep_float_builtins(fallback):
    """``tflite_float_fallback`` adds the float builtins to what the converter may use;
    without it the model is int8 builtins only."""
    import tensorflow as tf
    from types import SimpleNamespace
    from harken.export.tflite_export import _quantized
    converter = SimpleNamespace(target_spec=SimpleNamespace(), convert=lambda: b"model")
    assert _quantized(converter, lambda: iter(()), False, fallback) == b"model"
    ops = converter.target_spec.supported_ops
    assert ops[0] == tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    assert (tf.lite.OpsSet.TFLITE_BUILTINS in ops) == fallback
