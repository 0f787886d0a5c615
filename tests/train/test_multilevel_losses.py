"""Multi-level attention keypoint losses on hand-computed cases: cell correspondences, neighbour
counts and distinctiveness targets, the distinctiveness, peakiness, triplet and reconstruction
losses, and the combined stage losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from delfi.train.losses.multilevel import (
    MultiLevelLoss,
    MultiLevelLossConfig,
    cell_correspondences,
    distinctiveness_loss,
    distinctiveness_targets,
    neighbour_counts,
    peakiness_loss,
    reconstruction_loss,
    triplet_margin_loss,
)


def identity_flow(B: int, H: int, W: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([x, y])[None].repeat(B, 1, 1, 1)


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def descriptor_map(rows: list[list[float]], h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    """(D, h, w) map whose flat cell k holds rows[k] (times ``scale``, to exercise normalisation)."""
    return (scale * torch.tensor(rows, dtype=torch.float32)).t().reshape(-1, h, w).contiguous()


# ---------------------------------------------------------------- correspondences


def test_identity_flow_maps_every_cell_to_itself():
    flow = identity_flow(2, 32, 32)
    pairs = cell_correspondences(flow, torch.ones(2, 32, 32, dtype=torch.bool), 8, (4, 4))
    assert len(pairs) == 2
    for idx1, idx2 in pairs:
        assert idx1.dtype == idx2.dtype == torch.long
        assert idx1.tolist() == list(range(16))
        assert idx2.tolist() == list(range(16))


def test_translation_by_one_cell_drops_the_cells_leaving_map_2():
    flow = identity_flow(1, 32, 32)
    flow[:, 0] += 8  # one cell to the right: the last column leaves map 2
    flow[:, 1] -= 8  # one cell up: the first row leaves map 2
    ((idx1, idx2),) = cell_correspondences(flow, None, 8, (4, 4))
    expected1 = [i * 4 + j for i in range(1, 4) for j in range(3)]
    assert idx1.tolist() == expected1
    assert idx2.tolist() == [k - 4 + 1 for k in expected1]


def test_mask_holes_at_the_interpolated_pixels_remove_cells():
    flow = identity_flow(1, 32, 32)
    mask = torch.ones(1, 32, 32, dtype=torch.bool)
    mask[0, 3, 4] = False  # one of the 4 pixels around cell (0, 0)'s centre (3.5, 3.5)
    mask[0, 12, 11] = False  # one of cell (1, 1)'s pixels (11 or 12 in each coordinate)
    mask[0, 0, 0] = False  # used by no cell centre
    mask[0, 16, 16] = False  # neither (centres lie at 3.5, 11.5, 19.5, 27.5)
    flow[0, 0, 28, 27] = float("nan")  # a pixel of cell (3, 3): non-finite flow is invalid too
    ((idx1, idx2),) = cell_correspondences(flow, mask, 8, (4, 4))
    expected = [k for k in range(16) if k not in (0, 5, 15)]
    assert idx1.tolist() == expected
    assert idx2.tolist() == expected


def test_out_of_map_targets_are_removed_and_map_size2_is_honoured():
    flow = identity_flow(1, 32, 32)
    flow[0, 0, :, :8] = -5.0  # column 0 points left of image 2
    ((idx1, idx2),) = cell_correspondences(flow, None, 8, (4, 4))
    assert idx1.tolist() == [k for k in range(16) if k % 4]
    # a smaller map 2 (2 x 2): only its cells remain, indexed with w2 = 2
    ((idx1, idx2),) = cell_correspondences(identity_flow(1, 32, 32), None, 8, (4, 4), map_size2=(2, 2))
    assert idx1.tolist() == [0, 1, 4, 5]
    assert idx2.tolist() == [0, 1, 2, 3]


def test_flow_is_sampled_bilinearly_and_rounded_to_the_nearest_cell():
    flow = identity_flow(1, 16, 16)
    # cell (0, 0) centre x = 3.5 between pixels 3 and 4: x flows 0 and 16 average to 8 -> cell 1
    # (nearest-pixel sampling would give cell 0 or cell 2)
    flow[0, 0, 3:5, 3] = 0.0
    flow[0, 0, 3:5, 4] = 16.0
    # cell (0, 1): +3.9 px stays in its cell, (0.4875 of a cell); cell (1, 1): +4.1 px moves on
    flow[0, 0, 3:5, 11:13] += 3.9
    flow[0, 0, 11:13, 11:13] += 4.1
    ((idx1, idx2),) = cell_correspondences(flow, None, 8, (2, 2))
    assert idx1.tolist() == [0, 1, 2]  # cell (1, 1) moved to column 2: outside the 2 x 2 map
    assert idx2.tolist() == [1, 1, 2]


def test_odd_stride_uses_only_the_centre_pixel():
    # stride 3: centres at integer pixels 1, 4, ...; a hole next to the centre is not used
    flow = identity_flow(1, 6, 6)
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    mask[0, 1, 2] = False
    mask[0, 4, 4] = False  # the centre of cell (1, 1)
    ((idx1, idx2),) = cell_correspondences(flow, mask, 3, (2, 2))
    assert idx1.tolist() == [0, 1, 2]
    assert idx2.tolist() == [0, 1, 2]


def test_receptive_field_offset_places_cells_on_integer_pixels():
    # a network whose cell 0 is centred on pixel 0 (ResNet layer2: 8 i): an 8 px shift is one cell,
    # a 3 px shift rounds back to the same cell and a 5 px shift to the next
    flow = identity_flow(1, 32, 32)
    flow[0, 0] += 8.0
    ((idx1, idx2),) = cell_correspondences(flow, None, 8, (4, 4), offset=0.0)
    assert idx1.tolist() == [k for k in range(16) if k % 4 != 3] and idx2.tolist() == [k + 1 for k in idx1.tolist()]
    for shift, step in ((3.0, 0), (5.0, 1)):
        flow = identity_flow(1, 32, 32)
        flow[0, 1] += shift
        ((idx1, idx2),) = cell_correspondences(flow, None, 8, (4, 4), offset=0.0)
        assert idx2.tolist() == [k + 4 * step for k in idx1.tolist()]
    # pixel 24 (cell 3's centre with offset 0) is inside a 25-px image; with D2-Net's 3.5 it would not be
    ((idx1, _),) = cell_correspondences(identity_flow(1, 25, 25), None, 8, (4, 4), offset=0.0)
    assert len(idx1) == 16


def test_cell_centres_outside_the_image_are_invalid():
    # a 3 x 3 map of stride 8 on a 20 x 20 image: the last row and column have centres at 19.5
    ((idx1, _),) = cell_correspondences(identity_flow(1, 20, 20), None, 8, (3, 3))
    assert idx1.tolist() == [0, 1, 3, 4]


# ---------------------------------------------------------------- neighbour counts, targets


def test_neighbour_counts_are_strict_at_the_margin():
    points = torch.tensor([[0.0], [2.0]])
    others = torch.tensor([[0.0], [0.5], [1.0], [3.0]])
    # 0: distances 0, 0.5, 1 (= margin, not counted), 3; 2: 2, 1.5, 1, 1 -> none below 1
    assert neighbour_counts(points, others, 1.0).tolist() == [2, 0]
    assert neighbour_counts(points, others, 1.0).dtype == torch.long
    # 2-D: from the origin, (3, 4) is exactly 5 away; (1, 1), (-3, -3) and the origin are closer
    pts = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    oth = torch.tensor([[3.0, 4.0], [1.0, 1.0], [4.0, 4.0], [-3.0, -3.0], [0.0, 0.0]])
    assert neighbour_counts(pts, oth, 5.0).tolist() == [3, 0]
    assert neighbour_counts(pts, oth, 5.0001).tolist() == [4, 0]


def test_neighbour_counts_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 8, generator=g), torch.randn(53, 8, generator=g)
    expected = (torch.cdist(a.double(), b.double()) < 3.5).sum(1)
    assert neighbour_counts(a, b, 3.5).tolist() == expected.tolist()
    assert neighbour_counts(a, b, 3.5, chunk_size=1).tolist() == expected.tolist()
    assert neighbour_counts(a, b, 3.5, chunk_size=10).tolist() == expected.tolist()
    assert neighbour_counts(a[:0], b, 1.0).shape == (0,)


def test_distinctiveness_targets():
    targets = distinctiveness_targets(torch.tensor([0, 15, 80]))
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets, torch.tensor([1.0, 0.5, 1 / 3]))
    torch.testing.assert_close(distinctiveness_targets(torch.tensor([1, 3]), tau=1.0), torch.tensor([0.5, 0.25]))


# ---------------------------------------------------------------- distinctiveness loss


def test_distinctiveness_loss_on_a_2x2_map():
    # unit descriptors at angles; Euclidean distance 2 sin(angle / 2) < 1 iff angle < 60 degrees
    enc1 = descriptor_map([unit(0), unit(0), unit(90), unit(180)], 2, 2, scale=3.0).requires_grad_()
    enc2 = descriptor_map([unit(0), unit(20), unit(90), unit(270)], 2, 2, scale=0.5).requires_grad_()
    idx1 = idx2 = torch.tensor([0, 2])
    # m1: cell 0 (0 deg) vs map 2 -> 0 and 20 deg: 2; cell 2 (90 deg) -> 90 only: 1
    # m2: cell 0 (0 deg) vs map 1 -> both 0 deg cells: 2; cell 2 (90 deg) -> 1
    # tau 1: targets 1/3 and 1/2 on both sides
    s1 = torch.tensor([[0.5, 9.0], [0.0, 9.0]], requires_grad=True)
    s2 = torch.tensor([[1.0, 9.0], [0.25, 9.0]], requires_grad=True)
    loss = distinctiveness_loss(enc1, enc2, s1, s2, idx1, idx2, margin=1.0, tau=1.0)
    # (|0.5 - 1/3| + |0 - 1/2|) / 2 + (|1 - 1/3| + |0.25 - 1/2|) / 2 = 1/3 + 11/24
    assert loss.item() == pytest.approx(19 / 24, abs=1e-6)
    loss.backward()
    # d/ds of the means of |s - t|: sign / 2 at the matched cells, 0 elsewhere
    torch.testing.assert_close(s1.grad, torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
    torch.testing.assert_close(s2.grad, torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
    assert enc1.grad is None and enc2.grad is None


def test_distinctiveness_loss_default_tau_and_empty_correspondences():
    enc1 = descriptor_map([unit(0), unit(0), unit(90), unit(180)], 2, 2)
    enc2 = descriptor_map([unit(0), unit(20), unit(90), unit(270)], 2, 2)
    s1, s2 = torch.zeros(2, 2), torch.zeros(1, 2, 2)  # (1, h, w) is accepted
    loss = distinctiveness_loss(enc1, enc2, s1, s2, torch.tensor([0]), torch.tensor([0]))
    assert loss.item() == pytest.approx(2 * 3**-0.25, abs=1e-6)  # counts 2 on both sides
    s1.requires_grad_()
    empty = torch.zeros(0, dtype=torch.long)
    zero = distinctiveness_loss(enc1, enc2, s1, s2, empty, empty)
    assert zero.item() == 0.0
    zero.backward()
    assert s1.grad is not None


# ---------------------------------------------------------------- peakiness


def test_peakiness_of_a_zero_map_is_one():
    assert peakiness_loss(torch.zeros(2, 1, 6, 7), n=2).item() == pytest.approx(1.0, abs=0)
    assert peakiness_loss(torch.zeros(1, 1, 5, 5)).item() == pytest.approx(1.0, abs=0)  # n = 32 > map


def test_peakiness_of_single_peaks_by_hand():
    # 1 x 1 map of value v: a = v / 9 (zero padding counted), max over 3 x 3 = v / 9,
    # mean over 3 x 3 = v / 81 -> loss = 1 - 8 v / 81
    assert peakiness_loss(torch.ones(1, 1, 1, 1), n=2).item() == pytest.approx(73 / 81, abs=1e-6)
    assert peakiness_loss(torch.full((1, 1, 1, 1), 20.25), n=2).item() == 0.0  # 1 - 2, clamped
    # 3 x 3 map with a peak of 9 in the centre: a = 1 everywhere; max pool = 1; the zero-padded
    # mean is 4/9 at corners, 6/9 at edges, 1 in the centre -> mean difference
    # (4 * 5/9 + 4 * 3/9) / 9 = 32/81
    peak = torch.zeros(1, 1, 3, 3)
    peak[0, 0, 1, 1] = 9.0
    assert peakiness_loss(peak, n=2).item() == pytest.approx(49 / 81, abs=1e-6)
    # the mean is over the batch: with a zero map next to it the difference halves
    both = torch.cat([peak, torch.zeros_like(peak)])
    assert peakiness_loss(both, n=2).item() == pytest.approx(1 - 16 / 81, abs=1e-6)


def test_peakiness_needs_an_even_window():
    with pytest.raises(ValueError, match="even"):
        peakiness_loss(torch.zeros(1, 1, 4, 4), n=3)


# ---------------------------------------------------------------- triplet


def triplet_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x 4 maps, correspondences 0 <-> 0 and 3 <-> 3 (see the test for the hand values)."""
    enc1 = descriptor_map([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [-1.0, 0.0]], 1, 4, scale=2.0)
    enc2 = descriptor_map([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], 1, 4, scale=0.3)
    return enc1, enc2, torch.tensor([0, 3]), torch.tensor([0, 3])


def test_triplet_hardest_negative_lies_outside_the_safe_radius():
    enc1, enc2, idx1, idx2 = triplet_case()
    # k = 0: p = 2 - 2 * 0.8 = 0.4. Map-2 cell 1 equals d1_0 (d = 0) but is 1 cell from the
    # partner: inside the radius, ignored. Outside: cell 2 (d = 2), cell 3 (d = 2 - 1.2 = 0.8);
    # map 1 outside cell 0's radius: cells 2, 3 vs d2_0 (d = 3.6). n = 0.8 -> 1 + 0.4 - 0.8 = 0.6
    # k = 1: d1_3 = (-1, 0), d2_3 = (0.6, 0.8): p = 3.2; map 2 cells 0, 1: 3.6, 4; map 1 cells
    # 0, 1 vs d2_3: 0.8, 2 - 1.92 = 0.08 -> n = 0.08, 1 + 3.2 - 0.08 = 4.12
    loss = triplet_margin_loss(enc1, enc2, idx1, idx2, margin=1.0, safe_radius=1)
    assert loss.item() == pytest.approx((0.6 + 4.12) / 2, abs=1e-5)
    # radius 0 excludes only the partners: k = 0 now finds the look-alikes (n = 0): 1.4;
    # k = 1 gains map-2 cell 2 (d = 2) and map-1 cell 2 (d = 3.2): still n = 0.08, 4.12
    loss0 = triplet_margin_loss(enc1, enc2, idx1, idx2, margin=1.0, safe_radius=0)
    assert loss0.item() == pytest.approx((1.4 + 4.12) / 2, abs=1e-5)


def test_weighted_triplet_equals_plain_with_equal_scores_and_weights_otherwise():
    enc1, enc2, idx1, idx2 = triplet_case()
    plain = triplet_margin_loss(enc1, enc2, idx1, idx2, 1.0, 1)
    equal = triplet_margin_loss(enc1, enc2, idx1, idx2, 1.0, 1, torch.full((1, 4), 0.7), torch.full((1, 4), 0.7))
    assert equal.item() == pytest.approx(plain.item(), abs=1e-6)
    s1 = torch.tensor([[1.0, 5.0, 5.0, 3.0]], requires_grad=True)
    s2 = torch.tensor([[2.0, 5.0, 5.0, 1.0]], requires_grad=True)
    e1, e2 = enc1.clone().requires_grad_(), enc2.clone().requires_grad_()
    weighted = triplet_margin_loss(e1, e2, idx1, idx2, 1.0, 1, s1, s2)
    # weights s1 s2 = 2 and 3: (2 * 0.6 + 3 * 4.12) / 5
    assert weighted.item() == pytest.approx((2 * 0.6 + 3 * 4.12) / 5, abs=1e-5)
    weighted.backward()
    assert s1.grad[0, 0] != 0 and s2.grad[0, 3] != 0 and s1.grad[0, 1] == 0
    assert e1.grad.abs().sum() > 0 and e2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="both"):
        triplet_margin_loss(enc1, enc2, idx1, idx2, scores1=s1)


def test_triplet_one_sided_and_dropped_correspondences():
    # map 2 has one cell: no map-2 negative; map 1 (1 x 3) has cell 2 outside radius 1 of cell 0
    enc1 = descriptor_map([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]], 1, 3)
    enc2 = descriptor_map([[0.8, 0.6]], 1, 1)
    one = torch.tensor([0])
    # p = 0.4, n = d((0.8, 0.6), (0.6, 0.8)) = 2 - 1.92 = 0.08 -> 1.32
    loss = triplet_margin_loss(enc1, enc2, one, torch.tensor([0]), 1.0, 1)
    assert loss.item() == pytest.approx(1.32, abs=1e-5)
    # radius 4: no negative on either side -> dropped; nothing left gives a connected 0
    e1, e2 = enc1.clone().requires_grad_(), enc2.clone().requires_grad_()
    zero = triplet_margin_loss(e1, e2, one, torch.tensor([0]), 1.0, 4)
    assert zero.item() == 0.0
    zero.backward()
    assert e1.grad is not None and e2.grad is not None


# ---------------------------------------------------------------- reconstruction


def test_reconstruction_is_the_sum_of_level_mses_with_detached_targets():
    f = (torch.zeros(1, 2, 2, 2, requires_grad=True), torch.ones(1, 3, 2, 2, requires_grad=True))
    r = (torch.full((1, 2, 2, 2), 2.0, requires_grad=True), torch.full((1, 3, 2, 2), 0.5, requires_grad=True))
    loss = reconstruction_loss(f, r)
    assert loss.item() == pytest.approx(4.0 + 0.25)
    loss.backward()
    assert f[0].grad is None and f[1].grad is None
    assert r[0].grad is not None
    assert reconstruction_loss(f[0], r[0]).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        reconstruction_loss(f, r[:1])


# ---------------------------------------------------------------- combined


def network_outputs(B: int, h: int, w: int, seed: int, levels: int = 3) -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    channels = (4, 6, 8)[:levels]
    return {
        "features": tuple(torch.randn(B, c, h, w, generator=g).requires_grad_() for c in channels),
        "reconstruction": tuple(torch.randn(B, c, h, w, generator=g).requires_grad_() for c in channels),
        "encoded": tuple(torch.randn(B, 64, h, w, generator=g).requires_grad_() for _ in channels),
        "attention": tuple(F.softplus(torch.randn(B, 1, h, w, generator=g)).requires_grad_() for _ in channels),
    }


def batch(B: int = 2, h: int = 6, w: int = 6, stride: int = 8):
    out1, out2 = network_outputs(B, h, w, 1), network_outputs(B, h, w, 2)
    flow = identity_flow(B, h * stride, w * stride)
    flow[:, 0] += stride  # one cell right: 30 correspondences per pair
    mask = torch.ones(B, h * stride, w * stride, dtype=torch.bool)
    mask[1, : 4 * stride] = False  # pair 1 keeps only the 2 bottom rows: 10 correspondences
    return out1, out2, flow, mask


@pytest.mark.parametrize("kind", ["encoder", "distinctiveness+", "triplet-weighted"])
def test_pairs_with_too_few_correspondences_are_skipped(kind):
    out1, out2, flow, mask = batch()
    result = MultiLevelLoss(MultiLevelLossConfig(kind=kind, peaky_n=2))(out1, out2, flow, mask, 8)
    assert result["pairs"].item() == 0  # default min_correspondences 128 > 30
    term = "distinctiveness" if kind == "distinctiveness+" else "triplet"
    assert result[term].item() == 0.0
    assert result["total"].requires_grad
    result["total"].backward()
    mixed = MultiLevelLoss(MultiLevelLossConfig(kind=kind, min_correspondences=20, peaky_n=2))
    assert mixed(out1, out2, flow, mask, 8)["pairs"].item() == 1


def test_stage_1_total_is_reconstruction_plus_triplet():
    out1, out2, flow, mask = batch()
    config = MultiLevelLossConfig(kind="encoder", min_correspondences=20, safe_radius=1)
    result = MultiLevelLoss(config)(out1, out2, flow, mask, 8)
    assert set(result) == {"total", "reconstruction", "triplet", "pairs"}
    assert result["pairs"].item() == 1
    idx1, idx2 = cell_correspondences(flow, mask, 8, (6, 6))[0]  # only pair 0 is used
    triplet = sum(
        triplet_margin_loss(e1[0], e2[0], idx1, idx2, 1.0, 1) for e1, e2 in zip(out1["encoded"], out2["encoded"])
    )
    reconstruction = (
        reconstruction_loss(out1["features"], out1["reconstruction"])
        + reconstruction_loss(out2["features"], out2["reconstruction"])
    ) / 2
    torch.testing.assert_close(result["triplet"], triplet)
    torch.testing.assert_close(result["reconstruction"], reconstruction)
    torch.testing.assert_close(result["total"], reconstruction + triplet)
    result["total"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in out1["encoded"] + out2["reconstruction"])
    assert all(t.grad is None for t in out1["features"] + out1["attention"])
    # the skipped pair's descriptors get no gradient from the triplet term
    assert out1["encoded"][0].grad[1].abs().sum() == 0


def test_stage_2_trains_the_attention_only():
    out1, out2, flow, mask = batch()
    config = MultiLevelLossConfig(min_correspondences=10, peaky_n=2)  # both pairs used
    result = MultiLevelLoss(config)(out1, out2, flow, mask, 8)
    assert set(result) == {"total", "distinctiveness", "peaky", "pairs"}
    assert result["pairs"].item() == 2
    pairs = cell_correspondences(flow, mask, 8, (6, 6))
    expected = sum(
        distinctiveness_loss(e1[b], e2[b], a1[b], a2[b], *pairs[b])
        for b in range(2)
        for e1, e2, a1, a2 in zip(out1["encoded"], out2["encoded"], out1["attention"], out2["attention"])
    ) / 2
    peaky = sum(
        (peakiness_loss(a1, 2) + peakiness_loss(a2, 2)) / 2 for a1, a2 in zip(out1["attention"], out2["attention"])
    )
    torch.testing.assert_close(result["distinctiveness"], expected)
    torch.testing.assert_close(result["peaky"], peaky)
    torch.testing.assert_close(result["total"], expected + 0.2 * peaky)
    result["total"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in out1["attention"] + out2["attention"])
    assert all(t.grad is None for t in out1["encoded"] + out2["encoded"] + out1["reconstruction"])


def test_triplet_weighted_trains_descriptors_and_attention():
    out1, out2, flow, mask = batch()
    config = MultiLevelLossConfig(kind="triplet-weighted", min_correspondences=20, safe_radius=1, peaky_n=2)
    result = MultiLevelLoss(config)(out1, out2, flow, mask, 8)
    assert set(result) == {"total", "triplet", "peaky", "pairs"}
    idx1, idx2 = cell_correspondences(flow, mask, 8, (6, 6))[0]
    triplet = sum(
        triplet_margin_loss(e1[0], e2[0], idx1, idx2, 1.0, 1, a1[0, 0], a2[0, 0])
        for e1, e2, a1, a2 in zip(out1["encoded"], out2["encoded"], out1["attention"], out2["attention"])
    )
    torch.testing.assert_close(result["triplet"], triplet)
    torch.testing.assert_close(result["total"], triplet + 0.2 * result["peaky"])
    result["total"].backward()
    assert all(t.grad.abs().sum() > 0 for t in out1["encoded"] + out2["attention"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind": "stage3"}, "kind"),
        ({"peaky_n": 3}, "peaky_n"),
        ({"min_correspondences": 0}, "min_correspondences"),
        ({"margin": 0.0}, "margin"),
        ({"safe_radius": -1}, "safe_radius"),
        ({"tau": 0.0}, "tau"),
        ({"peaky_lambda": -0.1}, "peaky_lambda"),
        ({"triplet_weight": -1.0}, "triplet_weight"),
    ],
)
def test_config_validation(values, message):
    with pytest.raises(ValueError, match=message):
        MultiLevelLossConfig(**values)


def test_config_from_mapping():
    assert MultiLevelLoss({"kind": "encoder"}).config.kind == "encoder"
    assert MultiLevelLossConfig.from_mapping(None) == MultiLevelLossConfig()
    with pytest.raises(ValueError, match="unknown key"):
        MultiLevelLossConfig.from_mapping({"lambda": 1.0})
