"""DELF (Noh et al., ICCV 2017): ResNet ``layer3`` features selected by a learned attention map.

Extraction as the reference implementations (ALGORITHMS.md section 1): optional downscale to
``max_image_size``; the 7-scale pyramid, each level resized from the (limited) image; cells with
``attention >= score_threshold``; box NMS on receptive-field boxes ranked by attention; top-k;
keypoints at receptive-field centres in original pixels; descriptors L2-normalised, then optional
PCA (whitening, re-normalisation). The receptive field is computed from the backbone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from delfi.extract.delf import DELF_SCALES, crop_query, delf_select, limit_image_size, scaled_size, uncrop_keypoints
from delfi.io.images import load_for_model
from delfi.extract.receptive import TF_SUBSAMPLE_POOL, receptive_field
from delfi.models.heads import AttentionHead
from delfi.models.resnet import NORMALISATION, ResNet, load_imagenet_state_dict
from delfi.types import Features

CHECKPOINT_KEY = "delfi"  # delfi checkpoints: {"delfi": {"family", "config", "normalisation"}, "state_dict": ...}


class StrideIn(str, Enum):
    torchvision = "3x3"  # stride on the 3x3 conv (torchvision v1.5)
    slim = "1x1"  # stride on the first 1x1 conv (original / TF slim)


@dataclass
class DELFConfig:
    """Settings of a DELF extractor (defaults: TF DELF v1 extraction)."""

    model: str = "delf"
    weights: Optional[str] = None  # a delfi DELF checkpoint (backbone + attention)
    backbone_weights: Optional[str] = None  # ImageNet ResNet state dict (random attention), e.g. for training
    depth: int = 50
    stride_in: StrideIn = StrideIn.torchvision
    extra_pool: bool = False  # TF slim's stride-2 subsampling after block3 (stride 32)
    attention_batch_norm: bool = True
    normalisation: str = "imagenet"  # imagenet | tf-delf | unit; a checkpoint's own metadata wins
    channels_last: bool = True  # oneDNN runs the ResNet ~1.8x faster in this memory layout
    precision: str = "float32"  # float32 | bfloat16 (autocast of the backbone and heads; selection in float32)
    max_image_size: int = 1024  # <= 0: no limit
    scales: list[float] = field(default_factory=lambda: list(DELF_SCALES))
    score_threshold: float = 100.0
    iou_threshold: float = 1.0  # >= 1: no suppression (TF)
    top_k: int = 1000  # 0 keeps all
    halve_threshold_if_empty: bool = False  # DeLF-pytorch fallback
    pca: Optional[str] = None  # PCA file from `delfi pca fit`
    pca_dims: int = 40
    pca_whiten: bool = False
    pca_renormalise: bool = True

    def validate(self) -> None:
        from delfi.config import ConfigError

        if self.model != "delf":
            raise ConfigError(f"model: expected 'delf', got {self.model!r}")
        validate_backbone(self)


def validate_backbone(config: Any) -> None:
    """Checks shared by DELF and DELG configs: invalid values and settings that can give no feature."""
    import math

    from delfi.config import ConfigError, require_number

    require_number("score_threshold", config.score_threshold)
    require_number("iou_threshold", config.iou_threshold, low=0, why=">= 1 keeps every box")
    if config.top_k < 0:
        raise ConfigError(f"top_k: must be >= 0 (0 keeps all), got {config.top_k}")
    if config.pca_dims <= 0:
        raise ConfigError(f"pca_dims: must be > 0, got {config.pca_dims}")
    if any(not isinstance(s, (int, float)) or not math.isfinite(s) for s in config.scales or []):
        raise ConfigError(f"scales: finite numbers, got {config.scales}")

    if config.depth not in (50, 101):
        raise ConfigError(f"depth: 50 or 101, got {config.depth}")
    if config.normalisation not in NORMALISATION:
        raise ConfigError(f"normalisation: one of {', '.join(NORMALISATION)}, got {config.normalisation!r}")
    if config.precision not in ("float32", "bfloat16"):
        raise ConfigError(f"precision: float32 or bfloat16, got {config.precision!r}")
    if not config.scales or min(config.scales) <= 0:
        raise ConfigError(f"scales: a non-empty list of positive scales, got {config.scales}")


def load_delfi_checkpoint(path: str | os.PathLike, family: str) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, state dict) of a delfi checkpoint of ``family``; tensors only, nothing executed."""
    from delfi.models.checkpoints import CheckpointError, load_checkpoint

    checkpoint = load_checkpoint(path)
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a delfi checkpoint (no '{CHECKPOINT_KEY}' metadata / 'state_dict')")
    if meta.get("family") != family:
        raise CheckpointError(f"{path}: a {meta.get('family')!r} checkpoint, expected {family!r}")
    return meta, checkpoint["state_dict"]


def save_delfi_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a DELF / DELG model with the metadata `load_weights` reads back."""
    from delfi.config import config_to_dict

    meta = {"family": model.family, "config": config_to_dict(model.config), "normalisation": model.normalisation_name}
    torch.save({CHECKPOINT_KEY: meta, "state_dict": model.state_dict()}, path)


class AttentionBackbone(nn.Module):
    """Shared machinery of DELF and DELG: backbone, normalisation, pyramid, PCA, weights."""

    family = "delf"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.depth, StrideIn(config.stride_in).value, num_classes=None)
        self.normalisation_name = config.normalisation
        self.weights_sha256: str | None = None
        self._pca = None
        self._memory_format = torch.contiguous_format
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def local_receptive_field(self):
        pool = TF_SUBSAMPLE_POOL if self.config.extra_pool else None
        return receptive_field(self.backbone, "layer3", extra_pool=pool)

    def layer3(self, features: dict[str, Tensor]) -> Tensor:
        x = features["layer3"]
        return x[:, :, ::2, ::2] if self.config.extra_pool else x

    def load_weights(self, path: str | os.PathLike) -> "AttentionBackbone":
        """Load a delfi checkpoint of this family (its normalisation metadata is adopted)."""
        from delfi.models.checkpoints import load_state_dict_checked
        from delfi.models.weights import sha256_file

        meta, state_dict = load_delfi_checkpoint(path, self.family)
        load_state_dict_checked(self, state_dict, str(path))
        self.normalisation_name = meta.get("normalisation", self.normalisation_name)
        self.weights_sha256 = sha256_file(path)
        return self

    def load_backbone(self, path: str | os.PathLike) -> "AttentionBackbone":
        """Load ImageNet weights (torchvision layout) into the backbone only."""
        from delfi.models.checkpoints import load_checkpoint

        load_imagenet_state_dict(self.backbone, load_checkpoint(path))
        return self

    def working_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(w, h) an image of size (width, height) is limited to (``max_image_size``), or None."""
        limit = self.config.max_image_size
        if limit <= 0 or max(width, height) <= limit:
            return None
        return scaled_size(width, height, limit / max(width, height))

    def prepare(self, image: Any, bbox: Optional[tuple[float, float, float, float]] = None):
        """(image (3, h, w) limited to max size, factor (fx, fy) to original, crop offset, original size).

        A path is decoded directly at the limited size when the file is at least twice as large
        (`working_size`; not for query crops, which need the full resolution inside the box).
        """
        rgb, original = load_for_model(image, self.working_size if bbox is None else None)
        source_size = original  # the size the limited image stands for
        offset, limit = (0, 0), self.config.max_image_size if self.config.max_image_size > 0 else None
        if bbox is not None:
            crop = crop_query(rgb, bbox, limit)
            rgb, offset, limit = crop.image, crop.offset_xy, crop.max_image_size
            source_size = (rgb.shape[-1], rgb.shape[-2])
        limited, _ = limit_image_size(rgb, limit)
        factor = (source_size[0] / limited.shape[-1], source_size[1] / limited.shape[-2])
        return limited.to(self.device), factor, offset, original

    def levels(self, image: Tensor, scales, layers: tuple[str, ...]):
        """Yield (scale, level size (w, h), {layer: (1, C, h, w)}) for each pyramid scale."""
        normalise = NORMALISATION[self.normalisation_name]
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        if self._memory_format != memory_format:  # converts the weights once (loading keeps the layout)
            self.to(memory_format=memory_format)
            self._memory_format = memory_format
        height, width = image.shape[-2:]
        for scale in scales:
            size = scaled_size(width, height, scale)
            level = image[None] if size == (width, height) else F.interpolate(
                image[None], (size[1], size[0]), mode="bilinear", align_corners=False
            )
            level = normalise(level).contiguous(memory_format=memory_format)  # TF: bilinear, no antialias
            yield scale, size, self.backbone.forward_features(level, layers=layers)

    def autocast(self):
        """bfloat16 autocast when configured (wraps backbone and heads; selection casts to float32)."""
        enabled = self.config.precision == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def finish_local(self, features: Features, factor, offset, original) -> Features:
        """Map keypoints from the limited (cropped) image to the original, apply PCA."""
        from delfi.types import rescale_keypoints

        keypoints = rescale_keypoints(features.keypoints, factor)
        keypoints = uncrop_keypoints(keypoints, offset)
        scales = features.scales * max(factor) if features.scales is not None else None
        descriptors = self.apply_pca(features.descriptors)
        return Features(keypoints, features.scores, descriptors, scales, features.global_descriptor, original)

    def apply_pca(self, descriptors: Tensor) -> Tensor:
        c = self.config
        if not c.pca:
            return descriptors
        from delfi.extract.pca import apply_pca, load_pca

        if self._pca is None:
            self._pca = load_pca(c.pca)
        reduced = apply_pca(descriptors.cpu(), self._pca, dims=c.pca_dims, whiten=c.pca_whiten, renormalise=c.pca_renormalise)
        return torch.as_tensor(reduced, dtype=torch.float32, device=descriptors.device)


class DELF(AttentionBackbone):
    """DELF extractor: ResNet to ``layer3`` + attention head (softplus scores)."""

    family = "delf"

    def __init__(self, config: DELFConfig | None = None) -> None:
        config = config or DELFConfig()
        super().__init__(config)
        self.attention = AttentionHead(1024, 512, batch_norm=config.attention_batch_norm)
        self.eval()

    @torch.inference_mode()
    def attention_maps(self, image: Any) -> list[tuple[float, Tensor]]:
        """(scale, attention (h, w)) per pyramid scale, for pictures."""
        limited, *_ = self.prepare(image)
        with self.autocast():
            return [
                (scale, self.attention(self.layer3(out))[0, 0].float().cpu())
                for scale, _, out in self.levels(limited, self.config.scales, ("layer3",))
            ]

    @torch.inference_mode()
    def extract(self, image: Any, bbox: Optional[tuple[float, float, float, float]] = None) -> Features:
        """DELF features of one image (or of its ``bbox`` crop, keypoints in full-image pixels).

        Returns:
            `Features` sorted by attention: keypoints (N, 2), scores (N,), descriptors (N, 1024 or
            pca_dims), scales (N,) receptive-field sizes in original pixels.
        """
        c = self.config
        limited, factor, offset, original = self.prepare(image, bbox)
        levels = []
        with self.autocast():
            for scale, size, out in self.levels(limited, c.scales, ("layer3",)):
                feature_map = self.layer3(out)
                attention = self.attention(feature_map)
                levels.append((scale, attention[0, 0].float(), feature_map[0].float(), size))
        selected = delf_select(
            levels, self.local_receptive_field(), (limited.shape[-1], limited.shape[-2]),
            score_threshold=c.score_threshold, iou_threshold=c.iou_threshold, top_k=c.top_k,
            halve_threshold_if_empty=c.halve_threshold_if_empty,
        )  # fmt: skip
        return self.finish_local(selected, factor, offset, original)
