"""Training configs: strict structured schemas (OmegaConf), YAML presets, ``key=value`` overrides.

A training config is one `TrainConfig`: ``method`` (``r2d2``), ``seed``, and the sections ``net``,
``data``, ``loss``, ``optim``, ``trainer``, ``val``. Layers are merged in this order, later wins:
the schema's defaults (the official R2D2 recipe), a preset (``delfi/configs/train/<name>.yaml``
or a YAML path), the command line's options (``--images`` ...), the ``key=value`` overrides.
Every unknown key is an error naming the full key (``loss.repeatabilty``) with suggestions and the
known keys of its section; wrong types and values outside an enumeration are errors naming the key.
The resolved config is written to the run folder as ``config.yaml``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from delfi.config import ConfigError, _describe, parse_overrides, require_number
from delfi.models.r2d2 import Arch
from delfi.train.losses.r2d2 import RELIABILITY_LOSSES
from delfi.train.losses.repeatability import PATCH_NORMS, PEAKY_PADDINGS, SIMILARITIES
from delfi.train.losses.sampler import SamplerConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "config_dict",
    "loss_config",
    "pair_config",
    "resolve_train_config",
    "train_preset_names",
    "train_preset_path",
]

Reliability = Enum("Reliability", {name: name for name in RELIABILITY_LOSSES}, type=str)
Similarity = Enum("Similarity", {name: name for name in SIMILARITIES}, type=str)
PatchNorm = Enum("PatchNorm", {name: name for name in PATCH_NORMS}, type=str)
PeakyPadding = Enum("PeakyPadding", {name: name for name in PEAKY_PADDINGS}, type=str)


class Scheduler(str, Enum):
    constant = "constant"  # the official recipe
    cosine = "cosine"  # cosine decay to min_lr_ratio * lr at max_steps
    linear = "linear"  # linear decay to min_lr_ratio * lr at max_steps


PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


@dataclass
class NetSection:
    """The network (`delfi.models.l2net.R2D2Net`): the official ``Quad_L2Net_ConfCFS``."""

    arch: Arch = Arch.quad_l2net
    mchan: int = 4
    dim: int = 128
    channels_last: Optional[bool] = None  # None: channels-last with bf16 precision (oneDNN / tensor cores), else NCHW
    init_from: Optional[str] = None  # start from this checkpoint's weights (same architecture), not random ones
    reinit_heads: List[str] = field(default_factory=list)  # then reset these heads: clf (reliability), sal (repeatability)


@dataclass
class DataSection:
    """Training images and the synthetic homography pairs made from them (`PairConfig`)."""

    images: Optional[str] = None  # a folder (recursive), an image file or a .txt list
    val_images: Optional[str] = None  # None: hold out val_fraction of `images` (see data.py)
    val_fraction: float = 0.1
    min_images: int = 2  # fewer usable training images: refused before training starts
    batch_size: int = 8
    num_workers: Optional[int] = None  # loader processes; None: min(4, usable CPU cores - 1), 0 on one core
    crop_size: int = 192
    min_size: int = 256
    max_size: int = 1024
    scale_image2: bool = True
    tilt: float = 0.5
    max_rotation: float = 10.0
    noise: float = 25.0
    jitter: Optional[List[float]] = field(default_factory=lambda: [0.2, 0.2, 0.2, 0.1])
    crop_trials: int = 50
    crop_offset: float = 0.1
    scale_range: List[float] = field(default_factory=lambda: [0.2, 5.0])


@dataclass
class LossSection:
    """`R2D2LossConfig` (defaults: AP reliability + cosim repeatability N=16 + peaky N=16, weights 1)."""

    reliability: Reliability = Reliability.ap  # type: ignore[attr-defined]
    repeatability: Similarity = Similarity.cosim  # type: ignore[attr-defined]
    N: int = 16
    reliability_weight: float = 1.0
    repeatability_weight: float = 1.0
    peaky_weight: float = 1.0
    descriptor_weight: float = 0.0  # + plain AP loss (descriptors learn where reliability is low); 0 = official
    nq: int = 20
    base: float = 0.5
    hardnet_margin: float = 1.0
    hardnet_base: float = 0.5
    hardnet_weighted: bool = True
    patch_norm: PatchNorm = PatchNorm.auto  # type: ignore[attr-defined]
    peaky_padding: PeakyPadding = PeakyPadding.official  # type: ignore[attr-defined]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # the official NghSampler2


@dataclass
class OptimSection:
    """Adam (official: lr 1e-4, weight decay 5e-4, constant learning rate)."""

    lr: float = 1e-4
    weight_decay: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: Scheduler = Scheduler.constant
    warmup_steps: int = 0  # linear warm-up from 0 (any scheduler)
    min_lr_ratio: float = 0.0
    gradient_clip_val: float = 0.0  # 0 = off (official: off)


@dataclass
class TrainerSection:
    """Lightning's `Trainer` settings (multi-GPU / multi-node only through these)."""

    max_steps: int = 50000  # ~25 official epochs of ~16k pairs at batch 8
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"  # or bf16-mixed, 16-mixed
    log_every_n_steps: int = 50
    val_every_n_steps: int = 1000
    checkpoint_every_n_steps: int = 500  # last.ckpt
    deterministic: bool = False


@dataclass
class ValSection:
    """Validation: MMA of the current network on fixed synthetic pairs of held-out photos
    (see `delfi.train.validation`)."""

    pairs: int = 32  # 0 = no validation (and no best.ckpt)
    crop_size: int = 256
    seed: int = 1234  # the pairs are the same at every validation and in every run
    top_k: int = 1000
    reliability_threshold: float = 0.7
    repeatability_threshold: float = 0.7
    pixel_threshold: float = 3.0  # the monitored metric is val/mma@<pixel_threshold>
    batch_size: int = 8
    at_start: bool = True  # validate the initial network too (logged at step 0)


@dataclass
class TrainConfig:
    """A whole training run."""

    method: str = "r2d2"
    seed: int = 0
    net: NetSection = field(default_factory=NetSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    val: ValSection = field(default_factory=ValSection)

    def validate(self) -> None:
        if self.method != "r2d2":
            raise ConfigError(f"method: an R2D2 training config has method 'r2d2', got {self.method!r} "
                              "(delf-finetune, delf-keypoint, delg, vpr, multilevel-encoder and multilevel are trained by their own commands)")
        for key, value, low in (
            ("net.mchan", self.net.mchan, 1),
            ("net.dim", self.net.dim, 2),
            ("data.batch_size", self.data.batch_size, 1),
            ("data.min_images", self.data.min_images, 1),
            ("data.num_workers", 0 if self.data.num_workers is None else self.data.num_workers, 0),
            ("trainer.max_steps", self.trainer.max_steps, 1),
            ("trainer.num_nodes", self.trainer.num_nodes, 1),
            ("trainer.log_every_n_steps", self.trainer.log_every_n_steps, 1),
            ("trainer.val_every_n_steps", self.trainer.val_every_n_steps, 1),
            ("trainer.checkpoint_every_n_steps", self.trainer.checkpoint_every_n_steps, 1),
            ("val.pairs", self.val.pairs, 0),
            ("val.top_k", self.val.top_k, 1),
            ("val.batch_size", self.val.batch_size, 1),
            ("optim.warmup_steps", self.optim.warmup_steps, 0),
        ):
            require_number(key, value, low=low)
        require_number("optim.lr", self.optim.lr, low=0, low_open=True)
        require_number("optim.weight_decay", self.optim.weight_decay, low=0)
        require_number("optim.min_lr_ratio", self.optim.min_lr_ratio, low=0, high=1)
        require_number("optim.gradient_clip_val", self.optim.gradient_clip_val, low=0)
        require_number("data.val_fraction", self.data.val_fraction, low=0, high=0.9)
        require_number("val.pixel_threshold", self.val.pixel_threshold, low=0, low_open=True)
        from delfi.train.init import check_heads

        try:
            check_heads(self.net.reinit_heads)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.net.init_from is not None and not Path(self.net.init_from).expanduser().is_file():
            raise ConfigError(f"net.init_from: no such checkpoint file {self.net.init_from}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas: two numbers expected, got {self.optim.betas}")
        if len(self.data.scale_range) != 2:
            raise ConfigError(f"data.scale_range: two numbers expected, got {self.data.scale_range}")
        if self.data.jitter is not None and len(self.data.jitter) != 4:
            raise ConfigError(f"data.jitter: four numbers (brightness, contrast, saturation, hue) or null, got {self.data.jitter}")
        if self.trainer.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision: {self.trainer.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.val.crop_size < 32:
            raise ConfigError(f"val.crop_size: must be >= 32, got {self.val.crop_size}")
        for what, build in (("data", lambda: pair_config(self)), ("loss", lambda: loss_config(self))):
            try:
                build()
            except ValueError as exc:
                raise ConfigError(f"{what}: {exc}") from None
        sampler = self.loss.sampler
        if self.data.crop_size <= 2 * sampler.border:
            raise ConfigError(
                f"data.crop_size: {self.data.crop_size} leaves no query pixel inside the sampler's border "
                f"(loss.sampler.border={sampler.border}); use crops larger than {2 * sampler.border}"
            )


# --- presets ---------------------------------------------------------------------------------------


def _preset_folder():
    return resources.files("delfi") / "configs" / "train"


def train_preset_names() -> list[str]:
    """Names of the training presets shipped with delfi."""
    return sorted(p.name[: -len(".yaml")] for p in _preset_folder().iterdir() if p.name.endswith(".yaml"))


def train_preset_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a shipped training preset, or the given ``.yaml`` path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"training preset file not found: {candidate}")
        return candidate
    shipped = _preset_folder() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = train_preset_names()
        close = difflib.get_close_matches(str(name_or_path), names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown training preset {str(name_or_path)!r}.{hint} Known presets: {', '.join(names)}")
    return Path(str(shipped))


def preset_about(name_or_path: str | os.PathLike) -> str:
    """The preset's leading ``#`` comment lines (what it reproduces), as one line."""
    lines = train_preset_path(name_or_path).read_text().splitlines()
    return " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))


def load_train_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = train_preset_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training preset must be a mapping")
    return data


# --- strict merging --------------------------------------------------------------------------------


def _check_keys(layer: Mapping[str, Any], schema: Any, prefix: str, source: str, root: type | None = None) -> None:
    """Raise a `ConfigError` for the first key of ``layer`` that ``schema`` (a DictConfig) lacks
    (``root``: the schema class, for hints across sections)."""
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if key not in schema:
            known = [str(k) for k in schema.keys()]
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            if not close:  # the same name in another section: ``lr`` -> ``optim.lr``
                close_full = [f for f in _leaf_keys(OmegaConf.structured(root or TrainConfig)) if f.split(".")[-1] == str(key)]
            else:
                close_full = [prefix + c for c in close]
            hint = f" Did you mean {' or '.join(close_full)}?" if close_full else ""
            section = prefix[:-1] or "the training config"
            raise ConfigError(f"{source}: unknown key {full!r}.{hint} (known keys of {section}: {', '.join(known)})")
        node = schema._get_node(key)
        if OmegaConf.is_dict(node) and node._metadata.object_type not in (None, dict):
            if isinstance(value, Mapping):
                _check_keys(value, node, f"{full}.", source, root)
            elif value is not None:
                raise ConfigError(f"{source}: {full} is a section ({', '.join(map(str, node.keys()))}), got {value!r}")


def _leaf_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node.keys():
        child = node._get_node(key)
        if OmegaConf.is_dict(child) and child._metadata.object_type not in (None, dict):
            keys += _leaf_keys(child, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def resolve_train_config(
    preset: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *layers: tuple[str, Mapping[str, Any] | None],
    base: Mapping[str, Any] | None = None,
    schema: type | None = None,
) -> Any:
    """The validated config: ``schema``'s defaults (`TrainConfig`, or e.g. `LandmarkTrainConfig`)
    <- ``base`` (a saved config.yaml) <- ``preset`` <- the named ``layers`` (``("--images", {...})``)
    <- ``overrides`` (``key=value`` strings or a dict)."""
    stack: list[tuple[str, Mapping[str, Any]]] = []
    if base:
        stack.append(("config.yaml", base))
    if preset is not None:
        stack.append((f"preset {preset}", load_train_preset(preset)))
    if schema is None:  # the method of the saved config or the preset decides
        methods = [layer.get("method") for _, layer in stack if isinstance(layer.get("method"), str)]
        schema = schema_for(methods[-1] if methods else "r2d2")
    stack.extend((name, layer) for name, layer in layers if layer)
    if overrides:
        parsed = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
        stack.append(("override", parsed))
    config = OmegaConf.structured(schema)
    OmegaConf.set_struct(config, True)
    for source, layer in stack:
        _check_keys(layer, config, "", source, schema)
        try:
            config = OmegaConf.merge(config, OmegaConf.create(dict(layer)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from None
    try:
        result = OmegaConf.to_object(config)
    except ValueError as exc:  # a section's own check (loss.sampler: SamplerConfig.__post_init__)
        raise ConfigError(f"loss.sampler: {exc}") from None
    result.validate()
    return result


def schema_for(method: str) -> type:
    """The config schema of a training method: `TrainConfig` (r2d2), `LandmarkTrainConfig` or
    `MultiLevelTrainConfig`."""
    from delfi.train.landmark_config import LandmarkTrainConfig, is_landmark_method
    from delfi.train.multilevel_config import MultiLevelTrainConfig, is_multilevel_method

    if is_multilevel_method(method):
        return MultiLevelTrainConfig
    return LandmarkTrainConfig if is_landmark_method(method) else TrainConfig


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """A plain dict (enums as strings) of a `TrainConfig`, loadable with ``weights_only=True``."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True, enum_to_str=True)  # type: ignore[return-value]


def pair_config(config: TrainConfig, crop_size: int | None = None):
    """The `PairConfig` of the training (or, with ``crop_size``, validation) pairs."""
    from delfi.datasets.homography_pairs import PairConfig

    d = config.data
    return PairConfig(
        crop_size=crop_size or d.crop_size,
        min_size=d.min_size,
        max_size=d.max_size,
        scale_image2=d.scale_image2,
        tilt=d.tilt,
        max_rotation=d.max_rotation,
        noise=d.noise,
        jitter=tuple(d.jitter) if d.jitter is not None else None,
        crop_trials=d.crop_trials,
        crop_offset=d.crop_offset,
        scale_range=tuple(d.scale_range),
    )


def loss_config(config: TrainConfig):
    """The `R2D2LossConfig` of the training."""
    from delfi.train.losses.r2d2 import R2D2LossConfig

    values = config_dict(config)["loss"]
    return R2D2LossConfig.from_mapping(values)


def loader_workers(config: TrainConfig) -> int:
    """The number of data-loader processes: ``data.num_workers``, by default one fewer than the CPU
    cores this process may use (the main process trains), at most 4."""
    if config.data.num_workers is not None:
        return int(config.data.num_workers)
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))
