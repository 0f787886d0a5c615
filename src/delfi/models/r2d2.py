"""R2D2 (Revaud et al., NeurIPS 2019): multi-scale extraction exactly as the official ``extract.py``.

Per pyramid level: keep pixels whose repeatability is a 3x3 local maximum with reliability and
repeatability both >= 0.7; score = reliability * repeatability; scale = 32 / s; no cross-scale NMS;
the global top-k by score is kept. Keypoints are returned in delfi's pixel-centre convention
(``keypoint_mapping="official"`` reproduces the official ``x * W / w`` formula instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from delfi.extract.detect import top_k_indices
from delfi.extract.pyramid import iterate_levels, level_factors, r2d2_levels
from delfi.models.capabilities import LOCAL, SCALES
from delfi.models.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint, load_state_dict_checked
from delfi.models.l2net import R2D2Net
from delfi.models.l2net_inference import L2NetInference
from delfi.models.modes import inference_method
from delfi.io.images import load_for_model
from delfi.types import Features, rescale_keypoints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Arch(str, Enum):
    quad_l2net = "quad_l2net"
    fast_quad_l2net = "fast_quad_l2net"


class PyramidResize(str, Enum):
    chained = "chained"  # each level from the previous one (official)
    from_original = "from_original"


class KeypointMapping(str, Enum):
    pixel_centre = "pixel_centre"  # (x + 0.5) * W / w - 0.5: delfi's convention
    official = "official"  # x * W / w: the official R2D2 formula


class Precision(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class R2D2Config:
    """Settings of an R2D2 extractor (defaults: the paper's, official ``extract.py``)."""

    model: str = "r2d2"
    weights: Optional[str] = None  # a known weights name or a checkpoint path
    arch: Arch = Arch.quad_l2net
    mchan: int = 4
    dim: int = 128
    top_k: int = 5000  # 0 keeps all (negative values are refused)
    scale_f: float = 2**0.25
    min_size: int = 256
    max_size: int = 1024
    min_scale: float = 0.0
    max_scale: float = 1.0
    reliability_threshold: float = 0.7
    repeatability_threshold: float = 0.7
    pyramid_resize: PyramidResize = PyramidResize.chained
    keypoint_mapping: KeypointMapping = KeypointMapping.pixel_centre
    precision: Precision = Precision.float32
    fuse_batchnorm: bool = True
    channels_last: bool = True
    tile_pixels: int = 262144  # strip budget for the convolution body; 0 = whole levels

    def validate(self) -> None:
        """Refuse settings that are invalid or can never produce a feature (`ConfigError` naming the key)."""
        from delfi.config import ConfigError, require_number

        if self.model != "r2d2":
            raise ConfigError(f"model: expected 'r2d2', got {self.model!r}")
        require_number("scale_f", self.scale_f, low=1, low_open=True)
        require_number("min_scale", self.min_scale, low=0, high=1)
        require_number("max_scale", self.max_scale, low=0, high=1, low_open=True)
        if not self.min_scale <= self.max_scale:
            raise ConfigError(f"min_scale/max_scale: need 0 <= min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if self.min_size < 0 or self.max_size <= 0:
            raise ConfigError(f"min_size/max_size: must be >= 0 / > 0, got {self.min_size}, {self.max_size}")
        if self.min_size > 0 and self.max_size < self.min_size * self.scale_f - 1e-6:
            need = self.min_size * self.scale_f
            raise ConfigError(
                f"max_size: {self.max_size} with min_size {self.min_size} leaves no pyramid level for most images "
                f"(levels are scale_f = {self.scale_f:.4g} apart): use max_size >= {need:.0f} or a smaller min_size"
            )
        for key in ("reliability_threshold", "repeatability_threshold"):
            require_number(key, getattr(self, key), high=1, why="the network's confidences are in [0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 keeps all), got {self.top_k}")
        for key in ("mchan", "dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.tile_pixels < 0:
            raise ConfigError(f"tile_pixels: must be >= 0, got {self.tile_pixels}")


class R2D2(nn.Module):
    """An R2D2 extractor: an `R2D2Net` (``network``) + the official multi-scale detection.

    >>> model = R2D2(R2D2Config(weights="r2d2_WASF_N16.pt"))   # doctest: +SKIP
    >>> features = model.extract("image.jpg")                  # doctest: +SKIP

    Built on a given ``network`` (e.g. the one being trained), the extractor leaves its mode alone
    (`extract` runs it in eval and inference mode and restores each submodule's mode) and notices
    when its weights change (an optimiser step, a loaded state dict): the fused inference runner is
    rebuilt then. Built without one, it makes its own network, in eval mode.
    """

    family = "r2d2"
    capabilities = frozenset({LOCAL, SCALES})
    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def __init__(self, config: R2D2Config | None = None, network: R2D2Net | None = None) -> None:
        super().__init__()
        if config is None:
            config = R2D2Config(**network.architecture()) if network is not None else R2D2Config()
        self.config = config
        c = self.config
        wanted = {"arch": Arch(c.arch).value, "mchan": c.mchan, "dim": c.dim}
        if network is None:
            network = R2D2Net(**wanted).eval()
        elif network.architecture() != wanted:
            raise ValueError(f"the network {network.architecture()} does not match the config {wanted}")
        self.network = network
        self.weights_sha256: str | None = None
        self.weights_path: Path | None = None
        self.register_buffer("mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)
        self._runner: L2NetInference | None = None
        self._runner_key: tuple | None = None

    @property
    def net(self) -> R2D2Net:
        """The network (`network`; the name of earlier delfi versions)."""
        return self.network

    def load_weights(self, path: str | os.PathLike, checkpoint: CheckpointInfo | None = None) -> "R2D2":
        """Load an R2D2 checkpoint (official, delfi or Lightning); the architecture must match.

        ``checkpoint``: `load_checkpoint`'s reading of ``path`` when the caller has it already.
        """
        from delfi.models.weights import sha256_file

        info = (checkpoint or load_checkpoint(path)).require_family("r2d2")
        wanted = self.network.architecture()
        found = {key: info.config.get(key) for key in wanted}
        if found != wanted:
            raise CheckpointError(f"{path}: checkpoint network {found} does not match the config {wanted}")
        load_state_dict_checked(self.network, info.state_dict, str(path))
        self.weights_path, self.weights_sha256 = Path(path), sha256_file(path)
        self._runner = None
        return self

    def _apply(self, fn, recurse=True):  # device / dtype moves invalidate the fused runner
        self._runner = None
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _weights_key(self) -> tuple | None:
        """Identity and version of every parameter and buffer: changes with any update in place
        (optimiser step, ``load_state_dict``, batch-norm statistics) or any replacement."""
        key = []
        for tensor in (*self.network.parameters(), *self.network.buffers()):
            try:
                version = tensor._version
            except RuntimeError:  # an inference tensor tracks no version: never reuse the runner
                return None
            key.append((id(tensor), tensor.data_ptr(), version))
        return tuple(key)

    def runner(self) -> L2NetInference:
        """The inference runner of the network's current weights (rebuilt when they changed)."""
        key = self._weights_key()
        if self._runner is None or key is None or key != self._runner_key:
            c = self.config
            self._runner = L2NetInference(
                self.network,
                fuse_batchnorm=c.fuse_batchnorm,
                channels_last=c.channels_last,
                precision=Precision(c.precision).value,
                tile_pixels=c.tile_pixels,
            )
            self._runner_key = key
        return self._runner

    def levels(self, width: int, height: int):
        """The pyramid levels (`r2d2_levels`) of an image of size (width, height)."""
        c = self.config
        return r2d2_levels(
            width, height, scale_f=c.scale_f, min_scale=c.min_scale, max_scale=c.max_scale,
            min_size=c.min_size, max_size=c.max_size,
        )  # fmt: skip

    def working_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(w, h) of the largest processed pyramid level of a (width, height) image (None: none)."""
        processed = [level for level in self.levels(width, height) if level.process]
        return processed[0].size if processed else None

    def normalise(self, image: Tensor) -> Tensor:
        """(3, H, W) RGB in [0, 1] -> (1, 3, H, W) ImageNet-normalised."""
        return ((image.to(self.device)[None] - self.mean) / self.std).float()

    @inference_method
    def extract(self, image: Any) -> Features:
        """Multi-scale R2D2 features of one image (path, PIL image, array or (3, H, W) tensor).

        A path is decoded at the size of the first processed pyramid level when the file is at
        least twice as large (`working_size`), so memory follows ``max_size``; level sizes, scales
        and the keypoint mapping are those of the original image either way.

        Returns:
            `Features` sorted by decreasing score: keypoints (N, 2) in original pixels, scores
            (N,) = reliability * repeatability, descriptors (N, dim), scales (N,) = 32 / s.
        """
        c = self.config
        rgb, (width, height) = load_for_model(image, self.working_size)  # rgb may be reduced
        levels = self.levels(width, height)
        runner = self.runner()
        keypoints, scores, descriptors, scales = [], [], [], []
        for level, level_image in iterate_levels(self.normalise(rgb), levels, PyramidResize(c.pyramid_resize).value):
            found = runner.detect(level_image, c.reliability_threshold, c.repeatability_threshold)
            xy = torch.stack([found.x, found.y], dim=1).float()
            factors = level_factors((width, height), level.size)
            if KeypointMapping(c.keypoint_mapping) is KeypointMapping.official:
                xy = xy * torch.tensor(factors, device=xy.device)
            else:
                xy = rescale_keypoints(xy, factors)
            keypoints.append(xy)
            scores.append(found.reliability * found.repeatability)
            descriptors.append(found.descriptors)
            scales.append(torch.full((len(xy),), 32 / level.scale, device=xy.device))
        if not keypoints:  # image smaller than min_size: no level processed
            empty = torch.zeros(0, device=self.device)
            return Features(empty.view(0, 2), empty, empty.view(0, c.dim), empty, None, (width, height))
        features = Features(
            keypoints=torch.cat(keypoints),
            scores=torch.cat(scores),
            descriptors=torch.cat(descriptors),
            scales=torch.cat(scales),
            image_size=(width, height),
        )
        return features.select(top_k_indices(features.scores, c.top_k))
