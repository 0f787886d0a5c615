"""Keypoint selection of the multi-level attention extractor (ALGORITHMS.md section 4), per level:

1. **NMS**: cells whose attention is the maximum of its 3x3 neighbourhood (and > 0);
2. **sub-pixel refinement** (D2-Net's hand-crafted localisation): the gradient and Hessian of the
   attention map by central differences (zero padding), the Newton step ``-H^-1 g``; a cell whose
   step is not under half a cell in both directions (or whose Hessian is singular) is dropped;
3. **score threshold** on the cell's attention (0.3 by default);
4. **descriptors**: the level's code map sampled bilinearly at the refined position (a position
   whose four neighbouring cells are not all inside the map is dropped), L2-normalised.

Positions are in cells of the map (x = column, y = row); the extractor turns them into pixels with
the map's receptive field. Everything is a pure function of tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["local_maxima", "newton_offsets", "sample_map", "select_level"]


def local_maxima(attention: Tensor) -> Tensor:
    """(h, w) bool: cells equal to the maximum of their 3x3 neighbourhood and above 0."""
    pooled = F.max_pool2d(attention[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    return (attention == pooled) & (attention > 0)


_FILTERS = torch.tensor([
    [[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]],  # d/dy (rows)
    [[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]],  # d/dx (columns)
    [[0, 1, 0], [0, -2, 0], [0, 1, 0]],  # d2/dy2
    [[0, 0, 0], [1, -2, 1], [0, 0, 0]],  # d2/dx2
    [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]],  # d2/dxdy
])


def newton_offsets(attention: Tensor) -> Tensor:
    """The Newton step towards the extremum of a map at every cell.

    Args:
        attention: (h, w).

    Returns:
        (2, h, w) float (dx, dy) in cells; NaN / inf where the Hessian is singular.
    """
    filters = _FILTERS.to(attention.device, attention.dtype)[:, None]
    d = F.conv2d(attention[None, None], filters, padding=1)[0]
    dy, dx, dyy, dxx, dxy = d
    det = dyy * dxx - dxy * dxy
    step_y = -(dxx * dy - dxy * dx) / det
    step_x = -(-dxy * dy + dyy * dx) / det
    return torch.stack([step_x, step_y])


def sample_map(values: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples of a map at sub-cell positions.

    Args:
        values: (C, h, w).
        positions: (N, 2) float (x, y) in cells.

    Returns:
        (samples (N, C), inside (N,) bool: the four neighbouring cells are all inside the map).
    """
    C, h, w = values.shape
    x, y = positions[:, 0], positions[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    if len(positions) == 0:
        return values.new_zeros(0, C), inside
    gx = 2 * x / max(w - 1, 1) - 1 if w > 1 else torch.zeros_like(x)
    gy = 2 * y / max(h - 1, 1) - 1 if h > 1 else torch.zeros_like(y)
    grid = torch.stack([gx, gy], dim=-1).to(values.dtype)[None, None]  # (1, 1, N, 2)
    samples = F.grid_sample(values[None], grid, mode="bilinear", align_corners=True)[0, :, 0].T
    return samples, inside


def select_level(attention: Tensor, encoded: Tensor, score_threshold: float = 0.3, refine: bool = True,
                 nms: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The keypoints of one level.

    Args:
        attention: (h, w) scores.
        encoded: (C, h, w) descriptor map of the same grid.
        score_threshold: keep cells with attention >= this.
        refine: sub-pixel refinement (else cell positions, nothing dropped by the step rule).
        nms: 3x3 non-maximum suppression (else every cell above the threshold).

    Returns:
        (positions (N, 2) float (x, y) in cells, scores (N,), descriptors (N, C) L2-normalised),
        in row-major cell order.
    """
    attention, encoded = attention.float(), encoded.float()
    keep = attention >= score_threshold
    if nms:
        keep &= local_maxima(attention)
    y, x = torch.nonzero(keep, as_tuple=True)
    positions = torch.stack([x, y], dim=1).to(attention.dtype)
    scores = attention[y, x]
    if refine and len(y):
        offsets = newton_offsets(attention)[:, y, x].T  # (N, 2)
        small = (offsets.abs() < 0.5).all(dim=1)  # False for NaN / inf
        positions, scores, offsets = positions[small], scores[small], offsets[small]
        positions = positions + offsets
    descriptors, inside = sample_map(encoded, positions)
    descriptors = F.normalize(descriptors[inside], dim=1)
    return positions[inside], scores[inside], descriptors
