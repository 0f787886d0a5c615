"""Model registry: build any delfi extractor from a preset name (or YAML file) plus overrides.

>>> import delfi
>>> delfi.models.list()                                        # doctest: +SKIP
['faster2d2', 'r2d2', 'r2d2-large', 'r2d2-n8-big']
>>> model = delfi.models.create("r2d2", weights="r2d2-wasf-n16", top_k=2000)   # doctest: +SKIP
>>> features = model.extract("photo.jpg")                      # doctest: +SKIP

Each extractor runs a trainable network (``model.network``: `networks.R2D2Net`, `networks.DELFNet`,
`networks.DELGNet`, `multilevel_net.MultiLevelNet`), declares what it can do (``model.capabilities``, `supports`), and loads any
checkpoint of `checkpoints` (delfi, Lightning, official R2D2), whose network settings it adopts.
"""

from __future__ import annotations

import builtins
import os
import warnings
from importlib import import_module
from typing import Any, Mapping, Sequence

from delfi.config import DEFAULT_PRESET, ConfigError, build_config, load_preset, parse_overrides, preset_names
from delfi.models.capabilities import supports  # noqa: F401 - public: `delfi.models.supports(model, "global")`

class RandomWeightsWarning(UserWarning):
    """A model was built for extraction without trained weights: its features mean nothing."""


# model family -> (module, model class, config class)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "r2d2": ("delfi.models.r2d2", "R2D2", "R2D2Config"),
    "delf": ("delfi.models.delf", "DELF", "DELFConfig"),
    "delg": ("delfi.models.delg", "DELG", "DELGConfig"),
    "multilevel": ("delfi.models.multilevel", "MultiLevel", "MultiLevelConfig"),
}


def list() -> builtins.list[str]:  # noqa: A001 - the documented public name
    """Names of the presets that `create` accepts."""
    return preset_names()


def family_classes(family: str) -> tuple[type, type]:
    """(model class, config class) of a model family."""
    if family not in FAMILIES:
        raise ConfigError(f"model: unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, model_name, config_name = FAMILIES[family]
    module = import_module(module_name)
    return getattr(module, model_name), getattr(module, config_name)


def resolve_config(
    preset: str | os.PathLike = DEFAULT_PRESET,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> Any:
    """The validated config object of ``preset`` with ``overrides`` (``key=value`` strings or a dict)."""
    layers = load_preset(preset)
    extra = parse_overrides(overrides) if isinstance(overrides, (builtins.list, tuple)) else dict(overrides or {})
    family = str(extra.get("model", layers["model"]))
    _, config_class = family_classes(family)
    return build_config(config_class, layers, extra)


def create(
    preset: str | os.PathLike = DEFAULT_PRESET,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    load: bool = True,
    **overrides: Any,
) -> Any:
    """Build a model from a preset, load its weights and move it to ``device``.

    Args:
        preset: a preset name (see `list`) or a YAML file.
        weights: a known weights name (see ``delfi weights list``) or a checkpoint path; default:
            the preset's ``weights``.
        device: torch device string.
        load: False builds the network with random weights (tests, training), without a warning.
        **overrides: config keys, e.g. ``top_k=2000``.

    The model's ``untrained`` attribute is True when no trained weights were loaded (none given,
    or ImageNet backbone weights only); with ``load`` that also warns (`RandomWeightsWarning`).

    Raises:
        CheckpointError: the weights file cannot be used, e.g. it holds NaN or infinite values
            (`delfi.models.checkpoints.load_checkpoint` / `load_torch_file` refuse it).
    """
    if weights is not None:
        overrides["weights"] = str(weights)
    config = resolve_config(preset, overrides)
    from delfi.models.weights import resolve_weights

    checkpoint = path = None
    if load and config.weights:
        from delfi.models.checkpoints import load_checkpoint

        path = resolve_weights(config.weights)[0]
        checkpoint = load_checkpoint(path).require_family(config.model)
        config = _checkpoint_config(preset, overrides, config, checkpoint)
    model_class, _ = family_classes(config.model)
    model = model_class(config)
    if load and getattr(config, "backbone_weights", None):
        backbone = resolve_weights(config.backbone_weights)[0]
        model.load_backbone(backbone)
    if checkpoint is not None:
        model.load_weights(path, checkpoint=checkpoint)
    model.untrained = not (load and config.weights)
    if load and model.untrained:
        warnings.warn(RandomWeightsWarning(_untrained_message(config)), stacklevel=2)
    return model.to(device)


def _checkpoint_config(preset: Any, overrides: Mapping[str, Any], config: Any, checkpoint: Any) -> Any:
    """``config`` with the network architecture of ``checkpoint`` (e.g. ``mchan`` of a trained R2D2).

    A setting counts as the user's when ``overrides`` gives it a value other than the preset's; such
    a setting that contradicts the checkpoint is refused (`CheckpointError` naming the file).
    """
    from delfi.config import config_to_dict
    from delfi.models.checkpoints import CheckpointError
    from delfi.models.networks import network_class, same_setting

    keys = [k for k in network_class(config.model).config_keys if k in checkpoint.config]
    base = config_to_dict(resolve_config(preset, {"model": config.model}))
    given = config_to_dict(config)
    explicit = {k for k in keys if k in overrides and not same_setting(config.model, k, given[k], base[k])}
    clash = [f"{k}={given[k]!r} (the checkpoint has {checkpoint.config[k]!r})" for k in sorted(explicit)
             if not same_setting(config.model, k, given[k], checkpoint.config[k])]  # fmt: skip
    if clash:
        raise CheckpointError(
            f"{checkpoint.path}: the settings {', '.join(clash)} contradict the checkpoint's network: "
            "leave them out to use the checkpoint's"
        )
    adopted = {k: checkpoint.config[k] for k in keys if not same_setting(config.model, k, given[k], checkpoint.config[k])}
    if not adopted:
        return config
    try:
        return resolve_config(preset, {**dict(overrides), **adopted})
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint.path}: its network settings are not valid: {exc}") from None


def _untrained_message(config: Any) -> str:
    if getattr(config, "backbone_weights", None):
        what = f"only ImageNet backbone weights ({config.backbone_weights}): its attention and descriptor heads are random"
    else:
        what = "no weights: the whole network is random"
    return (
        f"{config.model} has {what}, so its features (and attention maps) mean nothing; "
        f"give trained weights with --weights / weights=CHECKPOINT"
    )
