"""Training losses. R2D2: quantised AP, the official pixel sampler, reliability (AP / HardNet),
repeatability similarities (cosim and the fork's variants) and peakiness."""

from delfi.train.losses.ap import quantized_ap
from delfi.train.losses.r2d2 import RELIABILITY_LOSSES, R2D2Loss, R2D2LossConfig, r2d2_loss
from delfi.train.losses.reliability import ap_reliability_loss, hardnet_reliability_loss
from delfi.train.losses.repeatability import (
    SIMILARITIES,
    patch_similarity,
    peakiness,
    peaky_loss,
    repeatability_loss,
    warp_by_flow,
)
from delfi.train.losses.sampler import SampledScores, SamplerConfig, sample_scores

__all__ = [
    "RELIABILITY_LOSSES",
    "SIMILARITIES",
    "R2D2Loss",
    "R2D2LossConfig",
    "SampledScores",
    "SamplerConfig",
    "ap_reliability_loss",
    "hardnet_reliability_loss",
    "patch_similarity",
    "peakiness",
    "peaky_loss",
    "quantized_ap",
    "r2d2_loss",
    "repeatability_loss",
    "sample_scores",
    "warp_by_flow",
]
