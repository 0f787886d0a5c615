"""Training configs of the landmark-classification methods: DELF (finetune and keypoint stages),
DELG, and DELG for place recognition (CosPlace-style groups).

One schema, `LandmarkTrainConfig`, for the four ``method``\\ s; the defaults are the TF references'
(DELG: SGD momentum 0.9, lr 0.01 linear decay, clip 10, random resized crop, ArcFace m 0.1 s 45.25,
loss = global CE + attention CE + 10 x reconstruction). Each method's recipe is a preset
(``delfi/configs/train/<method>*.yaml``). Layers merge as for R2D2 (`delfi.train.config`):
defaults <- preset <- command-line options <- ``key=value`` overrides; unknown keys are errors.

Methods:

``delf-finetune``  ResNet to ``layer3`` + global average pooling + a linear classifier, all trained.
``delf-keypoint``  the backbone frozen (batch norm included); the attention head trains through a
                   linear classifier on the attention-pooled feature; random gamma scaling.
``delg``           one ResNet: global GeM + whitening + ArcFace (trains the backbone), local
                   autoencoder + attention on stop-gradient ``layer3``.
``vpr``            DELG trained on place classes (UTM cells x heading bins), one classifier per
                   group, groups in turn (``vpr.steps_per_group`` steps each); ``vpr.only_local``
                   trains the local branch of a saved model (backbone and global head frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

from delfi.config import ConfigError, require_number
from delfi.train.config import PRECISIONS, TrainerSection

__all__ = ["LANDMARK_METHODS", "LandmarkTrainConfig", "family_of", "is_landmark_method"]

LANDMARK_METHODS = ("delf-finetune", "delf-keypoint", "delg", "vpr")
CLASSIFIERS = ("arcface", "cosface", "cosine", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTATIONS = ("resized-crop", "resize-crop", "resize")
POOLS = ("mean", "sum")


class LandmarkScheduler(str, Enum):
    constant = "constant"
    cosine = "cosine"  # cosine decay to min_lr_ratio * lr at max_steps
    linear = "linear"  # linear decay to min_lr_ratio * lr at max_steps (TF DELG: to 0)
    step = "step"  # x step_gamma every step_every steps (DeLF-pytorch: x0.5 every 10 epochs)


def is_landmark_method(method: str) -> bool:
    return method in LANDMARK_METHODS


def family_of(method: str) -> str:
    """The model family a method trains: ``delf`` or ``delg``."""
    return "delf" if method.startswith("delf") else "delg"


@dataclass
class LandmarkNetSection:
    """The network (`DELFNet` / `DELGNet`) and where its weights start."""

    depth: int = 50
    stride_in: str = "3x3"  # 3x3 (torchvision) or 1x1 (TF slim)
    attention_batch_norm: bool = True  # TF; DeLF-pytorch: false
    attention_pool: str = "mean"  # attention-pooled feature: mean over h, w (TF) or sum (DeLF-pytorch)
    autoencoder: bool = True  # DELG: false = DELG-pytorch's 1x1 reduction, attention on layer3
    local_dim: int = 128
    global_dim: int = 2048
    gem_p: float = 3.0
    gem_learnable: bool = False
    normalisation: str = "imagenet"  # the input normalisation, saved with the weights (imagenet | tf-delf | unit)
    backbone_weights: Optional[str] = None  # a torchvision-format ImageNet ResNet file (or a weights name)
    init_from: Optional[str] = None  # --init: any delfi checkpoint; every tensor of the same name and shape is loaded
    channels_last: Optional[bool] = None  # None: channels-last with bf16 precision


@dataclass
class LandmarkDataSection:
    """Labelled photos: class folders (``folder``), a GLDv2 csv (``csv`` + ``images``) or a
    place-recognition tree (``root``, method vpr)."""

    folder: Optional[str] = None  # one sub-folder per class
    val_folder: Optional[str] = None  # validation class folders (DeLF-pytorch's val path), matched by class name
    csv: Optional[str] = None  # GLDv2 train (id,url,landmark_id) or clean (landmark_id,images) list
    images: Optional[str] = None  # the csv's image folder (GLDv2 layout a/b/c/<id>.jpg, or flat)
    root: Optional[str] = None  # vpr: root/train (training images), root/val/{database,queries} (recall@N)
    val_fraction: float = 0.1  # of each class's images, held out by file-name hash (classification data)
    min_images_per_class: int = 1
    balanced: bool = False  # draw images with probability 1 / class size (else a permutation per epoch)
    batch_size: int = 32
    num_workers: Optional[int] = None  # None: min(4, CPU cores - 1)
    augment: str = "resized-crop"  # resized-crop (TF) | resize-crop (DeLF-pytorch: resize, random crop) | resize
    image_size: int = 321  # the training crop (TF DELG 321; DeLF-pytorch 224, keypoint stage 720)
    resize: int = 256  # resize-crop: the resize before the crop (DeLF-pytorch 256; keypoint 900)
    area: List[float] = field(default_factory=lambda: [0.08, 1.0])
    aspect: List[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    flip: bool = False
    gamma_scaling: Optional[List[float]] = None  # DELF keypoint stage: [0.3535, 1.0], one factor per batch


@dataclass
class LandmarkLossSection:
    """Classifier heads and loss weights: total = global_weight x CE(global classifier)
    + attention_weight x CE(attention classifier) + reconstruction_weight x MSE(autoencoder)."""

    classifier: str = "arcface"  # the global head's classifier (delf-finetune: on pooled layer3): arcface | cosface | cosine | linear
    attention_classifier: str = "linear"  # on the attention-pooled feature: linear (references) | cosine (scale-free)
    margin: float = 0.1  # ArcFace m (radians) or CosFace m
    scale: float = 45.25  # logit scale s (sqrt 2048)
    margin_rule: str = "tf"  # ArcFace: tf (theta <= pi - m) | easy (cos > 0)
    global_weight: float = 1.0
    attention_weight: float = 1.0
    reconstruction_weight: float = 10.0
    label_smoothing: float = 0.0


@dataclass
class LandmarkOptimSection:
    """Optimiser and schedule (TF DELG: SGD momentum 0.9, lr 0.01, linear decay to 0, clip 10)."""

    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    head_lr: Optional[float] = None  # the classifier heads' learning rate (CosPlace: 1e-2); None = lr
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: LandmarkScheduler = LandmarkScheduler.linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_every: int = 0  # scheduler step: steps between decays
    step_gamma: float = 0.5
    gradient_clip_val: float = 10.0  # global gradient norm clip; 0 = off


@dataclass
class LandmarkValSection:
    """Validation during training: classification accuracy and retrieval mAP on the held-out
    images (DELG, DELF), recall@N on ``root/val`` (vpr)."""

    enabled: bool = True
    max_images: int = 512  # held-out images (or vpr queries) used, the first by file-name hash
    image_size: int = 224  # validation images are resized so that their longest side is this
    batch_size: int = 16
    at_start: bool = True  # validate the initial network too (logged at step 0)
    recall_radius: float = 25.0  # vpr: a database image within this many metres is a positive


@dataclass
class VPRSection:
    """CosPlace groups (cells of cell_size metres x heading bins of heading_bin degrees; classes of a
    group are cells_apart cells and bins_apart bins apart) and the group schedule."""

    cell_size: float = 10.0
    heading_bin: float = 30.0
    cells_apart: int = 5
    bins_apart: int = 2
    groups: int = 8
    min_images_per_class: int = 10
    steps_per_group: int = 10000  # CosPlace: iterations per epoch, one group per epoch, in turn
    only_local: bool = False  # train only the local branch (attention, autoencoder) of a saved model


@dataclass
class LandmarkTrainConfig:
    """A whole training run of DELF, DELG or DELG-VPR."""

    method: str = "delg"
    seed: int = 0
    net: LandmarkNetSection = field(default_factory=LandmarkNetSection)
    data: LandmarkDataSection = field(default_factory=LandmarkDataSection)
    loss: LandmarkLossSection = field(default_factory=LandmarkLossSection)
    optim: LandmarkOptimSection = field(default_factory=LandmarkOptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    val: LandmarkValSection = field(default_factory=LandmarkValSection)
    vpr: VPRSection = field(default_factory=VPRSection)

    @property
    def family(self) -> str:
        return family_of(self.method)

    def validate(self) -> None:
        if self.method not in LANDMARK_METHODS:
            raise ConfigError(f"method: one of {', '.join(LANDMARK_METHODS)}, got {self.method!r}")
        n, d, lo, o, v = self.net, self.data, self.loss, self.optim, self.vpr
        for key, value, choices in (
            ("net.attention_pool", n.attention_pool, POOLS),
            ("data.augment", d.augment, AUGMENTATIONS),
            ("loss.classifier", lo.classifier, CLASSIFIERS),
            ("loss.attention_classifier", lo.attention_classifier, ("linear", "cosine")),
            ("loss.margin_rule", lo.margin_rule, ("tf", "easy")),
            ("optim.optimizer", o.optimizer, OPTIMIZERS),
            ("net.stride_in", n.stride_in, ("3x3", "1x1")),
        ):
            if value not in choices:
                raise ConfigError(f"{key}: one of {', '.join(choices)}, got {value!r}")
        from delfi.models.resnet import NORMALISATION

        if n.normalisation not in NORMALISATION:
            raise ConfigError(f"net.normalisation: one of {', '.join(NORMALISATION)}, got {n.normalisation!r}")
        if n.depth not in (50, 101):
            raise ConfigError(f"net.depth: 50 or 101, got {n.depth}")
        for key, value, low in (
            ("net.local_dim", n.local_dim, 1), ("net.global_dim", n.global_dim, 1),
            ("data.batch_size", d.batch_size, 1), ("data.image_size", d.image_size, 32), ("data.resize", d.resize, 32),
            ("data.min_images_per_class", d.min_images_per_class, 1),
            ("data.num_workers", 0 if d.num_workers is None else d.num_workers, 0),
            ("trainer.max_steps", self.trainer.max_steps, 1), ("trainer.num_nodes", self.trainer.num_nodes, 1),
            ("trainer.log_every_n_steps", self.trainer.log_every_n_steps, 1),
            ("trainer.val_every_n_steps", self.trainer.val_every_n_steps, 1),
            ("trainer.checkpoint_every_n_steps", self.trainer.checkpoint_every_n_steps, 1),
            ("val.max_images", self.val.max_images, 2), ("val.image_size", self.val.image_size, 32),
            ("val.batch_size", self.val.batch_size, 1),
            ("optim.warmup_steps", o.warmup_steps, 0), ("optim.step_every", o.step_every, 0),
            ("vpr.cells_apart", v.cells_apart, 1), ("vpr.bins_apart", v.bins_apart, 1), ("vpr.groups", v.groups, 1),
            ("vpr.min_images_per_class", v.min_images_per_class, 1), ("vpr.steps_per_group", v.steps_per_group, 1),
        ):
            require_number(key, value, low=low)
        for key, value in (("optim.lr", o.lr), ("net.gem_p", n.gem_p), ("vpr.cell_size", v.cell_size),
                           ("vpr.heading_bin", v.heading_bin), ("loss.scale", lo.scale), ("val.recall_radius", self.val.recall_radius)):
            require_number(key, value, low=0, low_open=True)
        if o.head_lr is not None:
            require_number("optim.head_lr", o.head_lr, low=0, low_open=True)
        for key, value in (("optim.weight_decay", o.weight_decay), ("optim.momentum", o.momentum),
                           ("loss.global_weight", lo.global_weight), ("loss.attention_weight", lo.attention_weight),
                           ("loss.reconstruction_weight", lo.reconstruction_weight), ("loss.margin", lo.margin),
                           ("optim.gradient_clip_val", o.gradient_clip_val)):
            require_number(key, value, low=0)
        require_number("optim.min_lr_ratio", o.min_lr_ratio, low=0, high=1)
        require_number("optim.step_gamma", o.step_gamma, low=0, high=1, low_open=True)
        require_number("loss.label_smoothing", lo.label_smoothing, low=0, high=1)
        require_number("data.val_fraction", d.val_fraction, low=0, high=0.9)
        _range("data.area", d.area, 0, 1)
        _range("data.aspect", d.aspect, 0, None)
        if d.gamma_scaling is not None:
            _range("data.gamma_scaling", d.gamma_scaling, 0, None)
        if len(o.betas) != 2:
            raise ConfigError(f"optim.betas: two numbers expected, got {o.betas}")
        if self.trainer.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision: {self.trainer.precision!r} is not one of {', '.join(PRECISIONS)}")
        if o.scheduler == LandmarkScheduler.step and o.step_every < 1:
            raise ConfigError("optim.step_every: the step scheduler needs step_every >= 1 (steps between decays)")
        if lo.classifier == "arcface":
            import math

            if lo.margin >= math.pi:
                raise ConfigError(f"loss.margin: an ArcFace margin is an angle in [0, pi), got {lo.margin}")
        if v.only_local and self.method != "vpr":
            raise ConfigError("vpr.only_local: only for method vpr (train the local branch of a saved place-recognition model)")
        if v.only_local and n.init_from is None:
            raise ConfigError("vpr.only_local trains the local branch of a saved model: give --init CHECKPOINT (net.init_from)")
        if n.init_from is not None and not Path(n.init_from).expanduser().is_file():
            raise ConfigError(f"net.init_from: no such checkpoint file {n.init_from}")


def _range(key: str, values: List[float], low: float, high: float | None) -> None:
    if len(values) != 2 or not all(isinstance(x, (int, float)) for x in values):
        raise ConfigError(f"{key}: two numbers [low, high] expected, got {values}")
    a, b = float(values[0]), float(values[1])
    if not (a > low and a <= b and (high is None or b <= high)):
        bound = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"{key}: [low, high] with {low} < low <= high{bound}, got {values}")
