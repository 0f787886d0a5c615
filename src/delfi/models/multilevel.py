"""Multi-level attention keypoints ("Using Multi-Level Convolutional Information for Scale- and
Viewpoint-Robust Local Features"; ALGORITHMS.md section 4) on a `MultiLevelNet`.

Extraction of one image: optional downscale to ``max_image_size``; for each pyramid scale (one,
1.0, by default) the network's per-level descriptor and attention maps on the layer2 grid; per
level the selection of `delfi.extract.multilevel.select_level` (3x3 NMS, D2-Net sub-pixel
refinement, ``score >= score_threshold``, bilinear descriptors, L2-normalised); keypoints at the
refined cell's receptive-field centre in original pixels, with the level's receptive-field size as
scale; the levels' keypoints concatenated (``combine: concatenate``, the seed) or, with ``combine:
sum``, each keypoint described by the attention-weighted sum of every level's normalised
descriptor at its position (re-normalised); sorted by score; ``top_k`` (0 keeps all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from delfi.extract.delf import scaled_size
from delfi.extract.multilevel import sample_map, select_level
from delfi.models.capabilities import ATTENTION_MAPS, LOCAL, QUERY_BOXES, SCALES
from delfi.models.delf import AttentionBackbone, StrideIn
from delfi.models.modes import inference_method
from delfi.models.multilevel_net import LEVELS, MultiLevelNet
from delfi.models.resnet import NORMALISATION
from delfi.types import Features, rescale_keypoints

__all__ = ["COMBINE", "MultiLevel", "MultiLevelConfig", "MultiLevelNet"]

COMBINE = ("concatenate", "sum")


@dataclass
class MultiLevelConfig:
    """Settings of a multi-level attention extractor (defaults: the seed's extraction)."""

    model: str = "multilevel"
    weights: Optional[str] = None  # a delfi multilevel checkpoint (encoders + attention)
    backbone_weights: Optional[str] = None  # ImageNet ResNet state dict (heads random), e.g. for training
    depth: int = 50
    stride_in: StrideIn = StrideIn.torchvision
    code_dim: int = 64
    first_stride1: bool = False
    normalisation: str = "imagenet"
    channels_last: bool = True
    precision: str = "float32"  # float32 | bfloat16 (autocast of the network; selection in float32)
    max_image_size: int = 1600  # <= 0: no limit
    scales: list[float] = field(default_factory=lambda: [1.0])
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    score_threshold: float = 0.3
    nms: bool = True
    refine: bool = True
    combine: str = "concatenate"
    top_k: int = 0  # 0 keeps all

    def validate(self) -> None:
        import math

        from delfi.config import ConfigError, require_number

        if self.model != "multilevel":
            raise ConfigError(f"model: expected 'multilevel', got {self.model!r}")
        if self.depth not in (50, 101):
            raise ConfigError(f"depth: 50 or 101, got {self.depth}")
        if self.code_dim <= 0:
            raise ConfigError(f"code_dim: must be > 0, got {self.code_dim}")
        if self.normalisation not in NORMALISATION:
            raise ConfigError(f"normalisation: one of {', '.join(NORMALISATION)}, got {self.normalisation!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ConfigError(f"precision: float32 or bfloat16, got {self.precision!r}")
        if not self.scales or any(not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in self.scales):
            raise ConfigError(f"scales: a non-empty list of positive finite scales, got {self.scales}")
        unknown = [name for name in self.levels if name not in LEVELS]
        if not self.levels or unknown:
            raise ConfigError(f"levels: a non-empty list of {', '.join(LEVELS)}, got {self.levels}")
        if self.combine not in COMBINE:
            raise ConfigError(f"combine: one of {', '.join(COMBINE)}, got {self.combine!r}")
        require_number("score_threshold", self.score_threshold)
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 keeps all), got {self.top_k}")


class MultiLevel(AttentionBackbone):
    """Multi-level attention extractor (layer2 / layer3 / layer4 codes and attention)."""

    family = "multilevel"
    network_class = MultiLevelNet
    capabilities = frozenset({LOCAL, SCALES, ATTENTION_MAPS, QUERY_BOXES})

    def __init__(self, config: MultiLevelConfig | None = None, network: MultiLevelNet | None = None) -> None:
        super().__init__(config or MultiLevelConfig(), network)

    def local_receptive_field(self):
        return self.network.grid_field

    def level_indices(self) -> list[int]:
        return [LEVELS.index(name) for name in self.config.levels]

    def dense(self, image: Tensor, scales) -> list[tuple[float, tuple[int, int], dict[str, tuple[Tensor, ...]]]]:
        """(scale, level size (w, h), the network's ``encoded`` / ``attention`` maps) per pyramid scale."""
        normalise = NORMALISATION[self.normalisation_name]
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        height, width = image.shape[-2:]
        out = []
        for scale in scales:
            size = scaled_size(width, height, scale)
            level = image[None] if size == (width, height) else F.interpolate(
                image[None], (size[1], size[0]), mode="bilinear", align_corners=False, antialias=scale < 1
            )
            with self.autocast():
                maps = self.network.dense_maps(normalise(level).contiguous(memory_format=memory_format))
            out.append((scale, size, maps))
        return out

    @inference_method
    def attention_maps(self, image: Any) -> list[tuple[str, Tensor]]:
        """(label, attention (h, w)) per level (and pyramid scale), for pictures."""
        limited, *_ = self.prepare(image)
        scales = self.config.scales
        out = []
        for scale, _, maps in self.dense(limited, scales):
            for index in self.level_indices():
                label = LEVELS[index] if len(scales) == 1 else f"{LEVELS[index]} x{scale:g}"
                out.append((label, maps["attention"][index][0, 0].float().cpu()))
        return out

    @inference_method
    def extract(self, image: Any, bbox: Optional[tuple[float, float, float, float]] = None) -> Features:
        """Multi-level features of one image (or of its ``bbox`` crop; keypoints in full-image pixels).

        Returns:
            `Features` sorted by score: keypoints (N, 2), scores (N,), descriptors (N, code_dim),
            scales (N,) the receptive-field size of the keypoint's level, in original pixels.
        """
        c = self.config
        limited, factor, offset, original = self.prepare(image, bbox)
        grid = self.network.grid_field
        fields = self.network.receptive_fields()
        points, scores, descriptors, sizes = [], [], [], []
        for _, (w_s, h_s), maps in self.dense(limited, c.scales):
            attention = [a[0, 0].float() for a in maps["attention"]]
            encoded = [e[0].float() for e in maps["encoded"]]
            to_limited = (limited.shape[-1] / w_s, limited.shape[-2] / h_s)
            for index in self.level_indices():
                cells, score, desc = select_level(attention[index], encoded[index], c.score_threshold, c.refine, c.nms)
                if c.combine == "sum" and len(cells):
                    desc = self.summed_descriptors(attention, encoded, cells)
                pixels = cells * grid.stride + (-grid.padding + (grid.size - 1) / 2)
                points.append(rescale_keypoints(pixels, to_limited))
                scores.append(score)
                descriptors.append(desc)
                sizes.append(torch.full_like(score, fields[LEVELS[index]].size * max(to_limited)))
        keypoints, score = torch.cat(points), torch.cat(scores)
        order = torch.argsort(score, descending=True, stable=True)
        if c.top_k:
            order = order[: c.top_k]
        selected = Features(keypoints[order], score[order], torch.cat(descriptors)[order], torch.cat(sizes)[order], None,
                            (limited.shape[-1], limited.shape[-2]))  # fmt: skip
        return self.finish_local(selected, factor, offset, original)

    @staticmethod
    def summed_descriptors(attention: list[Tensor], encoded: list[Tensor], cells: Tensor) -> Tensor:
        """(N, C) L2-normalised sum over all levels of attention x normalised descriptor at ``cells``."""
        total = 0
        for a, e in zip(attention, encoded):
            weight, _ = sample_map(a[None], cells)
            values, _ = sample_map(e, cells)
            total = total + weight * F.normalize(values, dim=1)
        return F.normalize(total, dim=1)

    def apply_pca(self, descriptors: Tensor) -> Tensor:  # no PCA for this family
        return descriptors
