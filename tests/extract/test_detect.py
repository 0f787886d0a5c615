"""Keypoint detection on dense maps: 3x3 local maxima, R2D2 thresholds, top-k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delfi.extract.detect import local_maxima_3x3, r2d2_keypoint_mask, top_k_indices


def as_map(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def positions(mask: torch.Tensor) -> set[tuple[int, int]]:
    """(y, x) of the True entries of a (1, 1, H, W) mask."""
    return {(int(y), int(x)) for y, x in mask[0, 0].nonzero().tolist()}


# --------------------------------------------------------------------------------------------------
# local_maxima_3x3
# --------------------------------------------------------------------------------------------------


def test_local_maxima_hand_map():
    score = as_map(
        [
            [0.0, 0.1, 0.0, 0.0, 0.0],
            [0.1, 0.9, 0.2, 0.0, 0.3],
            [0.0, 0.2, 0.1, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.5, 0.0],
            [0.0, 0.0, 0.4, 0.0, 0.0],
        ]
    )
    mask = local_maxima_3x3(score)
    assert mask.shape == score.shape and mask.dtype == torch.bool
    # 0.9 and 0.5 are strict maxima; 0.3 at the right border compares only with in-image neighbours
    # (all zeros); the zero in the bottom-left corner sees only zeros: a plateau maximum. The zeros
    # at (3, 0) and (4, 1) see 0.2 / 0.4, the zeros of the top row see 0.9 or 0.3.
    assert positions(mask) == {(1, 1), (1, 4), (3, 3), (4, 0)}
    assert not mask[0, 0, 4, 2]


def test_plateau_neighbours_both_count():
    score = as_map(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.7, 0.7, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert positions(local_maxima_3x3(score)) == {(1, 1), (1, 2)}


def test_constant_map_is_all_maxima():
    assert local_maxima_3x3(torch.full((2, 1, 4, 5), 0.3)).all()


def test_borders_compare_only_in_image_neighbours():
    # negative values: zero padding would hide every border maximum; -inf padding keeps them
    score = as_map(
        [
            [-0.1, -0.5, -0.5, -0.2],
            [-0.5, -0.9, -0.9, -0.5],
            [-0.5, -0.9, -0.9, -0.5],
            [-0.3, -0.5, -0.5, -0.4],
        ]
    )
    assert positions(local_maxima_3x3(score)) == {(0, 0), (0, 3), (3, 0), (3, 3)}


def test_local_maxima_match_reference_on_random_maps():
    g = torch.Generator().manual_seed(0)
    score = torch.rand(2, 1, 9, 11, generator=g)
    mask = local_maxima_3x3(score)
    padded = F.pad(score, (1, 1, 1, 1), value=-1.0)
    for b in range(2):
        for y in range(9):
            for x in range(11):
                window = padded[b, 0, y : y + 3, x : x + 3]
                assert bool(mask[b, 0, y, x]) == bool(score[b, 0, y, x] >= window.max())
    assert mask.any() and not mask.all()


# --------------------------------------------------------------------------------------------------
# r2d2_keypoint_mask
# --------------------------------------------------------------------------------------------------


def test_r2d2_mask_thresholds():
    repeatability = as_map(
        [
            [0.8, 0.0, 0.0, 0.0, 0.69],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.75, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.7, 0.0, 0.0, 0.0, 0.9],
        ]
    )
    reliability = as_map(
        [
            [0.9, 1.0, 1.0, 1.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [1.0, 1.0, 0.69, 1.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [0.7, 1.0, 1.0, 1.0, 0.2],
        ]
    )
    mask = r2d2_keypoint_mask(reliability, repeatability)
    # (0, 0): both >= 0.7; (0, 4): repeatability 0.69 < 0.7; (2, 2): reliability 0.69 < 0.7;
    # (4, 0): exactly 0.7 / 0.7 passes (>=); (4, 4): reliability 0.2 fails. Zeros are maxima but
    # below the repeatability threshold.
    assert positions(mask) == {(0, 0), (4, 0)}
    # thresholds are parameters
    assert positions(r2d2_keypoint_mask(reliability, repeatability, 0.1, 0.65)) == {
        (0, 0),
        (0, 4),
        (2, 2),
        (4, 0),
        (4, 4),
    }
    # repeatability threshold 0: zeros whose 3x3 neighbourhood is all zeros are (plateau) maxima
    # too: (0, 2), (2, 0), (2, 4), (4, 2); reliability >= 0.95 keeps those and (0, 4) only
    assert positions(r2d2_keypoint_mask(reliability, repeatability, 0.95, 0.0)) == {
        (0, 2),
        (0, 4),
        (2, 0),
        (2, 4),
        (4, 2),
    }


def test_r2d2_mask_uses_repeatability_maxima_not_reliability():
    repeatability = as_map([[0.8, 0.9, 0.8]])
    reliability = as_map([[1.0, 0.75, 1.0]])
    assert positions(r2d2_keypoint_mask(reliability, repeatability)) == {(0, 1)}


def test_r2d2_mask_zero_thresholds_equal_local_maxima():
    g = torch.Generator().manual_seed(3)
    repeatability, reliability = torch.rand(1, 1, 12, 10, generator=g), torch.rand(1, 1, 12, 10, generator=g)
    assert torch.equal(r2d2_keypoint_mask(reliability, repeatability, 0.0, 0.0), local_maxima_3x3(repeatability))


# --------------------------------------------------------------------------------------------------
# top_k_indices
# --------------------------------------------------------------------------------------------------


def test_top_k_ordering():
    scores = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.7])
    assert top_k_indices(scores, 3).tolist() == [1, 4, 3]
    assert top_k_indices(scores, 1).tolist() == [1]
    assert top_k_indices(scores, 3).dtype == torch.int64


def test_top_k_ties_are_stable():
    scores = torch.tensor([0.5, 0.8, 0.5, 0.8, 0.5, 0.1, 0.8])
    assert top_k_indices(scores, 4).tolist() == [1, 3, 6, 0]
    assert top_k_indices(scores, 0).tolist() == [1, 3, 6, 0, 2, 4, 5]
    # large all-equal input: positions in order
    assert top_k_indices(torch.zeros(1000), 10).tolist() == list(range(10))


@pytest.mark.parametrize("k", [0, -1, -100, 5, 6, 1000])
def test_top_k_all_when_k_out_of_range(k):
    scores = torch.tensor([0.3, 0.1, 0.4, 0.1, 0.5])
    assert top_k_indices(scores, k).tolist() == [4, 2, 0, 1, 3]


def test_top_k_empty():
    assert top_k_indices(torch.zeros(0), 5).tolist() == []
    assert top_k_indices(torch.zeros(0), 0).tolist() == []
