"""Repeatability losses: patch similarity of the two repeatability maps (R2D2's ``CosimLoss`` and
the fork's variants) and R2D2's peakiness loss.

**Similarity** (``repeatability_loss``): image 2's repeatability is warped into image 1 with the
flow (``grid_sample``, bilinear, border padding, pixel-centre convention ``x -> 2x / (W - 1) - 1``
with ``align_corners=True``, i.e. the official ``_aflow_to_grid``); both maps are cut into N x N
patches with stride N/2 (``F.unfold``, no padding) and each patch pair (a, b) is scored:

    cosim          <a, b>                              (a, b L2-normalised: the official loss)
    dice           2 <a, b> / (|a|^2 + |b|^2)
    jaccard        <a, b> / (|a|^2 + |b|^2 - <a, b>)
    czekanowski    2 sum min(a, b) / sum (a + b)
    squared_chord  1 - sum (sqrt a - sqrt b)^2

``patch_norm="auto"`` L2-normalises the patches for ``cosim`` and L1-normalises them for the four
others (so that, like the cosine, none is fooled by a global rescaling of one map, and
``squared_chord`` lies in [-1, 1]); ``"l1"``, ``"l2"`` or ``"none"`` force a choice.
``loss = 1 - weighted mean of the patch similarities``.

**Invalid flow**: a pixel is valid where its flow is finite and ``mask`` (B, H, W, optional) is
True. Both maps are multiplied by the validity before cutting patches, so invalid pixels
contribute nothing to either side, and each patch's similarity is weighted by its valid fraction
(patches with no valid pixel drop out). With every pixel valid this is exactly the official mean;
the official code instead keeps invalid (NaN) pixels, sampling image 2's border value there.

**Peakiness** (``peaky_loss``, official ``PeakyLoss``)::

    s = avgpool_3(rep)            (stride 1, padding 1)
    loss = 1 - mean(maxpool_{N+1}(s) - avgpool_{N+1}(s))      (stride 1, padding N/2)

averaged over the two images. ``padding="official"`` uses PyTorch's defaults as the official code
does: average pools count the zero padding (so a constant map scores slightly below 1 near the
borders), max pools ignore it. ``padding="exclude"`` averages over real pixels only (a constant
map scores exactly 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PATCH_NORMS",
    "PEAKY_PADDINGS",
    "SIMILARITIES",
    "patch_similarity",
    "peakiness",
    "peaky_loss",
    "repeatability_loss",
    "warp_by_flow",
]

SIMILARITIES = ("cosim", "dice", "jaccard", "czekanowski", "squared_chord")
PATCH_NORMS = ("auto", "none", "l1", "l2")
PEAKY_PADDINGS = ("official", "exclude")
_EPS = 1e-12


def warp_by_flow(image2: Tensor, flow: Tensor, padding_mode: str = "border") -> Tensor:
    """Sample (B, C, H2, W2) at the flow (B, 2, H, W) (x, y pixel coordinates in image 2, pixel
    centres at integers): returns (B, C, H, W) aligned with image 1. Non-finite flow samples
    outside the image (the border value with ``padding_mode="border"``)."""
    H2, W2 = image2.shape[-2:]
    scale = flow.new_tensor([2 / max(W2 - 1, 1), 2 / max(H2 - 1, 1)]).view(1, 2, 1, 1)
    grid = flow.float() * scale.float() - 1
    grid = torch.where(torch.isfinite(grid), grid, torch.full_like(grid, -4.0))
    return F.grid_sample(image2.float(), grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode=padding_mode, align_corners=True)


def _normalise(patches: Tensor, norm: str) -> Tensor:
    if norm == "l2":
        return patches / patches.norm(dim=-2, keepdim=True).clamp_min(_EPS)
    if norm == "l1":
        return patches / patches.abs().sum(dim=-2, keepdim=True).clamp_min(_EPS)
    return patches


def patch_similarity(a: Tensor, b: Tensor, similarity: str = "cosim", patch_norm: str = "auto") -> Tensor:
    """Similarity of patch pairs: a, b (..., K, L) (K values per patch, L patches) -> (..., L)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown repeatability similarity {similarity!r}; expected one of {SIMILARITIES}")
    if patch_norm not in PATCH_NORMS:
        raise ValueError(f"unknown patch_norm {patch_norm!r}; expected one of {PATCH_NORMS}")
    norm = ("l2" if similarity == "cosim" else "l1") if patch_norm == "auto" else patch_norm
    a, b = _normalise(a, norm), _normalise(b, norm)
    if similarity == "cosim":
        return (a * b).sum(-2)
    if similarity == "dice":
        return 2 * (a * b).sum(-2) / ((a * a).sum(-2) + (b * b).sum(-2)).clamp_min(_EPS)
    if similarity == "jaccard":
        ab = (a * b).sum(-2)
        return ab / ((a * a).sum(-2) + (b * b).sum(-2) - ab).clamp_min(_EPS)
    if similarity == "czekanowski":
        return 2 * torch.minimum(a, b).sum(-2) / (a + b).sum(-2).clamp_min(_EPS)
    # squared_chord; the clamp keeps the gradient finite at 0 (masked pixels)
    return 1 - ((a.clamp_min(_EPS).sqrt() - b.clamp_min(_EPS).sqrt()) ** 2).sum(-2)


def repeatability_loss(
    repeatability1: Tensor,
    repeatability2: Tensor,
    flow: Tensor,
    mask: Tensor | None = None,
    similarity: str = "cosim",
    N: int = 16,
    patch_norm: str = "auto",
) -> Tensor:
    """1 - mean patch similarity of rep1 (B, 1, H, W) and rep2 warped by flow (B, 2, H, W)."""
    if N < 2 or N % 2:
        raise ValueError(f"N must be an even patch size >= 2, got {N}")
    with torch.autocast(device_type=repeatability1.device.type, enabled=False):
        rep1 = repeatability1.float()
        rep2 = warp_by_flow(repeatability2, flow)
        valid = torch.isfinite(flow).all(1, keepdim=True)
        if mask is not None:
            valid = valid & mask.bool().unsqueeze(1)
        m = valid.float()
        weights = F.unfold(m, N, stride=N // 2).mean(1)  # (B, L) valid fraction of each patch
        p1 = F.unfold(rep1 * m, N, stride=N // 2)  # (B, N*N, L)
        p2 = F.unfold(rep2 * m, N, stride=N // 2)
        sim = patch_similarity(p1, p2, similarity, patch_norm)  # (B, L)
        return 1 - (sim * weights).sum() / weights.sum().clamp_min(_EPS)


def peakiness(repeatability: Tensor, N: int = 16, padding: str = "official") -> Tensor:
    """Mean of ``maxpool_{N+1}(s) - avgpool_{N+1}(s)``, ``s = avgpool_3(rep)``; rep (B, 1, H, W)."""
    if N < 2 or N % 2:
        raise ValueError(f"N must be an even patch size >= 2, got {N}")
    if padding not in PEAKY_PADDINGS:
        raise ValueError(f"padding must be one of {PEAKY_PADDINGS}, got {padding!r}")
    include = padding == "official"
    with torch.autocast(device_type=repeatability.device.type, enabled=False):
        s = F.avg_pool2d(repeatability.float(), 3, stride=1, padding=1, count_include_pad=include)
        peaks = F.max_pool2d(s, N + 1, stride=1, padding=N // 2)
        means = F.avg_pool2d(s, N + 1, stride=1, padding=N // 2, count_include_pad=include)
        return (peaks - means).mean()


def peaky_loss(repeatability1: Tensor, repeatability2: Tensor, N: int = 16, padding: str = "official") -> Tensor:
    """R2D2's peakiness loss, averaged over the two images: ``1 - peakiness``."""
    return 1 - (peakiness(repeatability1, N, padding) + peakiness(repeatability2, N, padding)) / 2
