"""Keypoint selection of the multi-level extractor: NMS, D2-Net sub-pixel refinement, bilinear descriptors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delfi.extract.multilevel import local_maxima, newton_offsets, sample_map, select_level


def quadratic(h: int, w: int, x0: float, y0: float, peak: float = 5.0) -> torch.Tensor:
    """A paraboloid with its maximum at (x0, y0) (columns, rows)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return peak - 0.1 * ((x - x0) ** 2 + 2 * (y - y0) ** 2)


def test_local_maxima_keeps_strict_and_tied_peaks_above_zero():
    a = torch.zeros(5, 5)
    a[1, 1] = 2.0
    a[3, 3] = 1.0
    a[3, 4] = 1.0  # a tie: both equal the max of their neighbourhoods
    mask = local_maxima(a)
    assert {tuple(p) for p in torch.nonzero(mask).tolist()} == {(1, 1), (3, 3), (3, 4)}
    assert not local_maxima(torch.zeros(3, 3)).any()  # zero attention is never a keypoint


def test_newton_step_finds_the_extremum_of_a_quadratic_exactly():
    a = quadratic(9, 11, x0=5.3, y0=3.8)
    step = newton_offsets(a)
    # central differences are exact on a quadratic: the step from any interior cell lands on the peak
    assert step[0, 4, 5].item() == pytest.approx(0.3, abs=1e-5)
    assert step[1, 4, 5].item() == pytest.approx(-0.2, abs=1e-5)
    assert step[0, 2, 3].item() == pytest.approx(2.3, abs=1e-4)
    assert not torch.isfinite(newton_offsets(torch.ones(4, 4))[:, 1, 1]).any()  # a flat map: singular Hessian


def test_sample_map_is_bilinear_and_flags_points_outside():
    values = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    positions = torch.tensor([[1.5, 0.25], [0.0, 0.0], [3.0, 2.0], [3.2, 1.0], [-0.1, 1.0]])
    samples, inside = sample_map(values, positions)
    assert inside.tolist() == [True, True, True, False, False]
    # value(c, y, x) = 12 c + 4 y + x is linear, so bilinear samples equal it exactly
    expected = torch.stack([12 * c + 4 * positions[:3, 1] + positions[:3, 0] for c in range(2)], 1)
    assert torch.allclose(samples[:3], expected)


def test_select_level_refines_thresholds_and_normalises():
    a = quadratic(9, 11, x0=5.3, y0=3.8)  # one peak at cell (row 4, column 5), sub-cell offset (0.3, -0.2)
    encoded = torch.stack([torch.ones(9, 11), torch.arange(11.0).expand(9, 11)])  # channel 1 = column index
    positions, scores, descriptors = select_level(a, encoded, score_threshold=1.0)
    assert positions.tolist() == [pytest.approx([5.3, 3.8], abs=1e-5)]
    assert scores.tolist() == [pytest.approx(a[4, 5].item())]  # the cell's attention, not an interpolation
    assert torch.allclose(descriptors, F.normalize(torch.tensor([[1.0, 5.3]]), dim=1), atol=1e-5)
    # the threshold is on the attention
    assert len(select_level(a, encoded, score_threshold=10.0)[0]) == 0
    # without refinement: the integer cell
    assert select_level(a, encoded, score_threshold=1.0, refine=False)[0].tolist() == [[5.0, 4.0]]


def test_select_level_drops_steps_of_half_a_cell_or_more():
    # a peak exactly between two cells: both are maxima (a tie), each needs a step of 0.5 -> both dropped
    a = quadratic(7, 8, x0=3.5, y0=3.0)
    positions, _, _ = select_level(a, torch.ones(4, 7, 8), score_threshold=0.0)
    assert len(positions) == 0
    assert len(select_level(a, torch.ones(4, 7, 8), score_threshold=0.0, refine=False)[0]) == 2


def test_select_level_without_nms_keeps_every_cell_above_threshold():
    a = torch.full((3, 4), 0.5)
    a[0, 0] = 0.1
    positions, scores, descriptors = select_level(a, torch.randn(8, 3, 4), score_threshold=0.3, refine=False, nms=False)
    assert len(positions) == 11 and (scores >= 0.3).all()
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(11))
