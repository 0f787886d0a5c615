"""The R2D2 training loss: reliability (AP or HardNet) + repeatability similarity + peakiness.

Official default (``train.py``): ``1 * ReliabilityLoss(NghSampler2(...), base 0.5, nq 20)
+ 1 * CosimLoss(N 16) + 1 * PeakyLoss(N 16)``; the fork's variants swap the reliability term
(``reliability="hardnet"``) or the repeatability similarity (``repeatability="dice"`` ...).
Network outputs are the dicts of `delfi.models.l2net.R2D2Net.forward`: ``descriptors``
(B, D, H, W) L2-normalised, ``reliability`` and ``repeatability`` (B, 1, H, W) in (0, 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from delfi.train.losses.reliability import ap_reliability_losses, hardnet_reliability_loss
from delfi.train.losses.repeatability import PATCH_NORMS, PEAKY_PADDINGS, SIMILARITIES, peaky_loss, repeatability_loss
from delfi.train.losses.sampler import SamplerConfig, sample_scores

__all__ = ["RELIABILITY_LOSSES", "R2D2Loss", "R2D2LossConfig", "r2d2_loss"]

RELIABILITY_LOSSES = ("ap", "hardnet")


@dataclass(frozen=True)
class R2D2LossConfig:
    """Which loss terms and their settings (defaults: the official recipe)."""

    reliability: str = "ap"  # ap | hardnet
    repeatability: str = "cosim"  # cosim | dice | jaccard | czekanowski | squared_chord
    N: int = 16  # repeatability / peakiness patch size
    reliability_weight: float = 1.0
    repeatability_weight: float = 1.0
    peaky_weight: float = 1.0
    descriptor_weight: float = 0.0  # plain AP (ap) / unweighted triplet (hardnet) term; 0 = official
    nq: int = 20  # AP bins
    base: float = 0.5  # AP reliability base
    hardnet_margin: float = 1.0
    hardnet_base: float = 0.5
    hardnet_weighted: bool = True  # weight the triplet loss by reliability (with the base term)
    patch_norm: str = "auto"  # auto | none | l1 | l2
    peaky_padding: str = "official"  # official | exclude
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        choices = {
            "reliability": RELIABILITY_LOSSES,
            "repeatability": SIMILARITIES,
            "patch_norm": PATCH_NORMS,
            "peaky_padding": PEAKY_PADDINGS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"r2d2 loss: {key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.N < 2 or self.N % 2:
            raise ValueError(f"r2d2 loss: N must be an even patch size >= 2, got {self.N}")
        if not 2 <= self.nq <= 1000:
            raise ValueError(f"r2d2 loss: nq must be in [2, 1000], got {self.nq}")
        if not 0 <= self.base < 1:
            raise ValueError(f"r2d2 loss: base must be in [0, 1), got {self.base}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> R2D2LossConfig:
        """Build from a (possibly nested) mapping, refusing unknown keys with the allowed ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"r2d2 loss: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        sampler = values.pop("sampler", None)
        if isinstance(sampler, Mapping):
            sampler_names = {f.name for f in dataclasses.fields(SamplerConfig)}
            bad = sorted(set(sampler) - sampler_names)
            if bad:
                raise ValueError(
                    f"r2d2 loss: unknown sampler key(s) {', '.join(bad)}; allowed: {', '.join(sorted(sampler_names))}"
                )
            sampler = SamplerConfig(**sampler)
        return cls(**values, **({"sampler": sampler} if sampler is not None else {}))


def r2d2_loss(
    outputs1: Mapping[str, Tensor],
    outputs2: Mapping[str, Tensor],
    flow: Tensor,
    mask: Tensor | None = None,
    config: R2D2LossConfig | Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The R2D2 loss of a batch of pairs.

    Args:
        outputs1, outputs2: network outputs for images 1 and 2 (``descriptors``, ``reliability``,
            ``repeatability``), each (B, ., H, W).
        flow: (B, 2, H, W) for each pixel of image 1 its (x, y) in image 2 (pixel centres at
            integers); non-finite values are invalid.
        mask: (B, H, W) bool flow validity, or None.
        config: `R2D2LossConfig` or a mapping of its fields; None = the official recipe.
        generator: for the sampler's random positions (None = the global RNG).

    Returns:
        float32 scalars: ``total`` (weighted sum; terms of weight 0 are not computed),
        ``reliability``, ``repeatability``, ``peaky``, and ``descriptor`` when ``descriptor_weight``
        is not 0 (the plain AP loss, or the unweighted triplet loss: descriptors learn wherever the
        reliability is).
    """
    if not isinstance(config, R2D2LossConfig):
        config = R2D2LossConfig.from_mapping(config)
    zero = flow.new_zeros((), dtype=torch.float32)
    parts = {"reliability": zero, "repeatability": zero, "peaky": zero}
    if config.reliability_weight or config.descriptor_weight:
        samples = sample_scores(
            outputs1["descriptors"],
            outputs2["descriptors"],
            flow,
            mask,
            outputs1.get("reliability"),
            outputs2.get("reliability"),
            config.sampler,
            generator,
        )
        if config.reliability == "ap":
            parts["reliability"], plain = ap_reliability_losses(samples, nq=config.nq, base=config.base)
        else:
            parts["reliability"] = hardnet_reliability_loss(
                samples, config.hardnet_margin, config.hardnet_base, config.hardnet_weighted
            )
            plain = (hardnet_reliability_loss(samples, config.hardnet_margin, use_reliability=False)
                     if config.descriptor_weight else zero)
        if config.descriptor_weight:
            parts["descriptor"] = plain
    if config.repeatability_weight:
        parts["repeatability"] = repeatability_loss(
            outputs1["repeatability"], outputs2["repeatability"], flow, mask, config.repeatability, config.N, config.patch_norm
        )
    if config.peaky_weight:
        parts["peaky"] = peaky_loss(outputs1["repeatability"], outputs2["repeatability"], config.N, config.peaky_padding)
    total = (
        config.reliability_weight * parts["reliability"]
        + config.repeatability_weight * parts["repeatability"]
        + config.peaky_weight * parts["peaky"]
    )
    if config.descriptor_weight:
        total = total + config.descriptor_weight * parts["descriptor"]
    return {"total": total, **parts}


class R2D2Loss(nn.Module):
    """`r2d2_loss` as a module holding its config (no parameters)."""

    def __init__(self, config: R2D2LossConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config if isinstance(config, R2D2LossConfig) else R2D2LossConfig.from_mapping(config)

    def forward(
        self,
        outputs1: Mapping[str, Tensor],
        outputs2: Mapping[str, Tensor],
        flow: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return r2d2_loss(outputs1, outputs2, flow, mask, self.config, generator)

    def extra_repr(self) -> str:
        c = self.config
        return f"reliability={c.reliability}, repeatability={c.repeatability}, N={c.N}"
