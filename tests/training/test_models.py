"""Network shapes and structure: the dense AE layer for layer, MobileNetV2 widths and GAMP."""

import pytest
import torch
from torch import nn

from harken.training.classifier import ClassifierNet, window_vectors
from harken.training.models.cosine_head import CosineHead, adacos_scale
from harken.training.models.dense_ae import DenseAE
from harken.training.models.mobilenetv2 import MobileNetV2, make_divisible


def test_dense_ae_is_the_dcase_baseline_layer_for_layer():
    ae = DenseAE()
    linears = [m for m in ae.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(640, 128)] + [(128, 128)] * 3 + [(128, 8), (8, 128)] + [(128, 128)] * 3 + [(128, 640)])
    layers = list(ae.encoder) + list(ae.decoder)
    for i, m in enumerate(layers[:-1]):
        if isinstance(m, nn.Linear):              # every hidden Linear, bottleneck included
            assert isinstance(layers[i + 1], nn.BatchNorm1d)
            assert isinstance(layers[i + 2], nn.ReLU)
    assert isinstance(layers[-1], nn.Linear)      # plain output
    assert ae(torch.randn(4, 640)).shape == (4, 640)
    z, recon = ae.eval().encode_decode(torch.randn(3, 640))
    assert z.shape == (3, 8) and recon.shape == (3, 640)


@pytest.mark.parametrize("width", [0.35, 0.5, 1.0])
def test_mobilenetv2_shapes_per_width(width):
    net = MobileNetV2(n_classes=6, width=width).eval()
    logits, emb = net(torch.randn(2, 1, 128, 64))
    assert logits.shape == (2, 6)
    assert emb.shape == (2, 1280)
    assert net.features[0].out_channels == make_divisible(32 * width)


def test_gamp_is_global_average_plus_global_max():
    net = MobileNetV2(n_classes=3, width=0.35).eval()
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        f = net.features(x)
        expected = f.mean(dim=(2, 3)) + f.amax(dim=(2, 3))
        assert torch.allclose(net.embed(x), expected)
        logits, _ = net(x)
        assert torch.allclose(logits, net.head(expected))


def test_mobilenetv2_rejects_bad_width_and_single_class():
    with pytest.raises(ValueError, match="width"):
        MobileNetV2(4, width=0.6)
    with pytest.raises(ValueError, match="2 classes"):
        MobileNetV2(1)


def test_classifier_net_standardises_with_fixed_buffers():
    net = ClassifierNet(4, 0.35, mean=-40.0, std=10.0).eval()
    x = torch.randn(2, 1, 128, 64) * 10 - 40
    with torch.no_grad():
        assert torch.allclose(net(x)[0], net.cnn((x + 40.0) / 10.0)[0])
    assert set(dict(net.named_buffers())) >= {"mean", "std"}


def test_window_vectors_are_frame_major_5_frame_vectors():
    x = torch.arange(2 * 3 * 7, dtype=torch.float32).reshape(2, 1, 3, 7)   # mels 3, frames 7
    v = window_vectors(x)
    assert v.shape == (2, 3, 15)
    # vector 1 of sample 0 = frames 1..5, each frame's 3 mels contiguous
    expected = x[0, 0, :, 1:6].T.reshape(-1)
    assert torch.equal(v[0, 1], expected)


def test_adacos_scale_by_hand():
    # sqrt(2) * ln(C - 1): C = 34 -> 1.4142136 * 3.4965076 = 4.9448084
    assert adacos_scale(34) == pytest.approx(4.9448084, abs=1e-6)
    with pytest.raises(ValueError, match="2 classes"):
        adacos_scale(1)


def test_cosine_head_logits_are_scaled_cosines_to_class_directions():
    torch.manual_seed(0)
    head = CosineHead(in_dim=12, embedding_dim=5, n_classes=4)
    pooled = torch.randn(3, 12)
    logits, emb = head(pooled)
    assert emb.shape == (3, 5) and logits.shape == (3, 4)
    e = emb[1] / emb[1].norm()
    c = head.centres[2] / head.centres[2].norm()
    assert logits[1, 2].detach().item() == pytest.approx(head.scale * float(e @ c), abs=1e-5)
    assert logits.abs().max() <= head.scale + 1e-5
    # the logits see directions only: scaling the input changes the embedding, not them
    logits2, emb2 = head(3.0 * pooled)
    assert torch.allclose(logits2, logits, atol=1e-5) and torch.allclose(emb2, 3 * emb)


def test_classifier_net_heads_give_their_embeddings():
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        logits, emb = ClassifierNet(6, 0.35, head="adacos", embedding_dim=32).eval()(x)
        assert logits.shape == (2, 6) and emb.shape == (2, 32)
        net = ClassifierNet(6, 0.35, head="softmax").eval()
        logits, emb = net(x)
        assert torch.allclose(emb, net.pooled(x)) and emb.shape == (2, 1280)
    assert net.cosine is None
    with pytest.raises(ValueError, match="head"):
        ClassifierNet(6, 0.35, head="arcface")


def test_dual_input_net_reads_mels_with_the_cnn_and_the_mean_spectrum_with_its_branch():
    torch.manual_seed(0)
    net = ClassifierNet(4, 0.35, mean=-30.0, std=10.0, embedding_dim=8, n_mels=16,
                        n_freqs=24).eval()
    x = torch.randn(3, 1, 16 + 24, 32)
    with torch.no_grad():
        logits, emb = net(x)
        (l_cnn, e_cnn), (l_spec, e_spec) = net.branches(x)
        assert logits.shape == (3, 4) and emb.shape == (3, 16)
        torch.testing.assert_close(emb, torch.cat([e_cnn, e_spec], dim=1))
        torch.testing.assert_close(logits, l_cnn + l_spec)
        # changing the mel rows moves only the CNN half
        y = x.clone()
        y[:, :, :16] += torch.randn_like(y[:, :, :16])
        _, emb_y = net(y)
        torch.testing.assert_close(emb_y[:, 8:], emb[:, 8:])
        moved = (emb_y[:, :8] - emb[:, :8]).abs().max()
        assert moved > 1e-3 * emb[:, :8].abs().max()       # an untrained CNN's outputs are tiny
        # the spectrum branch sees the window's mean spectrum only: the frames' order does
        # not matter to it, their mean does
        z = x.clone()
        z[:, :, 16:] = z[:, :, 16:].flip(dims=[3])
        torch.testing.assert_close(net(z)[1][:, 8:], emb[:, 8:])
        z[:, :, 16:] += 3.0
        assert not torch.allclose(net(z)[1][:, 8:], emb[:, 8:])


def test_spectrum_branch_standardises_each_bin_and_floors_a_constant_one():
    from harken.training.models.spectrum_branch import SpectrumBranch
    branch = SpectrumBranch(3, embedding_dim=4)
    spectra = torch.tensor([[-10.0, 0.0, 5.0], [-20.0, 0.0, 7.0], [-30.0, 0.0, 9.0]])
    branch.set_statistics(spectra)
    torch.testing.assert_close(branch.mean, torch.tensor([-20.0, 0.0, 7.0]))
    assert branch.std[0] == pytest.approx(10.0) and branch.std[2] == pytest.approx(2.0)
    assert branch.std[1] == pytest.approx(2.0)      # the median spread, not ~0


def test_dual_input_net_refuses_the_cosine_head():
    with pytest.raises(ValueError, match="one linear head per branch"):
        ClassifierNet(4, 0.35, head="adacos", n_mels=16, n_freqs=24)
