"""DELF / DELG extraction helpers: sizes, receptive-field keypoints, box NMS, selection, query crops."""

from __future__ import annotations

import math

import pytest
import torch

from delfi.extract.delf import (
    DELF_SCALES,
    aggregate_global,
    box_iou_inclusive,
    box_nms,
    cells_to_keypoints,
    crop_query,
    delf_select,
    limit_image_size,
    scaled_size,
    select_level,
    select_multiscale,
    uncrop_keypoints,
)
from delfi.extract.receptive import ReceptiveField

TV_LAYER3 = ReceptiveField(267, 16, 133)
SMALL = ReceptiveField(8, 8, 0)  # cells tile the level: box [8j, 8i, 8j+7, 8i+7], centre (8j+3.5, 8i+3.5)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- sizes


def test_scaled_size_rounds_half_to_even_like_tf_round():
    assert scaled_size(5, 3, 0.5) == (2, 2)  # 2.5 -> 2, 1.5 -> 2
    assert scaled_size(7, 9, 0.5) == (4, 4)  # 3.5 -> 4, 4.5 -> 4
    assert scaled_size(1024, 768, 0.7071) == (724, 543)
    assert scaled_size(3, 3, 0.1) == (1, 1)  # never empty


def test_limit_image_size_down_up_and_unchanged():
    image = torch.rand(3, 768, 1024)
    small, factor = limit_image_size(image, 512)
    assert small.shape == (3, 384, 512) and factor == 0.5
    same, factor = limit_image_size(image, 1024)
    assert same is image and factor == 1.0
    assert limit_image_size(image, None)[0] is image and limit_image_size(image, -1)[0] is image
    big, factor = limit_image_size(torch.rand(3, 50, 100), 1024, min_image_size=200)
    assert big.shape == (3, 100, 200) and factor == 2.0


def test_limit_image_size_matches_pil_bilinear_on_uint8():
    Image = pytest.importorskip("PIL.Image")
    import numpy as np

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ours, _ = limit_image_size(torch.from_numpy(array).permute(2, 0, 1), 20)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 15, 20)
    pil = np.asarray(Image.fromarray(array).resize((20, 15), resample=Image.BILINEAR))
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil.astype(int))
    assert diff.max() <= 2  # antialiased like PIL; plain bilinear differs by tens of levels here


# ---------------------------------------------------------------- receptive-field keypoints


def test_cells_to_keypoints_scale_one_torchvision_layer3():
    centres, boxes = cells_to_keypoints(TV_LAYER3, 2, 3, (1.0, 1.0))
    assert centres.shape == (6, 2) and boxes.shape == (6, 4)
    assert centres[0].tolist() == [0.0, 0.0]  # -133 + 266 / 2
    expected = [[16.0 * j, 16.0 * i] for i in range(2) for j in range(3)]
    assert centres.tolist() == expected
    assert boxes[5].tolist() == [32 - 133, 16 - 133, 32 - 133 + 266, 16 - 133 + 266]
    assert boxes[1].tolist() == [16 - 133, -133, 16 + 133, 133]


def test_cells_to_keypoints_half_scale_maps_to_original_pixels():
    centres, boxes = cells_to_keypoints(TV_LAYER3, 2, 2, (64 / 32, 48 / 24))
    assert centres[0].tolist() == [0.5, 0.5]  # (0 + 0.5) * 2 - 0.5
    assert centres[3].tolist() == [32.5, 32.5]  # level (16, 16)
    assert boxes[0].tolist() == [-265.5, -265.5, 266.5, 266.5]  # (-133 + .5) * 2 - .5, (133 + .5) * 2 - .5


def test_cells_to_keypoints_non_integer_anisotropic_factor():
    level = scaled_size(100, 75, 0.7071)
    assert level == (71, 53)
    fx, fy = 100 / 71, 75 / 53
    centres, boxes = cells_to_keypoints(SMALL, 2, 3, (fx, fy))
    # cell (i=1, j=2): level centre (19.5, 11.5), box [16, 8, 23, 15]
    assert centres[5].tolist() == pytest.approx([20.0 * fx - 0.5, 12.0 * fy - 0.5])
    assert boxes[5].tolist() == pytest.approx([16.5 * fx - 0.5, 8.5 * fy - 0.5, 23.5 * fx - 0.5, 15.5 * fy - 0.5])


def test_select_level_is_inclusive():
    assert select_level(t([0.5, 1.0, 2.0, 0.99]), 1.0).tolist() == [1, 2]
    assert select_level(t([[0.0, 3.0], [3.0, 0.0]]), 1.0).tolist() == [1, 2]  # flattened row-major


# ---------------------------------------------------------------- box NMS

A, B, C = [0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29]  # IoU(A, B) = 50 / 150 with inclusive pixels


def test_box_iou_inclusive_known_values():
    iou = box_iou_inclusive(t(A), t([A, B, C]))
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_box_nms_suppression_thresholds():
    assert box_nms(t([A, A]), t([1.0, 2.0]), 0.99).tolist() == [1]  # identical: IoU 1 > 0.99
    assert box_nms(t([A, A]), t([1.0, 2.0]), 1.0).tolist() == [1, 0]  # 1.0: no suppression, sorted
    assert box_nms(t([A, B]), t([2.0, 1.0]), 0.3).tolist() == [0]  # 1/3 > 0.3 (without +1 it is 0.29)
    assert box_nms(t([A, B]), t([2.0, 1.0]), 0.34).tolist() == [0, 1]
    assert box_nms(t([C, A]), t([1.0, 2.0]), 0.0).tolist() == [1, 0]  # disjoint: IoU 0 is not > 0


def test_box_nms_is_greedy_stable_and_capped():
    # B overlaps A and D overlaps B but not A: B is suppressed by A, so D survives.
    D = [14, 0, 23, 9]
    assert box_nms(t([A, B, D]), t([3.0, 2.0, 1.0]), 0.05).tolist() == [0, 2]
    assert box_nms(t([A, C, A]), t([3.0, 2.0, 1.0]), 0.5).tolist() == [0, 1]  # stays suppressed after C
    assert box_nms(t([C, A, B]), t([1.0, 1.0, 1.0]), 1.0).tolist() == [0, 1, 2]  # ties: input order
    assert box_nms(t([A, A, C]), t([1.0, 1.0, 1.0]), 0.5).tolist() == [0, 2]  # tie: the first one wins
    assert box_nms(t([A, C, B]), t([1.0, 3.0, 2.0]), 1.0, max_keep=2).tolist() == [1, 2]
    assert box_nms(t([A, C, B]), t([1.0, 3.0, 2.0]), 0.3, max_keep=2).tolist() == [1, 2]
    assert box_nms(t([A, C, B]), t([3.0, 2.0, 1.0]), 0.3, max_keep=2).tolist() == [0, 1]
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert torch.equal(box_nms(torch.zeros(3000, 4), torch.ones(3000), 1.0), torch.arange(3000))  # large tie


# ---------------------------------------------------------------- multi-scale selection


def make_levels(b01: float = 1.0):
    """Level 0: scale 1, 32x32 image, 4x4 cells; level 1: scale 0.5, 16x16 image, 2x2 cells (32x32 original)."""
    att0 = torch.zeros(4, 4)
    att0[0, 0], att0[3, 3], att0[2, 0] = 5.0, 2.0, 0.5
    att1 = t([[3.0, b01], [0.0, 0.9]])
    ii, jj = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    feat0 = torch.stack([ii + 1, jj + 1, torch.full_like(ii, 2.0)])  # (3, 4, 4), rows not unit-norm
    feat1 = 10 * torch.stack([ii[:2, :2] + 1, -jj[:2, :2] - 1, torch.ones(2, 2)])
    return [(1.0, att0, feat0, (32, 32)), (0.5, att1, feat1, (16, 16))]


def test_delf_select_threshold_and_nms_across_levels():
    # candidates (att >= 1): L0 (0,0)=5, L1 (0,0)=3, L0 (3,3)=2, L1 (0,1)=1 (exactly the threshold).
    # L1 (0,0)'s box [0.5, 0.5, 14.5, 14.5] contains L0 (0,0)'s [0, 0, 7, 7]: IoU 56.25 / 232.75 = 0.24.
    sel = select_multiscale(make_levels(), SMALL, (32, 32), score_threshold=1.0, iou_threshold=0.2)
    assert sel.scores.tolist() == [5.0, 2.0, 1.0]
    assert sel.levels.tolist() == [0, 0, 1]
    assert sel.keypoints.tolist() == [[3.5, 3.5], [27.5, 27.5], [23.5, 7.5]]  # L1 (11.5, 3.5) -> x2 +.5
    assert sel.scales.tolist() == [8.0, 8.0, 16.0]
    feats = delf_select(make_levels(), SMALL, (32, 32), score_threshold=1.0, iou_threshold=0.2)
    assert feats.image_size == (32, 32) and len(feats) == 3
    assert torch.equal(feats.keypoints, sel.keypoints) and torch.equal(feats.scales, sel.scales)
    assert feats.descriptors.norm(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert feats.descriptors[0].tolist() == pytest.approx((t([1, 1, 2]) / math.sqrt(6)).tolist())
    assert feats.descriptors[1].tolist() == pytest.approx((t([4, 4, 2]) / 6).tolist())
    assert feats.descriptors[2].tolist() == pytest.approx((t([1, -2, 1]) / math.sqrt(6)).tolist())


def test_delf_select_without_suppression_and_top_k():
    feats = delf_select(make_levels(), SMALL, (32, 32), score_threshold=1.0)  # TF default IoU 1.0
    assert feats.scores.tolist() == [5.0, 3.0, 2.0, 1.0]
    assert feats.keypoints[1].tolist() == [7.5, 7.5]  # L1 (0,0): (3.5 + .5) * 2 - .5
    assert delf_select(make_levels(), SMALL, (32, 32), score_threshold=1.0, top_k=2).scores.tolist() == [5.0, 3.0]
    cut = delf_select(make_levels(), SMALL, (32, 32), score_threshold=1.0, iou_threshold=0.2, top_k=2)
    assert cut.scores.tolist() == [5.0, 2.0]  # NMS first, then the cut


def test_delf_select_halving_only_when_enabled_and_only_for_empty_levels():
    kwargs = dict(score_threshold=4.0, iou_threshold=1.0)
    assert delf_select(make_levels(), SMALL, (32, 32), **kwargs).scores.tolist() == [5.0]
    halved = select_multiscale(make_levels(), SMALL, (32, 32), halve_threshold_if_empty=True, **kwargs)
    # level 1 is empty at 4, so it retries at 2 and keeps 3.0; level 0 keeps 4 (its 2.0 stays out)
    assert halved.scores.tolist() == [5.0, 3.0] and halved.levels.tolist() == [0, 1]
    floor = delf_select(make_levels(), SMALL, (32, 32), halve_threshold_if_empty=True, min_threshold=2.5, **kwargs)
    assert floor.scores.tolist() == [5.0]  # 4 -> 2 is below the floor: give up
    twice = select_multiscale(make_levels(b01=1.5), SMALL, (32, 32), score_threshold=16.0, halve_threshold_if_empty=True)
    assert twice.scores.tolist() == [5.0, 3.0]  # level 0: 16->8->4, level 1: 16->8->4->2


@pytest.mark.parametrize("scale", DELF_SCALES)
def test_delf_select_keypoints_are_rf_centres_at_every_scale(scale):
    width, height = 64, 48
    lw, lh = scaled_size(width, height, scale)
    h, w = 3, 4
    att = torch.arange(h * w, dtype=torch.float32).reshape(h, w) + 1  # all kept, distinct scores
    feats = delf_select([(scale, att, torch.randn(5, h, w), (lw, lh))], SMALL, (width, height), score_threshold=0.0)
    assert feats.scores.tolist() == sorted(att.reshape(-1).tolist(), reverse=True)
    expected = []
    for k in torch.argsort(att.reshape(-1), descending=True).tolist():
        i, j = divmod(k, w)
        expected.append([(8 * j + 4.0) * width / lw - 0.5, (8 * i + 4.0) * height / lh - 0.5])
    assert torch.allclose(feats.keypoints, t(expected), atol=1e-4)
    assert feats.scales.tolist() == pytest.approx([8 / scale] * (h * w))


def test_delf_select_empty_result_keeps_descriptor_dim():
    feats = delf_select(make_levels(), SMALL, (32, 32), score_threshold=100.0, iou_threshold=0.5)
    assert len(feats) == 0 and feats.descriptors.shape == (0, 3) and feats.keypoints.shape == (0, 2)


# ---------------------------------------------------------------- global descriptor


def test_aggregate_global_normalises_each_then_the_sum():
    out = aggregate_global([t([3.0, 4.0, 0.0]), t([0.0, 0.0, 20.0])])
    assert out.tolist() == pytest.approx((t([0.6, 0.8, 1.0]) / math.sqrt(2)).tolist())
    assert torch.allclose(out, aggregate_global([t([30.0, 40.0, 0.0]), t([0.0, 0.0, 0.1])]))
    with pytest.raises(ValueError):
        aggregate_global([])


# ---------------------------------------------------------------- query crops


def test_crop_query_bounds_offsets_and_resolution_rule():
    image = torch.arange(768 * 1024, dtype=torch.float32).reshape(1, 768, 1024).expand(3, -1, -1)
    crop = crop_query(image, (100.6, 50.6, 611.4, 433.2), 1024, min_image_size=300)  # outward: 100, 50, 612, 434
    assert crop.image.shape == (3, 384, 512) and crop.offset_xy == (100, 50)
    assert torch.equal(crop.image, image[:, 50:434, 100:612])
    assert crop.size_factor == 0.5 and crop.max_image_size == 512 and crop.min_image_size == 150
    clipped = crop_query(image, (-10, -5, 2000, 20), None)
    assert clipped.image.shape == (3, 20, 1024) and clipped.offset_xy == (0, 0) and clipped.max_image_size is None
    with pytest.raises(ValueError):
        crop_query(image, (50, 50, 50, 80), 1024)


def test_crop_keeps_the_full_image_resolution():
    image = torch.rand(3, 768, 1024)
    _, full_factor = limit_image_size(image, 800)
    crop = crop_query(image, (100, 50, 612, 434), 800)
    assert crop.max_image_size == 400
    resized, crop_factor = limit_image_size(crop.image, crop.max_image_size)
    assert crop_factor == full_factor == 800 / 1024 and resized.shape == (3, 300, 400)


def test_uncrop_keypoints_round_trip():
    image = torch.arange(768 * 1024, dtype=torch.float32).reshape(1, 768, 1024)
    crop = crop_query(image, (100, 50, 612, 434), 1024)
    kp = t([[0.0, 0.0], [511.0, 383.0], [10.0, 20.0]])
    full = uncrop_keypoints(kp, crop.offset_xy)
    assert full.tolist() == [[100.0, 50.0], [611.0, 433.0], [110.0, 70.0]]
    for (x, y), (fx, fy) in zip(kp.long().tolist(), full.long().tolist()):
        assert crop.image[0, y, x] == image[0, fy, fx]
    assert torch.equal(uncrop_keypoints(full, (-100, -50)), kp)
