"""R2D2 losses on hand-computed cases: quantised AP, reliability (AP / HardNet), repeatability
similarities, peakiness, and the combined loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from delfi.train.losses import (
    SIMILARITIES,
    R2D2Loss,
    R2D2LossConfig,
    SampledScores,
    ap_reliability_loss,
    hardnet_reliability_loss,
    patch_similarity,
    peakiness,
    peaky_loss,
    quantized_ap,
    r2d2_loss,
    repeatability_loss,
)


def exact_ap(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of each row: mean over positives of the precision at their rank."""
    out = []
    for s, y in zip(scores, labels.bool()):
        order = torch.argsort(s, descending=True)
        hits = y[order].double()
        precision = hits.cumsum(0) / torch.arange(1, len(s) + 1, dtype=torch.float64)
        out.append((precision * hits).sum() / hits.sum())
    return torch.stack(out)


def dense_quantized_ap(scores: torch.Tensor, labels: torch.Tensor, nq: int) -> torch.Tensor:
    """The official formulation: every bin's triangular kernel evaluated on every score."""
    a = nq - 1
    centres = 1 - torch.arange(nq, dtype=torch.float64) / a  # bin 0 = 1, bin nq-1 = 0
    x = scores.double()[:, None, :]
    q = (1 - a * (x - centres[None, :, None]).abs()).clamp(min=0)
    q[:, 0] = torch.where(x[:, 0] >= 1, torch.ones_like(q[:, 0]), q[:, 0])  # saturated ends
    q[:, -1] = torch.where(x[:, 0] <= 0, torch.ones_like(q[:, -1]), q[:, -1])
    every, pos = q.sum(-1), (q * labels.double()[:, None, :]).sum(-1)
    precision = pos.cumsum(-1) / (1e-16 + every.cumsum(-1))
    return (precision * pos / pos.sum(-1, keepdim=True)).sum(-1)


def identity_flow(B: int, H: int, W: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([x, y])[None].repeat(B, 1, 1, 1)


# ---------------------------------------------------------------- quantised AP


def test_ap_is_one_when_positives_come_first():
    scores = torch.tensor([[0.95, 0.9, 0.3, 0.1, -0.4], [1.0, 0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(quantized_ap(scores, labels), torch.ones(2), atol=1e-6, rtol=0)


def test_ap_hand_computed_two_bins():
    # nq 2: bins centred at 1 and 0. Positive at 1 -> bin 0; negative at 0.5 -> half in each bin.
    # precision(bin 0) = 1 / 1.5, all the positive mass is in bin 0 -> AP = 2/3.
    ap = quantized_ap(torch.tensor([[1.0, 0.5]]), torch.tensor([[True, False]]), nq=2)
    assert ap.item() == pytest.approx(2 / 3, abs=1e-7)
    # a positive ranked below every negative with a 0 score: AP = 1 / 3 (three scores in bin 1)
    ap = quantized_ap(torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[True, False, False]]), nq=2)
    assert ap.item() == pytest.approx(1 / 3, abs=1e-7)


def test_ap_equals_the_dense_official_formulation():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 40, generator=g) * 1.4 - 0.2  # some below 0 and above 1
    labels = torch.rand(6, 40, generator=g) < 0.3
    labels[:, 0] = True
    for nq in (2, 5, 20):
        torch.testing.assert_close(quantized_ap(scores, labels, nq=nq).double(), dense_quantized_ap(scores, labels, nq))


def test_ap_approaches_exact_ap_as_bins_get_finer():
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(64, 60, generator=g) < 0.2
    labels[:, 0] = True
    scores = (torch.rand(64, 60, generator=g) + 0.6 * labels).clamp(max=1) * 0.999  # positives higher, no ties
    exact = exact_ap(scores, labels)
    errors = [(quantized_ap(scores, labels, nq=nq).double() - exact).abs().mean().item() for nq in (10, 40, 160, 640)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.01 and errors[0] > 2 * errors[-1]


def test_ap_gradients_are_finite_and_autocast_gives_float32():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(4, 30, generator=g).requires_grad_(True)
    labels = torch.rand(4, 30, generator=g) < 0.3
    labels[:, 0] = True
    quantized_ap(scores, labels).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    # on the whole, raising the positives raises AP and raising the negatives lowers it
    assert scores.grad[labels].sum() > 0 and scores.grad[~labels].sum() < 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ap = quantized_ap(scores.bfloat16(), labels)
    assert ap.dtype == torch.float32


# ---------------------------------------------------------------- reliability losses


def samples(scores, reliability=None, ignore=None) -> SampledScores:
    scores = torch.as_tensor(scores, dtype=torch.float32)
    labels = torch.zeros_like(scores, dtype=torch.bool)
    labels[:, 0] = True
    ignore = torch.zeros_like(labels) if ignore is None else torch.as_tensor(ignore)
    rel = None if reliability is None else torch.as_tensor(reliability, dtype=torch.float32)
    return SampledScores(scores, labels, ignore, torch.ones(len(scores), dtype=torch.bool), rel, (1, len(scores)), 1)


def test_ap_reliability_loss_formula():
    perfect = [[1.0, 0.0, 0.1]]
    assert ap_reliability_loss(samples(perfect, [1.0])).item() == pytest.approx(0.0, abs=1e-7)
    assert ap_reliability_loss(samples(perfect, [0.0])).item() == pytest.approx(0.5)
    # AP 2/3 (nq 2), r 0.25: 1 - 2/3 * 0.25 - 0.75 * 0.5
    loss = ap_reliability_loss(samples([[1.0, 0.5]], [0.25]), nq=2)
    assert loss.item() == pytest.approx(1 - (2 / 3) * 0.25 - 0.75 * 0.5, abs=1e-6)
    # invalid queries are left out of the mean
    s = samples([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])
    s.valid = torch.tensor([True, False])
    assert ap_reliability_loss(s).item() == pytest.approx(0.0, abs=1e-7)


def test_hardnet_loss_is_zero_for_identical_positives_and_far_negatives():
    far = [[1.0, 0.0, -0.5, 0.2]]  # d_pos 0, hardest negative cos 0.2 -> d 1.26 > margin 1
    assert hardnet_reliability_loss(samples(far), use_reliability=False).item() == pytest.approx(0.0, abs=1e-6)
    assert hardnet_reliability_loss(samples(far, [1.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert hardnet_reliability_loss(samples(far, [0.0]), base=0.5).item() == pytest.approx(0.5)
    # hand case: positive cos 0.5 (d 1), hardest negative cos 0.5 (d 1): t = margin = 1
    close = [[0.5, 0.5, 0.0]]
    assert hardnet_reliability_loss(samples(close), use_reliability=False).item() == pytest.approx(1.0, abs=1e-6)
    # an ignored distractor is not a negative
    ignored = hardnet_reliability_loss(samples(close, ignore=[[False, True, False]]), use_reliability=False)
    assert ignored.item() == pytest.approx(1 + 1 - math.sqrt(2), abs=1e-5)


# ---------------------------------------------------------------- repeatability


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_identical_maps_give_zero_loss(similarity):
    g = torch.Generator().manual_seed(3)
    rep = torch.rand(2, 1, 32, 32, generator=g) * 0.9 + 0.05
    loss = repeatability_loss(rep, rep.clone(), identity_flow(2, 32, 32), similarity=similarity, N=8)
    assert abs(loss.item()) < 1e-6


def test_two_patch_hand_computed_values():
    # a 2x3 map, N 2, stride 1: two patches (columns 0-1 and 1-2), unfold order r0c0 r0c1 r1c0 r1c1
    rep1 = torch.tensor([[[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]])
    rep2 = torch.ones(1, 1, 2, 3)
    flow = identity_flow(1, 2, 3)
    a = [torch.tensor([1.0, 2, 1, 2]), torch.tensor([2.0, 3, 2, 3])]
    cos = [6 / (math.sqrt(10) * 2), 10 / (math.sqrt(26) * 2)]
    # L1-normalised: a1 = (1,2,1,2)/6, a2 = (2,3,2,3)/10, b = (1,1,1,1)/4
    l1 = [x / x.sum() for x in a]
    b = torch.full((4,), 0.25)
    dice = [(2 * (x * b).sum() / ((x * x).sum() + (b * b).sum())).item() for x in l1]
    jac = [((x * b).sum() / ((x * x).sum() + (b * b).sum() - (x * b).sum())).item() for x in l1]
    cz = [torch.minimum(x, b).sum().item() for x in l1]  # 2 sum min / sum(a + b), sums 1 + 1
    assert cz == pytest.approx([2 / 6 + 0.5, 0.4 + 0.5])  # (1/6+1/4+1/6+1/4), (0.2+0.25+0.2+0.25)
    chord = [1 - ((x.sqrt() - b.sqrt()) ** 2).sum().item() for x in l1]
    expected = {"cosim": cos, "dice": dice, "jaccard": jac, "czekanowski": cz, "squared_chord": chord}
    for similarity, values in expected.items():
        loss = repeatability_loss(rep1, rep2, flow, similarity=similarity, N=2)
        assert loss.item() == pytest.approx(1 - sum(values) / 2, abs=1e-6), similarity


def test_patch_norm_none_dice_is_scale_sensitive():
    a = torch.tensor([[1.0], [1.0]])
    assert patch_similarity(a, 2 * a, "dice", "none").item() == pytest.approx(0.8)
    assert patch_similarity(a, 2 * a, "dice").item() == pytest.approx(1.0)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_repeatability_is_differentiable(similarity):
    g = torch.Generator().manual_seed(4)
    rep1 = torch.rand(1, 1, 24, 24, generator=g).requires_grad_(True)
    rep2 = torch.rand(1, 1, 24, 24, generator=g).requires_grad_(True)
    mask = torch.ones(1, 24, 24, dtype=torch.bool)
    mask[:, :, :10] = False
    flow = identity_flow(1, 24, 24) + 0.3
    repeatability_loss(rep1, rep2, flow, mask, similarity=similarity, N=8).backward()
    for t in (rep1, rep2):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert (rep1.grad[..., :10] == 0).all()  # invalid pixels get no gradient


def test_invalid_pixels_are_ignored_consistently():
    g = torch.Generator().manual_seed(5)
    rep1, rep2 = torch.rand(1, 1, 16, 24, generator=g), torch.rand(1, 1, 16, 24, generator=g)
    flow = identity_flow(1, 16, 24)
    mask = torch.ones(1, 16, 24, dtype=torch.bool)
    mask[:, :, 16:] = False  # the last 8 columns: the last patch column (N 8, stride 4) is fully invalid
    base = repeatability_loss(rep1, rep2, flow, mask, N=8)
    # what lies under invalid pixels does not matter, in either image
    changed1, changed2 = rep1.clone(), rep2.clone()
    changed1[..., 16:] = 0.99
    changed2[..., 16:] = 0.01
    assert repeatability_loss(changed1, changed2, flow, mask, N=8).item() == pytest.approx(base.item(), abs=1e-6)
    # an all-True mask is the plain (official) mean, and NaN flow counts as masked
    assert repeatability_loss(rep1, rep2, flow, torch.ones_like(mask), N=8).item() == pytest.approx(
        repeatability_loss(rep1, rep2, flow, None, N=8).item(), abs=1e-7
    )
    nan_flow = flow.clone()
    nan_flow[:, :, :, 16:] = float("nan")
    assert repeatability_loss(rep1, rep2, nan_flow, None, N=8).item() == pytest.approx(base.item(), abs=1e-6)
    # the documented weighting: masked patches, each weighted by its valid fraction
    p1, p2 = F.unfold(rep1 * mask[:, None], 8, stride=4), F.unfold(rep2 * mask[:, None], 8, stride=4)
    w = F.unfold(mask[:, None].float(), 8, stride=4).mean(1)
    sim = patch_similarity(p1, p2)
    assert base.item() == pytest.approx(1 - ((sim * w).sum() / w.sum()).item(), abs=1e-6)


def test_peakiness():
    constant = torch.full((1, 1, 40, 40), 0.5)
    assert peaky_loss(constant, constant, N=8, padding="exclude").item() == pytest.approx(1.0, abs=1e-6)
    official = peaky_loss(constant, constant, N=8).item()
    assert 0.9 < official < 1.0  # the zero padding of the average pools makes borders look peaky
    peak = torch.zeros(1, 1, 40, 40)
    peak[..., 20, 20] = 1.0
    # avgpool3 -> a 3x3 block of 1/9; maxpool9 -> 1/9 on the 11x11 pixels within 5 of the peak;
    # avgpool9 spreads the total mass 1 over the map: mean(max - avg) = (121/9 - 1) / 1600
    for padding in ("exclude", "official"):
        assert peakiness(peak, N=8, padding=padding).item() == pytest.approx((121 / 9 - 1) / 1600, rel=1e-5)
    assert peaky_loss(peak, peak, N=8).item() < 1.0


# ---------------------------------------------------------------- combined loss


def fake_outputs(B: int, H: int, W: int, seed: int, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(B, 32, H, W, generator=g).requires_grad_(requires_grad)
    rel_logit = torch.randn(B, 1, H, W, generator=g).requires_grad_(requires_grad)
    rep_logit = torch.randn(B, 1, H, W, generator=g).requires_grad_(requires_grad)
    outputs = {
        "descriptors": F.normalize(raw, dim=1),
        "reliability": torch.sigmoid(rel_logit),
        "repeatability": torch.sigmoid(rep_logit),
    }
    return outputs, (raw, rel_logit, rep_logit)


@pytest.mark.parametrize(
    "overrides", [{}, {"reliability": "hardnet", "repeatability": "dice"}, {"repeatability": "squared_chord"}]
)
def test_combined_loss_parts_and_gradients(overrides):
    out1, leaves1 = fake_outputs(2, 48, 48, 0, True)
    out2, leaves2 = fake_outputs(2, 48, 48, 1, True)
    config = R2D2LossConfig.from_mapping({"N": 8, **overrides})
    mask = torch.ones(2, 48, 48, dtype=torch.bool)
    mask[:, :5] = False
    losses = R2D2Loss(config)(out1, out2, identity_flow(2, 48, 48), mask, torch.Generator().manual_seed(0))
    assert set(losses) == {"total", "reliability", "repeatability", "peaky"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert losses["total"].item() == pytest.approx(sum(losses[k].item() for k in ("reliability", "repeatability", "peaky")), abs=1e-6)
    losses["total"].backward()
    for leaf in leaves1 + leaves2:
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_weights_and_bf16_autocast():
    out1, _ = fake_outputs(1, 40, 40, 2)
    flow = identity_flow(1, 40, 40)
    losses = r2d2_loss(out1, out1, flow, None, {"N": 8, "peaky_weight": 0, "repeatability_weight": 2.0})
    assert losses["peaky"].item() == 0
    assert losses["total"].item() == pytest.approx(losses["reliability"].item() + 2 * losses["repeatability"].item())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = r2d2_loss({k: v.bfloat16() for k, v in out1.items()}, {k: v.bfloat16() for k, v in out1.items()}, flow, None, {"N": 8})
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in bf.values())


def test_config_is_strict():
    with pytest.raises(ValueError, match="reliability='triplet' is not one of ap, hardnet"):
        R2D2LossConfig(reliability="triplet")
    with pytest.raises(ValueError, match="unknown key"):
        R2D2LossConfig.from_mapping({"nbins": 20})
    with pytest.raises(ValueError, match="unknown sampler key"):
        R2D2LossConfig.from_mapping({"sampler": {"radius": 3}})
    assert R2D2LossConfig.from_mapping({"sampler": {"subq": 4}}).sampler.subq == 4
    with pytest.raises(ValueError, match="even"):
        R2D2LossConfig(N=7)


@pytest.mark.parametrize("reliability", ["ap", "hardnet"])
def test_descriptor_term_keeps_descriptors_learning_where_reliability_has_collapsed(reliability):
    """With reliability ~0 everywhere the reliability loss leaves the descriptors almost no gradient;
    ``descriptor_weight`` adds the plain AP (or unweighted triplet) loss, which does not depend on it."""
    def descriptor_gradient(weight: float) -> tuple[float, dict]:
        out1, (raw1, _, _) = fake_outputs(2, 48, 48, 0, True)
        out2, _ = fake_outputs(2, 48, 48, 1, True)
        collapsed = {**out1, "reliability": out1["reliability"] * 1e-4}
        config = {"N": 8, "reliability": reliability, "descriptor_weight": weight, "repeatability_weight": 0, "peaky_weight": 0}
        losses = r2d2_loss(collapsed, {**out2, "reliability": out2["reliability"] * 1e-4}, identity_flow(2, 48, 48), None,
                           config, torch.Generator().manual_seed(0))
        losses["total"].backward()
        return raw1.grad.abs().sum().item(), losses

    without, plain = descriptor_gradient(0.0)
    with_term, losses = descriptor_gradient(1.0)
    assert "descriptor" not in plain and set(losses) == {"total", "reliability", "repeatability", "peaky", "descriptor"}
    assert losses["total"].item() == pytest.approx(losses["reliability"].item() + losses["descriptor"].item(), abs=1e-6)
    assert losses["reliability"].item() == pytest.approx(plain["reliability"].item(), abs=1e-6)
    assert with_term > 100 * without
