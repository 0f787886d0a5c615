"""R2D2's pixel-pair sampler (the settings of the official ``NghSampler2``), vectorised.

Given dense descriptors of two images, the ground-truth correspondence image 1 -> image 2 and its
validity, build for every sampled query pixel of image 1 one row of similarity scores:

1. **Queries**: ``subq > 0``: a regular grid with step ``subq`` inside a ``border`` margin;
   ``subq < 0``: ``(H - 2 border) (W - 2 border) // subq**2`` positions drawn uniformly inside the
   margin (the same positions in every image of the batch, as officially).
2. **Target**: the query's flow ``(x, y)`` (pixel-centre convention: pixel centres are integers) is
   rounded to the nearest pixel, ``floor(v + 0.5)``. A query is valid when its flow is finite, its
   mask entry is True and the rounded target lies inside image 2. (The official code truncates
   ``(v + 0.5)`` towards zero, which also accepts ``v`` in (-1, -0.5); that is the only change.)
3. **Positives**: cosines (dot products of the L2-normalised descriptors) between the query and
   image 2's descriptors at every integer offset ``(dx, dy)`` with ``dx**2 + dy**2 <= pos_d**2``
   around the target (clamped to the image); with ``maxpool_pos`` only their maximum is kept
   (one positive column), which tolerates flow errors of up to ``pos_d`` pixels.
4. **Negatives**: the same at the offsets with ``neg_d**2 <= dx**2 + dy**2 <= ngh**2`` (a ring,
   offsets on the ``subd`` grid: multiples of ``subd``; the official loop bound
   ``(ngh // subd) * ngh`` differs from this only for ``subd > 1``), plus, when ``subd_neg != 0``, every query against *distractors*:
   image-2 descriptors on a grid (``subd_neg > 0``) or at random positions (``< 0``) of **every**
   image of the batch. Distractors of the query's own image closer than ``neg_d`` to its target
   get score 0 (official) and are flagged in ``ignore``.
5. **Reliability**: the query's reliability in image 1, averaged (with ``maxpool_pos``) with image
   2's reliability at the arg-max positive.

Random positions use ``generator`` (a `torch.Generator` on the descriptors' device) when given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SampledScores", "SamplerConfig", "neighbourhood_offsets", "sample_positions", "sample_scores"]


@dataclass(frozen=True)
class SamplerConfig:
    """The official training setting: ``NghSampler2(7, subq=-8, subd=1, pos_d=3, neg_d=5,
    border=16, subd_neg=-8, maxpool_pos=True)``."""

    ngh: int = 7
    subq: int = -8
    subd: int = 1
    pos_d: int = 3
    neg_d: int = 5
    border: int = 16
    subd_neg: int = -8
    maxpool_pos: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.pos_d < self.neg_d <= self.ngh:
            raise ValueError(f"sampler needs 0 <= pos_d < neg_d <= ngh; got {self.pos_d}, {self.neg_d}, {self.ngh}")
        if self.subq == 0 or self.subd < 1:
            raise ValueError(f"sampler needs subq != 0 and subd >= 1; got subq={self.subq}, subd={self.subd}")
        if self.border < self.ngh:
            raise ValueError(f"sampler border ({self.border}) must be >= ngh ({self.ngh})")


@dataclass
class SampledScores:
    """Sampler output for ``Q = B * n`` queries (``n`` per image) and ``M`` columns per query.

    scores: (Q, M) cosines, positive columns first; labels: (Q, M) bool, True = positive;
    ignore: (Q, M) bool, distractors too close to the target (score forced to 0, label False);
    valid: (Q,) bool; reliability: (Q,) or None; shape: ``(B, n)``.
    """

    scores: Tensor
    labels: Tensor
    ignore: Tensor
    valid: Tensor
    reliability: Tensor | None
    shape: tuple[int, int]
    num_positives: int


def neighbourhood_offsets(config: SamplerConfig) -> tuple[Tensor, Tensor]:
    """Integer offsets ``(dx, dy)`` on the ``subd`` grid: positives (P, 2) within ``pos_d`` and
    negatives (K, 2) with ``neg_d <= distance <= ngh``, in row-major order (dy, then dx)."""
    r = (config.ngh // config.subd) * config.subd
    steps = torch.arange(-r, r + 1, config.subd)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    d2 = (offsets**2).sum(1)
    positive = d2 <= config.pos_d**2
    negative = (d2 >= config.neg_d**2) & (d2 <= config.ngh**2)
    return offsets[positive], offsets[negative]


def sample_positions(
    step: int, height: int, width: int, border: int, *, device=None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(y, x) int64 positions (n,) inside the border: a grid (``step > 0``) or random (``step < 0``)."""
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"maps of {height}x{width} leave nothing inside a border of {border} pixels")
    if step > 0:
        ys = torch.arange(border, height - border, step, device=device)
        xs = torch.arange(border, width - border, step, device=device)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return y.reshape(-1), x.reshape(-1)
    n = max(1, (height - 2 * border) * (width - 2 * border) // step**2)
    x = torch.randint(border, width - border, (n,), device=device, generator=generator)
    y = torch.randint(border, height - border, (n,), device=device, generator=generator)
    return y, x


def sample_scores(
    descriptors1: Tensor,
    descriptors2: Tensor,
    flow: Tensor,
    mask: Tensor | None = None,
    reliability1: Tensor | None = None,
    reliability2: Tensor | None = None,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
) -> SampledScores:
    """Score rows for sampled query pixels (see the module docstring).

    Args:
        descriptors1, descriptors2: (B, D, H, W) L2-normalised along D.
        flow: (B, 2, H, W) for each pixel of image 1 its (x, y) in image 2 (NaN allowed = invalid).
        mask: (B, H, W) bool validity of the flow, or None (all valid where finite).
        reliability1, reliability2: (B, 1, H, W) or None.
    """
    B, D, H, W = descriptors1.shape
    if descriptors2.shape != descriptors1.shape or flow.shape != (B, 2, H, W):
        raise ValueError(
            f"sampler needs descriptors (B, D, H, W) x2 and flow (B, 2, H, W); got {tuple(descriptors1.shape)}, "
            f"{tuple(descriptors2.shape)}, {tuple(flow.shape)}"
        )
    device = descriptors1.device
    pos_off, neg_off = (o.to(device) for o in neighbourhood_offsets(config))
    y1, x1 = sample_positions(config.subq, H, W, config.border, device=device, generator=generator)
    n = y1.numel()
    b1 = torch.arange(B, device=device).repeat_interleave(n)
    y1, x1 = y1.repeat(B), x1.repeat(B)

    query = descriptors1[b1, :, y1, x1]  # (Q, D)
    target = flow[b1, :, y1, x1].float()  # (Q, 2)
    finite = torch.isfinite(target).all(1)
    xy2 = torch.floor(torch.where(finite[:, None], target, torch.zeros_like(target)) + 0.5).long()
    x2, y2 = xy2[:, 0], xy2[:, 1]
    valid = finite & (x2 >= 0) & (x2 < W) & (y2 >= 0) & (y2 < H)
    if mask is not None:
        valid &= mask[b1, y1, x1].bool()

    # positives and ring negatives: one gather of the (Q, P + K, D) neighbourhoods in image 2
    offsets = torch.cat([pos_off, neg_off])
    xs = (x2[:, None] + offsets[None, :, 0]).clamp(0, W - 1)
    ys = (y2[:, None] + offsets[None, :, 1]).clamp(0, H - 1)
    table = descriptors2.permute(0, 2, 3, 1).reshape(B * H * W, D)
    window = table[(b1[:, None] * H + ys) * W + xs]  # (Q, P + K, D)
    local = torch.einsum("qd,qkd->qk", query, window)
    P = pos_off.shape[0]
    pscores, nscores = local[:, :P], local[:, P:]

    reliability = None
    if reliability1 is not None:
        reliability = reliability1[b1, 0, y1, x1]
    if config.maxpool_pos:
        pscores, best = pscores.max(dim=1, keepdim=True)
        if reliability is not None and reliability2 is not None:
            bx = xs.gather(1, best)[:, 0]
            by = ys.gather(1, best)[:, 0]
            reliability = (reliability + reliability2[b1, 0, by, bx]) / 2

    parts = [pscores, nscores]
    ignores = [torch.zeros(b1.numel(), pscores.shape[1] + nscores.shape[1], dtype=torch.bool, device=device)]
    if config.subd_neg:
        y3, x3 = sample_positions(config.subd_neg, H, W, config.border, device=device, generator=generator)
        n3 = y3.numel()
        b3 = torch.arange(B, device=device).repeat_interleave(n3)
        y3, x3 = y3.repeat(B), x3.repeat(B)
        distractors = descriptors2[b3, :, y3, x3]  # (B * n3, D)
        dscores = query @ distractors.t()
        near = (b3[None, :] == b1[:, None]) & (
            (x3[None, :] - x2[:, None]) ** 2 + (y3[None, :] - y2[:, None]) ** 2 < config.neg_d**2
        )
        parts.append(dscores.masked_fill(near, 0))
        ignores.append(near)
    scores = torch.cat(parts, dim=1)
    ignore = torch.cat(ignores, dim=1)
    labels = torch.zeros_like(ignore)
    labels[:, : pscores.shape[1]] = True
    return SampledScores(scores, labels, ignore, valid, reliability, (B, n), pscores.shape[1])
