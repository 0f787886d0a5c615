"""The R2D2 pixel sampler: offsets, query validity, and AP on constructed correspondences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delfi.train.losses import SamplerConfig, quantized_ap, sample_scores
from delfi.train.losses.sampler import neighbourhood_offsets, sample_positions


def identity_flow(B: int, H: int, W: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([x, y])[None].repeat(B, 1, 1, 1)


def random_descriptors(B: int, D: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, D, H, W, generator=g), dim=1)


def test_official_offsets():
    pos, neg = neighbourhood_offsets(SamplerConfig())
    assert pos.shape == (29, 2) and neg.shape == (80, 2)
    d2p, d2n = (pos**2).sum(1), (neg**2).sum(1)
    assert d2p.max() <= 9 and ((d2n >= 25) & (d2n <= 49)).all()
    assert [0, 0] in pos.tolist()


def test_random_positions_count_and_border():
    g = torch.Generator().manual_seed(1)
    y, x = sample_positions(-8, 192, 192, 16, generator=g)
    assert y.numel() == 160 * 160 // 64
    assert y.min() >= 16 and y.max() < 176 and x.min() >= 16 and x.max() < 176


def test_identity_flow_identical_descriptors_give_ap_one():
    B, H, W = 2, 48, 48
    desc = random_descriptors(B, 64, H, W)
    g = torch.Generator().manual_seed(0)
    s = sample_scores(desc, desc, identity_flow(B, H, W), config=SamplerConfig(), generator=g)
    n = (H - 32) * (W - 32) // 64
    assert s.shape == (B, n) and s.scores.shape == (B * n, 1 + 80 + B * n)
    assert s.valid.all()
    assert torch.allclose(s.scores[:, 0], torch.ones(B * n))
    ap = quantized_ap(s.scores, s.labels)
    assert torch.allclose(ap, torch.ones_like(ap))
    # distractors of the query's image within neg_d of its target are ignored, with score 0
    assert s.ignore[:, :81].sum() == 0 and (s.scores[s.ignore] == 0).all()


def test_translation_is_followed_and_shuffling_drops_ap():
    B, H, W, dx, dy = 2, 48, 48, 3, -2
    desc1 = random_descriptors(B, 64, H, W, seed=1)
    desc2 = torch.roll(desc1, shifts=(dy, dx), dims=(2, 3))  # image 2 = image 1 moved by (dx, dy)
    flow = identity_flow(B, H, W) + torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1)
    config = SamplerConfig(subq=4, subd_neg=4)
    s = sample_scores(desc1, desc2, flow, config=config)
    assert s.valid.all()
    assert torch.allclose(quantized_ap(s.scores, s.labels), torch.ones(s.valid.numel()))
    # same grid for queries and distractors: each query's target (and grid points within neg_d)
    # in its own image is ignored: 1 + 4 neighbours at distance 4 (< 5); none in the other image
    n = s.shape[1]
    assert (s.ignore.sum(1) >= 1).all() and s.ignore[:n, 81 + n :].sum() == 0
    shuffled = desc2.flatten(2)[:, :, torch.randperm(H * W, generator=torch.Generator().manual_seed(0))].view_as(desc2)
    t = sample_scores(desc1, shuffled, flow, config=config)
    assert quantized_ap(t.scores, t.labels).mean() < 0.3


def test_invalid_flow_queries_are_excluded():
    B, H, W = 1, 64, 64
    desc = random_descriptors(B, 16, H, W)
    flow = identity_flow(B, H, W)
    mask = torch.ones(B, H, W, dtype=torch.bool)
    flow[:, :, :, :20] = float("nan")  # left band: non-finite flow
    mask[:, 40:, :] = False  # bottom band: masked out
    flow[:, 0, :, 40:] += 30  # right band: target outside image 2
    config = SamplerConfig(subq=2)
    s = sample_scores(desc, desc, flow, mask, config=config)
    ys, xs = torch.meshgrid(torch.arange(16, 48, 2), torch.arange(16, 48, 2), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    expected = (xs >= 20) & (ys < 40) & (xs < 40)
    assert torch.equal(s.valid, expected)
    assert torch.isfinite(s.scores).all()


def test_reliability_is_the_mean_of_both_images():
    B, H, W = 1, 40, 40
    desc = random_descriptors(B, 16, H, W)
    rel1, rel2 = torch.full((B, 1, H, W), 0.2), torch.full((B, 1, H, W), 0.6)
    s = sample_scores(desc, desc, identity_flow(B, H, W), None, rel1, rel2, SamplerConfig(subq=4))
    assert torch.allclose(s.reliability, torch.full_like(s.reliability, 0.4))


def test_same_generator_same_samples_and_gradients_flow():
    B, H, W = 2, 40, 40
    desc1 = random_descriptors(B, 16, H, W, 2).requires_grad_(True)
    desc2 = random_descriptors(B, 16, H, W, 3).requires_grad_(True)
    flow = identity_flow(B, H, W)
    a = sample_scores(desc1, desc2, flow, generator=torch.Generator().manual_seed(5))
    b = sample_scores(desc1, desc2, flow, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.scores, b.scores)
    quantized_ap(a.scores, a.labels).mean().backward()
    assert torch.isfinite(desc1.grad).all() and desc1.grad.abs().sum() > 0 and desc2.grad.abs().sum() > 0


def test_bad_settings_refused():
    with pytest.raises(ValueError, match="pos_d < neg_d"):
        SamplerConfig(pos_d=5, neg_d=5)
    with pytest.raises(ValueError, match="border"):
        sample_positions(-8, 30, 30, 16)
