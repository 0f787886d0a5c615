"""DELG (Cao et al., ECCV 2020): one ResNet with a global head (GeM + whitening FC on ``layer4``) and a
local head (autoencoder + attention on ``layer3``), ALGORITHMS.md section 2.

Local features are extracted as DELF's (7 scales, threshold, box NMS, top-k) with the autoencoder's
code as descriptor; the global descriptor is aggregated over ``global_scales`` (L2-normalise each,
sum, L2-normalise). Scales used by both heads run the backbone once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from delfi.extract.delf import DELF_SCALES, DELG_GLOBAL_SCALES, aggregate_global, delf_select
from delfi.models.capabilities import GLOBAL, LOCAL
from delfi.models.delf import AttentionBackbone, StrideIn, validate_backbone
from delfi.models.modes import inference_method
from delfi.models.networks import DELGNet
from delfi.types import Features

__all__ = ["DELG", "DELGConfig", "DELGNet"]


@dataclass
class DELGConfig:
    """Settings of a DELG extractor (defaults: TF DELG, ResNet-50 trained on GLDv1)."""

    model: str = "delg"
    weights: Optional[str] = None  # a delfi DELG checkpoint
    backbone_weights: Optional[str] = None  # ImageNet ResNet state dict (heads random), e.g. for training
    depth: int = 50
    stride_in: StrideIn = StrideIn.torchvision
    extra_pool: bool = False
    attention_batch_norm: bool = True
    normalisation: str = "imagenet"
    channels_last: bool = True  # oneDNN runs the ResNet ~1.8x faster in this memory layout
    precision: str = "float32"  # float32 | bfloat16 (autocast of the backbone and heads; selection in float32)
    max_image_size: int = 1024
    scales: list[float] = field(default_factory=lambda: list(DELF_SCALES))
    global_scales: list[float] = field(default_factory=lambda: list(DELG_GLOBAL_SCALES))
    score_threshold: float = 175.0  # 175 GLDv1 R50; 454.6 GLDv2-clean R50
    iou_threshold: float = 1.0
    top_k: int = 1000
    halve_threshold_if_empty: bool = False
    local_dim: int = 128  # autoencoder code size (or 1x1 reduction size without autoencoder)
    autoencoder: bool = True  # False: DELG-pytorch style, attention on layer3 and a 1x1 reduction
    global_dim: int = 2048
    gem_p: float = 3.0
    gem_learnable: bool = False
    extract_local: bool = True
    extract_global: bool = True
    pca: Optional[str] = None
    pca_dims: int = 40
    pca_whiten: bool = False
    pca_renormalise: bool = True

    def validate(self) -> None:
        from delfi.config import ConfigError

        if self.model != "delg":
            raise ConfigError(f"model: expected 'delg', got {self.model!r}")
        if not (self.extract_local or self.extract_global):
            raise ConfigError("extract_local / extract_global: at least one must be true")
        validate_backbone(self)
        from delfi.config import require_number

        if self.extract_global:
            if not self.global_scales or any(not isinstance(s, (int, float)) or not s > 0 or s == float("inf") for s in self.global_scales):
                raise ConfigError(f"global_scales: a non-empty list of positive finite scales, got {self.global_scales}")
            require_number("gem_p", self.gem_p, low=0, low_open=True)
        for key in ("local_dim", "global_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")


class DELG(AttentionBackbone):
    """DELG extractor on a `DELGNet`: global GeM + whitening on ``layer4``, local autoencoder +
    attention on ``layer3``."""

    family = "delg"
    network_class = DELGNet
    capabilities = AttentionBackbone.capabilities | {GLOBAL}

    def __init__(self, config: DELGConfig | None = None, network: DELGNet | None = None) -> None:
        config = config or DELGConfig()
        super().__init__(config, network)
        if not config.extract_global:
            self.capabilities = self.capabilities - {GLOBAL}
        if not config.extract_local:
            self.capabilities = self.capabilities - {LOCAL}

    def __getattr__(self, name: str):
        network = self.__dict__.get("_modules", {}).get("network")
        if network is not None and name in ("autoencoder", "reduction", "gem", "whitening"):  # as before
            return getattr(network, name)
        return super().__getattr__(name)

    def local_outputs(self, layer3: Tensor) -> tuple[Tensor, Tensor]:
        """(attention (B, 1, h, w), local descriptor map (B, local_dim, h, w)) from ``layer3``."""
        return self.network.local_outputs(layer3)

    def global_descriptor(self, layer4: Tensor) -> Tensor:
        """(B, global_dim) L2-normalised global descriptors from ``layer4`` (B, 2048, h, w)."""
        return self.network.global_descriptor(layer4)

    @inference_method
    def attention_maps(self, image: Any) -> list[tuple[float, Tensor]]:
        """(scale, attention (h, w)) per local pyramid scale, for pictures."""
        limited, *_ = self.prepare(image)
        with self.autocast():
            return [
                (scale, self.local_outputs(self.layer3(out))[0][0, 0].float().cpu())
                for scale, _, out in self.levels(limited, self.config.scales, ("layer3",))
            ]

    @inference_method
    def extract(self, image: Any, bbox: Optional[tuple[float, float, float, float]] = None) -> Features:
        """DELG local + global features of one image (or its ``bbox`` crop; keypoints in full-image pixels).

        Returns:
            `Features` with keypoints (N, 2), scores (N,), descriptors (N, local_dim or pca_dims),
            scales (N,), global_descriptor (global_dim,).
        """
        c = self.config
        limited, factor, offset, original = self.prepare(image, bbox)
        local_scales = list(c.scales) if c.extract_local else []
        global_scales = list(c.global_scales) if c.extract_global else []
        levels, globals_ = [], []
        with self.autocast():
            for scale in sorted(set(local_scales) | set(global_scales)):
                layers = ("layer3", "layer4") if scale in global_scales else ("layer3",)
                for _, size, out in self.levels(limited, [scale], layers):
                    if scale in local_scales:
                        attention, descriptors = self.local_outputs(self.layer3(out))
                        levels.append((scale, attention[0, 0].float(), descriptors[0].float(), size))
                    if scale in global_scales:
                        globals_.append(self.global_descriptor(out["layer4"])[0].float())
        global_descriptor = aggregate_global(globals_) if globals_ else None
        if not levels:
            empty = torch.zeros(0, device=self.device)
            return Features(empty.view(0, 2), empty, empty.view(0, c.local_dim), empty, global_descriptor, original)
        selected = delf_select(
            levels, self.local_receptive_field(), (limited.shape[-1], limited.shape[-2]),
            score_threshold=c.score_threshold, iou_threshold=c.iou_threshold, top_k=c.top_k,
            halve_threshold_if_empty=c.halve_threshold_if_empty,
        )  # fmt: skip
        selected.global_descriptor = global_descriptor
        return self.finish_local(selected, factor, offset, original)
