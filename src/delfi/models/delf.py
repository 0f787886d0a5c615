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
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from delfi.extract.delf import DELF_SCALES, crop_query, delf_select, limit_image_size, scaled_size, uncrop_keypoints
from delfi.io.images import load_for_model
from delfi.models.capabilities import ATTENTION_MAPS, LOCAL, QUERY_BOXES, SCALES
from delfi.models.checkpoints import CHECKPOINT_KEY, CheckpointInfo
from delfi.models.modes import inference_method
from delfi.models.networks import DELFNet, StrideIn
from delfi.models.resnet import NORMALISATION, load_imagenet_state_dict
from delfi.types import Features

__all__ = ["DELF", "DELFConfig", "DELFNet", "StrideIn", "AttentionBackbone", "CHECKPOINT_KEY", "save_delfi_checkpoint"]


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


def save_delfi_checkpoint(model: nn.Module, path: str | os.PathLike, provenance: dict | None = None) -> None:
    """Save a DELF / DELG extractor's network with the metadata `load_weights` reads back
    (`delfi.models.checkpoints.save_checkpoint`)."""
    from delfi.config import config_to_dict
    from delfi.models.checkpoints import save_checkpoint

    save_checkpoint(path, model.network, family=model.family, config=config_to_dict(model.config),
                    normalisation=model.normalisation_name, provenance=provenance)  # fmt: skip


class AttentionBackbone(nn.Module):
    """Shared machinery of DELF and DELG extractors: network, normalisation, pyramid, PCA, weights.

    Built on a given ``network`` (e.g. the one being trained), the extractor leaves its mode alone
    (`extract` and `attention_maps` run it in eval and inference mode and restore each submodule's
    mode); built without one, it makes its own, in eval mode. With ``channels_last`` the network's
    4-d weights are put in the channels-last layout once, here (values unchanged; loading weights
    and moving devices keep the layout).
    """

    family = "delf"
    network_class: type[DELFNet] = DELFNet
    capabilities = frozenset({LOCAL, SCALES, ATTENTION_MAPS, QUERY_BOXES})

    def __init__(self, config: Any, network: DELFNet | None = None) -> None:
        super().__init__()
        self.config = config
        if network is None:
            network = self.network_class.from_config(config).eval()
        elif not isinstance(network, self.network_class):
            raise TypeError(f"a {self.family} extractor runs on a {self.network_class.__name__}, got {type(network).__name__}")
        elif not self.network_class.matches_config(network, config):
            raise ValueError(f"the network {network.architecture()} does not match the {self.family} config "
                             f"{self.network_class.architecture_of(config)}")  # fmt: skip
        if config.channels_last:
            network.to(memory_format=torch.channels_last)
        self.network = network
        self.normalisation_name = config.normalisation
        self.weights_sha256: str | None = None
        self._pca = None

    @property
    def backbone(self):
        """The network's ResNet."""
        return self.network.backbone

    @property
    def attention(self):
        """The network's attention head."""
        return self.network.attention

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def local_receptive_field(self):
        return self.network.local_receptive_field()

    def layer3(self, features: dict[str, Tensor]) -> Tensor:
        return self.network.layer3(features)

    def load_weights(self, path: str | os.PathLike, checkpoint: CheckpointInfo | None = None) -> "AttentionBackbone":
        """Load a checkpoint of this family (delfi or Lightning; its normalisation is adopted).

        ``checkpoint``: `load_checkpoint`'s reading of ``path`` when the caller has it already.
        """
        from delfi.models.checkpoints import CheckpointError, load_checkpoint, load_state_dict_checked
        from delfi.models.networks import same_setting
        from delfi.models.weights import sha256_file

        info = (checkpoint or load_checkpoint(path)).require_family(self.family)
        own = self.network.architecture()
        clash = [f"{k}={info.config[k]!r} (the config has {v!r})" for k, v in own.items()
                 if k in info.config and not same_setting(self.family, k, info.config[k], v)]  # fmt: skip
        if clash:
            raise CheckpointError(f"{path}: checkpoint network does not match the config: {', '.join(clash)}")
        load_state_dict_checked(self.network, info.state_dict, str(path))
        self.normalisation_name = info.normalisation or self.normalisation_name
        self.weights_sha256 = sha256_file(path)
        return self

    def load_backbone(self, path: str | os.PathLike) -> "AttentionBackbone":
        """Load ImageNet weights (torchvision layout) into the backbone only."""
        from delfi.models.checkpoints import load_torch_file

        load_imagenet_state_dict(self.network.backbone, load_torch_file(path))
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
        height, width = image.shape[-2:]
        for scale in scales:
            size = scaled_size(width, height, scale)
            level = image[None] if size == (width, height) else F.interpolate(
                image[None], (size[1], size[0]), mode="bilinear", align_corners=False
            )
            level = normalise(level).contiguous(memory_format=memory_format)  # TF: bilinear, no antialias
            yield scale, size, self.network.forward_features(level, layers=layers)

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
    """DELF extractor on a `DELFNet` (ResNet to ``layer3`` + attention head, softplus scores)."""

    family = "delf"
    network_class = DELFNet

    def __init__(self, config: DELFConfig | None = None, network: DELFNet | None = None) -> None:
        super().__init__(config or DELFConfig(), network)

    @inference_method
    def attention_maps(self, image: Any) -> list[tuple[float, Tensor]]:
        """(scale, attention (h, w)) per pyramid scale, for pictures."""
        limited, *_ = self.prepare(image)
        with self.autocast():
            return [
                (scale, self.attention(self.layer3(out))[0, 0].float().cpu())
                for scale, _, out in self.levels(limited, self.config.scales, ("layer3",))
            ]

    @inference_method
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
