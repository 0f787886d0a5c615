"""Training configs of the multi-level attention keypoints (ALGORITHMS.md section 4), two stages:

``multilevel-encoder``  stage 1: the per-level encoders / decoders train (Adam 1e-3) on
                        reconstruction MSE + the D2-Net correspondence triplet loss (margin 1,
                        safe radius 4); the backbone is frozen, the attention heads are unused.
``multilevel``          stage 2: the attention heads train (Adam 1e-4) with the encoders frozen,
                        on ``loss.kind``: ``distinctiveness+`` (L1 to ``(1 + m)^-tau`` + peakiness)
                        or ``triplet-weighted`` (the triplet loss weighted by the two scores).

Pairs: synthetic homography pairs of ``data.images`` (the R2D2 trainer's data, `DataSection`), or
real pairs with correspondences from depth maps and camera poses (``data.pairs``: a MegaDepth root
as D2-Net preprocesses it, `delfi.datasets.depth_pairs`). Validation: MMA of the extractor's own
keypoints on fixed homography pairs of held-out photos. Layers merge as every training config
(`delfi.train.config.resolve_train_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from delfi.config import ConfigError, require_number
from delfi.train.config import PRECISIONS, DataSection, OptimSection, TrainerSection

__all__ = ["LOSS_KINDS", "MULTILEVEL_METHODS", "MultiLevelTrainConfig", "is_multilevel_method"]

MULTILEVEL_METHODS = ("multilevel-encoder", "multilevel")
LOSS_KINDS = ("encoder", "distinctiveness+", "triplet-weighted")


def is_multilevel_method(method: str) -> bool:
    return method in MULTILEVEL_METHODS


@dataclass
class MultiLevelNetSection:
    """The network (`delfi.models.multilevel_net.MultiLevelNet`) and where its weights start."""

    depth: int = 50
    stride_in: str = "3x3"
    code_dim: int = 64
    first_stride1: bool = False
    backbone_weights: Optional[str] = None  # a torchvision-format ImageNet ResNet file (or a weights name)
    init_from: Optional[str] = None  # --init: any delfi checkpoint (stage 2: stage 1's best.ckpt)
    channels_last: Optional[bool] = None  # None: channels-last with bf16 precision


@dataclass
class MultiLevelDataSection(DataSection):
    """`DataSection` (homography pairs of ``images``) plus depth + pose pairs (``pairs``)."""

    crop_size: int = 256
    pairs: Optional[str] = None  # a MegaDepth root (scene_info/*.npz, D2-Net layout): real pairs instead
    pairs_per_scene: int = 100
    min_overlap: float = 0.5
    max_overlap: float = 1.0
    max_scale_ratio: float = float("inf")
    depth_tolerance: float = 0.05


@dataclass
class MultiLevelLossSection:
    """`delfi.train.losses.multilevel.MultiLevelLossConfig` (``kind`` follows the method)."""

    kind: str = "distinctiveness+"
    margin: float = 1.0
    safe_radius: int = 4
    min_correspondences: int = 128
    tau: float = 0.25
    peaky_n: int = 32
    peaky_lambda: float = 0.2
    reconstruction_weight: float = 1.0
    triplet_weight: float = 1.0


@dataclass
class MultiLevelValSection:
    """Validation: MMA of the extractor's keypoints (NMS, refinement, score threshold, all levels)
    on fixed homography pairs of held-out photos."""

    pairs: int = 32  # 0 = no validation (and no best.ckpt)
    crop_size: int = 256
    seed: int = 1234
    score_threshold: float = 0.3
    top_k: int = 0  # 0 keeps all
    pixel_threshold: float = 3.0  # the monitored metric is val/mma@<pixel_threshold>
    batch_size: int = 8
    at_start: bool = True


@dataclass
class MultiLevelTrainConfig:
    """A whole multi-level training run."""

    method: str = "multilevel"
    seed: int = 0
    net: MultiLevelNetSection = field(default_factory=MultiLevelNetSection)
    data: MultiLevelDataSection = field(default_factory=MultiLevelDataSection)
    loss: MultiLevelLossSection = field(default_factory=MultiLevelLossSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-4, weight_decay=0.0))
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(max_steps=20000))
    val: MultiLevelValSection = field(default_factory=MultiLevelValSection)

    def validate(self) -> None:
        if self.method not in MULTILEVEL_METHODS:
            raise ConfigError(f"method: one of {', '.join(MULTILEVEL_METHODS)}, got {self.method!r}")
        if self.loss.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind: one of {', '.join(LOSS_KINDS)}, got {self.loss.kind!r}")
        if (self.method == "multilevel-encoder") != (self.loss.kind == "encoder"):
            want = "encoder" if self.method == "multilevel-encoder" else "distinctiveness+ or triplet-weighted"
            raise ConfigError(f"loss.kind: the {self.method} stage trains with loss.kind={want}, got {self.loss.kind!r}")
        if self.net.depth not in (50, 101):
            raise ConfigError(f"net.depth: 50 or 101, got {self.net.depth}")
        if self.net.stride_in not in ("3x3", "1x1"):
            raise ConfigError(f"net.stride_in: 3x3 or 1x1, got {self.net.stride_in!r}")
        for key, value, low in (
            ("net.code_dim", self.net.code_dim, 1),
            ("data.batch_size", self.data.batch_size, 1),
            ("data.min_images", self.data.min_images, 1),
            ("data.pairs_per_scene", self.data.pairs_per_scene, 1),
            ("trainer.max_steps", self.trainer.max_steps, 1),
            ("trainer.log_every_n_steps", self.trainer.log_every_n_steps, 1),
            ("trainer.val_every_n_steps", self.trainer.val_every_n_steps, 1),
            ("trainer.checkpoint_every_n_steps", self.trainer.checkpoint_every_n_steps, 1),
            ("loss.safe_radius", self.loss.safe_radius, 0),
            ("loss.min_correspondences", self.loss.min_correspondences, 1),
            ("val.pairs", self.val.pairs, 0),
            ("val.top_k", self.val.top_k, 0),
            ("val.batch_size", self.val.batch_size, 1),
        ):
            require_number(key, value, low=low)
        require_number("optim.lr", self.optim.lr, low=0, low_open=True)
        require_number("loss.margin", self.loss.margin, low=0, low_open=True)
        require_number("loss.tau", self.loss.tau, low=0)
        require_number("loss.peaky_lambda", self.loss.peaky_lambda, low=0)
        require_number("data.val_fraction", self.data.val_fraction, low=0, high=0.9)
        require_number("val.pixel_threshold", self.val.pixel_threshold, low=0, low_open=True)
        if self.loss.peaky_n < 2 or self.loss.peaky_n % 2:
            raise ConfigError(f"loss.peaky_n: an even number >= 2, got {self.loss.peaky_n}")
        if self.data.crop_size < 64 or self.val.crop_size < 64:
            raise ConfigError(f"data.crop_size / val.crop_size: at least 64 px, got {self.data.crop_size} / {self.val.crop_size}")
        if self.trainer.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision: {self.trainer.precision!r} is not one of {', '.join(PRECISIONS)}")
        for key in ("init_from",):
            value = getattr(self.net, key)
            if value is not None and not Path(value).expanduser().is_file():
                raise ConfigError(f"net.{key}: no such checkpoint file {value}")
        if self.data.pairs is not None and not Path(self.data.pairs).expanduser().is_dir():
            raise ConfigError(f"data.pairs: no such folder {self.data.pairs} (a MegaDepth root with scene_info/)")

    def extractor_settings(self) -> dict:
        """The `MultiLevelConfig` fields of the trained network (what its checkpoint records)."""
        n = self.net
        return {"model": "multilevel", "depth": int(n.depth), "stride_in": str(n.stride_in), "code_dim": int(n.code_dim),
                "first_stride1": bool(n.first_stride1)}
