"""Reliability losses on sampled score rows: R2D2's AP-based loss and a HardNet-style variant.

``ap_reliability_loss`` (official ``ReliabilityLoss``, base 0.5): per valid query with AP ``a``
(`quantized_ap`, nq 20, bins on [0, 1]) and reliability ``r`` (mean of the two images'
reliabilities at the query and its arg-max positive)::

    loss = mean over valid queries of  1 - a * r - (1 - r) * base

so ``r`` is pushed up where the AP beats ``base`` and down elsewhere. Without reliabilities it is
``1 - a`` (the official ``PixelAPLoss``). The descriptors' gradient is scaled by ``r``: once ``r``
has dropped everywhere (early in a short run with a large learning rate, when no AP beats
``base`` yet) they hardly learn; `ap_reliability_losses` also returns the plain ``1 - a``, which
`delfi.train.losses.r2d2` can add (``descriptor_weight``) to keep them learning.

``hardnet_reliability_loss`` (the fork's variant; the exact formula here is delfi's choice): with
``s_p`` the (max-pooled) positive cosine, ``s_n`` the hardest negative cosine (largest score among
the negative columns, ignored distractors excluded) and ``d = sqrt(max(2 - 2 s, 1e-8))`` the
Euclidean distance of unit descriptors::

    t = max(0, margin + d_p - d_n)                    (HardNet triplet margin, margin 1)
    loss = mean over valid queries of  r * t + (1 - r) * base     (weighted, base 0.5)
    loss = mean over valid queries of  t                          (unweighted)

The weighted form mirrors the AP one (``r (1 - a) + (1 - r)(1 - base)``): ``r`` rises where the
triplet loss is below ``base``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from delfi.train.losses.ap import quantized_ap
from delfi.train.losses.sampler import SampledScores

__all__ = ["ap_reliability_loss", "ap_reliability_losses", "hardnet_reliability_loss", "masked_mean"]


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values[valid]`` (float32); 0 (keeping the graph) when nothing is valid."""
    values = values.float()
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1)


def ap_reliability_loss(samples: SampledScores, nq: int = 20, base: float = 0.5, use_reliability: bool = True) -> Tensor:
    """R2D2's reliability loss (scalar float32); see the module docstring."""
    return ap_reliability_losses(samples, nq, base, use_reliability)[0]


def ap_reliability_losses(
    samples: SampledScores, nq: int = 20, base: float = 0.5, use_reliability: bool = True
) -> tuple[Tensor, Tensor]:
    """(R2D2's reliability loss, the plain AP loss ``mean(1 - a)``), scalars float32, from one AP
    computation; the first is the second when there are no reliabilities or not `use_reliability`."""
    if not 0 <= base < 1:
        raise ValueError(f"base must be in [0, 1), got {base}")
    ap = quantized_ap(samples.scores, samples.labels, nq=nq)
    plain = masked_mean(1 - ap, samples.valid)
    if use_reliability and samples.reliability is not None:
        r = samples.reliability.float()
        return masked_mean(1 - ap * r - (1 - r) * base, samples.valid), plain
    return plain, plain


def hardnet_reliability_loss(
    samples: SampledScores, margin: float = 1.0, base: float = 0.5, use_reliability: bool = True
) -> Tensor:
    """HardNet-style hardest-negative triplet loss (scalar float32); see the module docstring."""
    with torch.autocast(device_type=samples.scores.device.type, enabled=False):
        scores = samples.scores.float()
        positives = scores.masked_fill(~samples.labels, -2.0).max(dim=1).values
        negatives = scores.masked_fill(samples.labels | samples.ignore, -2.0).max(dim=1).values
        d_pos = torch.sqrt((2 - 2 * positives).clamp_min(1e-8))
        d_neg = torch.sqrt((2 - 2 * negatives).clamp_min(1e-8))
        triplet = torch.relu(margin + d_pos - d_neg)
        if use_reliability and samples.reliability is not None:
            r = samples.reliability.float()
            triplet = r * triplet + (1 - r) * base
        return masked_mean(triplet, samples.valid)
