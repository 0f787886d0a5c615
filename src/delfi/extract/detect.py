"""Keypoint detection on dense score maps: local maxima, thresholds, top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def local_maxima_3x3(score: Tensor) -> Tensor:
    """Positions equal to the maximum of their 3x3 neighbourhood.

    Args:
        score: (B, 1, H, W) score map.

    Returns:
        (B, 1, H, W) bool mask. Borders compare only against in-image neighbours.
    """
    return score == F.max_pool2d(score, kernel_size=3, stride=1, padding=1)


def r2d2_keypoint_mask(
    reliability: Tensor, repeatability: Tensor, reliability_threshold: float = 0.7, repeatability_threshold: float = 0.7
) -> Tensor:
    """R2D2's detector: repeatability local maxima with both confidences above their thresholds.

    Args:
        reliability, repeatability: (B, 1, H, W) maps in [0, 1].

    Returns:
        (B, 1, H, W) bool mask of keypoints.
    """
    return (
        local_maxima_3x3(repeatability)
        & (repeatability >= repeatability_threshold)
        & (reliability >= reliability_threshold)
    )


def top_k_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, best first (all, sorted, when k <= 0 or k >= N).

    Ties are broken by position (stable), so the result is deterministic.

    Args:
        scores: (N,) scores.

    Returns:
        (min(k, N),) int64 indices.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k] if 0 < k < scores.numel() else order
