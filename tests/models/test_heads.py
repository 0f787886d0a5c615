"""DELF / DELG heads: shapes, the hand-checkable maths, and readiness for training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from delfi.models.heads import (
    ArcFaceHead,
    AttentionHead,
    Autoencoder,
    CosineSoftmax,
    GeM,
    LinearClassifier,
    Whitening,
    attention_pool,
)


def test_attention_head_shape_and_non_negative():
    torch.manual_seed(0)
    head = AttentionHead(in_channels=16, hidden=8).eval()
    x = torch.randn(2, 16, 5, 7) * 10
    scores = head(x)
    assert scores.shape == (2, 1, 5, 7)
    assert torch.all(scores >= 0)


def test_attention_head_batch_norm_parameters():
    with_bn = {name for name, _ in AttentionHead(16, 8, batch_norm=True).named_parameters()}
    without = {name for name, _ in AttentionHead(16, 8, batch_norm=False).named_parameters()}
    assert with_bn == {"conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "conv2.weight", "conv2.bias"}
    assert without == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}
    assert "bn.running_mean" in AttentionHead(16, 8).state_dict()
    assert not any(k.startswith("bn.") for k in AttentionHead(16, 8, batch_norm=False).state_dict())


def test_attention_head_default_sizes_and_training_step():
    head = AttentionHead()
    assert head.conv1.in_channels == 1024 and head.conv1.out_channels == 512 and head.conv2.out_channels == 1
    head = AttentionHead(8, 4)
    head(torch.randn(3, 8, 4, 4)).sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_attention_pool_hand_case():
    # 2 channels, 1 x 2 map: vectors (3, 4) and (0, 2), scores 2 and 1.
    features = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])  # (1, 2, 1, 2)
    scores = torch.tensor([[[[2.0, 1.0]]]])  # (1, 1, 1, 2)
    # normalised: (0.6, 0.8) * 2 + (0, 1) * 1 = (1.2, 2.6)
    total = torch.tensor([[1.2, 2.6]])
    torch.testing.assert_close(attention_pool(features, scores, reduce="sum"), total)
    torch.testing.assert_close(attention_pool(features, scores, reduce="mean"), total / 2)
    torch.testing.assert_close(attention_pool(features, scores), total / 2)  # TF's mean is the default
    with pytest.raises(ValueError, match="reduce"):
        attention_pool(features, scores, reduce="max")
    with pytest.raises(ValueError):
        attention_pool(features, scores[:, :, :, :1])


def test_autoencoder_shapes_and_linear_code():
    torch.manual_seed(0)
    ae = Autoencoder(in_channels=32, code=6)
    x = torch.randn(2, 32, 3, 4)
    code, recon = ae(x)
    assert code.shape == (2, 6, 3, 4) and recon.shape == (2, 32, 3, 4)
    assert torch.all(recon >= 0)  # decoder ReLU
    assert (code < 0).any()  # no activation on the code
    torch.testing.assert_close(code, ae.encode(x))
    torch.testing.assert_close(recon, ae.decode(code))
    default = Autoencoder()
    assert default.encoder.out_channels == 128 and default.decoder.out_channels == 1024


def test_gem_p1_is_mean():
    x = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))


def test_gem_p3_formula():
    x = torch.rand(2, 3, 4, 5) + 0.1
    expected = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    torch.testing.assert_close(GeM()(x), expected)
    # values below eps are clamped
    y = torch.full((1, 1, 2, 2), -1.0)
    torch.testing.assert_close(GeM(eps=1e-3)(y), torch.full((1, 1), 1e-3))


def test_gem_approaches_max_for_large_p():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 6, 6) * 5  # values up to 5: a naive x**p would overflow float32 at p = 200
    mx = x.amax(dim=(2, 3))
    errors = [(GeM(p=p)(x) - mx).abs().max().item() for p in (1.0, 10.0, 50.0, 200.0)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.05 * mx.max().item()
    assert torch.all(GeM(p=200.0)(x) <= mx + 1e-4)


def test_gem_learnable_p_gets_gradient():
    gem = GeM(p=3.0, learnable=True)
    assert [name for name, _ in gem.named_parameters()] == ["p"]
    gem(torch.rand(2, 3, 4, 4) + 0.1).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad) and gem.p.grad != 0
    fixed = GeM(p=3.0)
    assert list(fixed.parameters()) == [] and "p" in fixed.state_dict()


def test_whitening_shapes_and_normalisation():
    torch.manual_seed(0)
    w = Whitening(16, 8)
    y = w(torch.randn(5, 16))
    assert y.shape == (5, 8)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(5))
    raw = Whitening(16, 8, bias=False, normalize=False)
    assert raw.fc.bias is None
    x = torch.randn(5, 16)
    torch.testing.assert_close(raw(x), x @ raw.fc.weight.T)


def _arcface_with_weights(weight: torch.Tensor, **kwargs) -> ArcFaceHead:
    head = ArcFaceHead(weight.shape[1], weight.shape[0], **kwargs)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def test_arcface_margin_zero_is_scaled_cosine():
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, margin=0.0, scale=10.0)
    x = torch.randn(4, 8)
    expected = 10.0 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(x, torch.tensor([0, 1, 2, 3])), expected)
    torch.testing.assert_close(head(x), expected)


def test_arcface_hand_computed_target_logits():
    m, s = 0.5, 2.0
    # unit class weights along the axes of the plane
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    head = _arcface_with_weights(weight, margin=m, scale=s)
    angles = [0.3, 2.0, math.pi - 0.2]  # angle of each feature to class 0
    features = torch.tensor([[3 * math.cos(a), 3 * math.sin(a)] for a in angles])  # not unit: normalised
    labels = torch.tensor([0, 0, 0])
    logits = head(features, labels)
    cos = torch.tensor([[math.cos(a), math.sin(a), -math.cos(a)] for a in angles])
    expected = s * cos.clone()
    expected[0, 0] = s * math.cos(0.3 + m)  # theta <= pi - m: margin
    expected[1, 0] = s * math.cos(2.0 + m)  # theta = 2.0 <= pi - 0.5: margin
    # theta = pi - 0.2 > pi - m: unchanged (TF rule)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # non-target logits are untouched
    torch.testing.assert_close(logits[:, 1:], s * cos[:, 1:], atol=1e-6, rtol=1e-6)
    # without labels: plain scaled cosine
    torch.testing.assert_close(head(features), s * cos, atol=1e-6, rtol=1e-6)


def test_arcface_easy_margin_rule():
    m, s = 0.5, 1.0
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    head = _arcface_with_weights(weight, margin=m, scale=s, margin_rule="easy")
    angles = [0.3, 2.0]
    features = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    logits = head(features, torch.tensor([0, 0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(0.3 + m), abs=1e-6)
    assert logits[1, 0].item() == pytest.approx(math.cos(2.0), abs=1e-6)  # cos < 0: no margin
    with pytest.raises(ValueError, match="margin_rule"):
        ArcFaceHead(2, 2, margin_rule="curricular")


def test_arcface_defaults_and_training_step():
    head = ArcFaceHead(16, 7)
    assert head.margin == pytest.approx(0.1) and head.scale == pytest.approx(45.25)
    x = torch.randn(4, 16, requires_grad=True)
    labels = torch.tensor([0, 3, 6, 3])
    loss = F.cross_entropy(head(x, labels), labels)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all() and torch.isfinite(x.grad).all()
    # a feature exactly on its class weight (cos = 1) still has finite gradients
    head2 = _arcface_with_weights(torch.eye(3), margin=0.1, scale=1.0)
    x2 = torch.eye(3).clone().requires_grad_(True)
    F.cross_entropy(head2(x2, torch.arange(3)), torch.arange(3)).backward()
    assert torch.isfinite(x2.grad).all()


def test_cosine_softmax_and_linear_classifier():
    torch.manual_seed(0)
    cos_head = CosineSoftmax(8, 4, scale=3.0)
    x = torch.randn(5, 8)
    logits = cos_head(x)
    assert logits.shape == (5, 4) and logits.abs().max() <= 3.0 + 1e-5
    lin = LinearClassifier(8, 4)
    torch.testing.assert_close(lin(x, torch.zeros(5, dtype=torch.long)), lin.fc(x))
    F.cross_entropy(lin(x), torch.tensor([0, 1, 2, 3, 0])).backward()
    assert lin.fc.weight.grad is not None


def test_heads_move_with_the_module():
    modules = [AttentionHead(4, 2), Autoencoder(4, 2), GeM(learnable=True), GeM(), Whitening(4, 2),
               ArcFaceHead(4, 3), LinearClassifier(4, 3)]
    for module in modules:
        module.to(torch.float64)
        assert all(t.dtype == torch.float64 for t in [*module.parameters(), *module.buffers()]
                   if t.is_floating_point())
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    assert modules[0](x).dtype == torch.float64
    assert modules[3](x).dtype == torch.float64
