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
