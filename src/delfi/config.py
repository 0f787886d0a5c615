"""Structured configs: dataclass schemas + OmegaConf with strict keys, YAML presets, dotlist overrides.

A preset is a YAML file shipped in ``delfi/configs/`` (or any path) whose ``model`` key names the
model family; the rest of its keys must exist in that family's config dataclass. Overrides come as
``key=value`` strings (the command line) or a dict (Python). Every error names the offending key and,
for enumerations, the allowed values, before any work starts.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


DEFAULT_PRESET = "delfi-lite"
"""The preset of commands and functions given none: delfi's own model, embedded in the package."""


class ConfigError(ValueError):
    """An invalid preset, key or value; the message says which and what is allowed."""


def preset_names() -> list[str]:
    """Names of the presets shipped with delfi."""
    folder = resources.files("delfi") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a shipped preset name, or the given file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"preset file not found: {candidate}")
        return candidate
    shipped = resources.files("delfi") / "configs" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown preset {str(name_or_path)!r}; known presets: {', '.join(preset_names())}")
    return Path(str(shipped))


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a preset as a dict (must contain a ``model`` key)."""
    path = preset_path(name_or_path)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:  # malformed YAML is a yaml error, not OmegaConf's
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError(f"{path}: a preset must be a mapping with a 'model' key")
    return data


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    message = str(exc).splitlines()[0]
    return f"{key}: {message}" if key else message


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["top_k=2000", "precision=bfloat16"]`` -> nested dict (values parsed as YAML)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError) as exc:  # e.g. top_k=[1, (unclosed YAML)
        message = _describe(exc) if isinstance(exc, OmegaConfBaseException) else str(exc).splitlines()[0]
        raise ConfigError(f"invalid override: {message} in {list(overrides)}") from exc


def build_config(schema: type, *layers: Mapping[str, Any] | None) -> Any:
    """Merge ``layers`` (dicts, later wins) onto the defaults of dataclass ``schema``, strictly.

    Returns:
        An instance of ``schema`` (a plain dataclass object) with validated values.

    Raises:
        ConfigError: an unknown key (with the known keys) or a value of the wrong type / not among
        an enum's allowed values.
    """
    if not is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass, got {schema!r}")
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    for layer in layers:
        if not layer:
            continue
        try:
            base = OmegaConf.merge(base, OmegaConf.create(dict(layer)))
        except OmegaConfBaseException as exc:
            if not isinstance(exc, ConfigKeyError):
                raise ConfigError(_describe(exc)) from exc
            known = [str(k) for k in base.keys()]
            key = str(getattr(exc, "key", "") or "")
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            message = _describe(exc)
            if close and "did you mean" not in message.lower():
                message += f" Did you mean {' or '.join(close)}?"
            raise ConfigError(f"{message} (known keys of {schema.__name__}: {', '.join(known)})") from exc
    config = OmegaConf.to_object(base)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def require_number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                   low_open: bool = False, why: str = "") -> None:
    """Raise a `ConfigError` naming ``key`` unless ``value`` is a finite number within the bounds
    (``low <= value <= high``; ``low < value`` with ``low_open``). ``why`` is added to the message."""
    reason = ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        reason = "must be a finite number"
    elif low is not None and (value <= low if low_open else value < low):
        reason = f"must be {'>' if low_open else '>='} {low}"
    elif high is not None and value > high:
        reason = f"must be <= {high}"
    if reason:
        raise ConfigError(f"{key}: {reason}, got {value}" + (f" ({why})" if why else ""))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain JSON-serialisable dict of a config dataclass (enums as their values)."""
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True, enum_to_str=True)
    return json.loads(json.dumps(container))


def dump_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (a config dataclass or a plain dict) as YAML next to an output."""
    data = dict(config) if isinstance(config, Mapping) else config_to_dict(config)
    OmegaConf.save(OmegaConf.create(data), Path(path))


def as_config(value: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict from a DictConfig or mapping."""
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)  # type: ignore[return-value]
    return dict(value)
