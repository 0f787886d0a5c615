"""Every checkpoint delfi reads or writes, loaded safely: tensors only, nothing executed.

`save_checkpoint` writes a network with what rebuilds it and where it came from, atomically::

    {"delfi": {"format": "delfi-checkpoint", "format_version": 1, "family": "r2d2" | "delf" | "delg" | "multilevel",
               "config": {...network (and other) settings...}, "normalisation": "imagenet" | ...,
               "provenance": {"data", "seed", "steps", "delfi_version", "command", ...}},
     "state_dict": {parameter name: tensor}}          # the network's own keys, CPU, contiguous

`load_checkpoint` reads, always with torch's tensors-only unpickler (``weights_only=True``), and
returns a `CheckpointInfo` whatever the file's kind:

- ``"delfi"``: a file `save_checkpoint` wrote, or one of the earlier DELF / DELG checkpoints
  (``{"delfi": {"family", "config", "normalisation"}, "state_dict"}``, read as format version 0);
- ``"lightning"``: a Lightning checkpoint (``state_dict`` of the LightningModule, whose network is
  its ``net`` attribute: keys ``net.*``; the metadata is the top-level ``"delfi"`` dict the trainer
  writes in ``on_save_checkpoint``, else its ``hyper_parameters``); optimiser states, loops and
  callbacks are read (tensors and plain data) and ignored;
- ``"official-r2d2"``: the official R2D2 files, dicts with ``net`` (the constructor call as a
  string, e.g. ``"Quad_L2Net_ConfCFS(mchan=6)"``) and ``state_dict`` (keys possibly prefixed
  ``module.``). The official loader ``eval()``s that string; here it is parsed with `ast` and only
  known constructors with literal keyword arguments are accepted.
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

R2D2_CONSTRUCTORS = {
    "Quad_L2Net_ConfCFS": "quad_l2net",
    "Fast_Quad_L2Net_ConfCFS": "fast_quad_l2net",
}
R2D2_KWARGS = {"mchan", "dim"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class StateDictKeysError(CheckpointError, KeyError):
    """Missing or unexpected keys in a state dict: a `CheckpointError` that is also a `KeyError`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointDict(dict):
    """A dict read from a checkpoint file, remembering that file (``source``) for error messages."""

    source: str = "checkpoint"

    @classmethod
    def of(cls, data: dict, source: str | os.PathLike) -> "CheckpointDict":
        out = cls(data)
        out.source = str(source)
        return out


def source_of(state_dict: Any, default: str = "state dict") -> str:
    """The file a state dict came from (`CheckpointDict`), or ``default``."""
    return getattr(state_dict, "source", None) or default


SHOWN = 5
"""How many names each list of a mismatch message shows."""


def _plain_dict(*_args: Any) -> dict:
    """Stand-in for ``collections.defaultdict`` in pickles (training logs); builds a plain dict."""
    return {}


def _refusal_reason(exc: BaseException) -> str:
    """Why torch's tensors-only unpickler stopped, without torch's advice to load the file unsafely.

    PyTorch's message recommends retrying with a permissive loader; that would run whatever code the
    file holds, so only the cause is kept.
    """
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1)
        return (
            f"unsupported global {name!r} in the pickle: delfi loads tensors only, "
            "this file may contain code and was not executed"
        )
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = f" ({found.group(1).strip().rstrip('.')})" if found else ""
    return (
        f"not a tensors-only torch checkpoint{detail}: delfi loads tensors only, "
        "anything else in the file was not executed"
    )


_TORCH_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
"""How a torch file starts: a zip archive (torch >= 1.6) or a pickle (the legacy format)."""


def _load_error(path: Path, exc: BaseException) -> CheckpointError:
    """A `CheckpointError` naming ``path`` and the cause of ``exc`` in plain words."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as error:
        return CheckpointError(f"{path}: cannot read it ({error.strerror or error})")
    text = str(exc)
    if size == 0:
        why = "the file is empty"
    elif isinstance(exc, pickle.UnpicklingError) and "weights_only" in text.replace(" ", "_").lower():
        why = _refusal_reason(exc)
    elif isinstance(exc, PermissionError):
        why = f"cannot read it ({exc.strerror or exc})"
    elif head.startswith(_TORCH_MAGICS) or isinstance(exc, EOFError) or "corrupted" in text:
        why = f"truncated or corrupted torch file ({size} bytes)"
    else:
        why = "not a torch checkpoint file"
    return CheckpointError(f"{path}: {why}")


SAFE_GLOBALS: list = [
    (_plain_dict, "collections.defaultdict"),
    list,
    # Lightning's ``AttributeDict`` (``hyper_parameters``), a dict subclass: read as a plain dict
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "lightning_fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
]
"""What the tensors-only unpickler accepts besides tensors and plain data: stand-ins (plain
containers, no code) for the containers official R2D2 and Lightning checkpoints pickle."""


def load_torch_file(path: str | os.PathLike, *, check_finite: bool = True) -> Any:
    """Load a torch file with the tensors-only unpickler on the CPU (any content; see `load_checkpoint`
    for checkpoints).

    Some official files (e.g. faster2d2) pickle their training logs as ``defaultdict(list)``,
    which the tensors-only unpickler refuses; those are read back as plain dicts. A top-level dict
    comes back as a `CheckpointDict` that remembers ``path``.

    Raises:
        CheckpointError: naming the file, when it is missing, a folder, empty, truncated, not a torch
            file, holds anything but tensors and plain data (nothing is executed; the message never
            suggests loading it unsafely), or (``check_finite``) holds a non-finite floating tensor.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notices are not the user's business
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem becomes a clear error
        raise _load_error(path, exc) from None
    if check_finite:
        bad = first_non_finite(data)
        if bad is not None:
            raise CheckpointError(f"{path}: tensor {bad!r} has non-finite values (NaN or inf): refusing these weights")
    return CheckpointDict.of(data, path) if isinstance(data, dict) else data


def first_non_finite(data: Any, prefix: str = "") -> str | None:
    """The name (``a/b.weight``) of the first floating tensor in ``data`` holding NaN or inf, or None.

    Walks nested dicts, lists and tuples (a checkpoint's usual containers).
    """
    if isinstance(data, torch.Tensor):
        if (data.is_floating_point() or data.is_complex()) and data.numel() and not bool(torch.isfinite(data).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(data, dict):
        items = ((f"{prefix}/{k}" if prefix else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for name, value in items:
        bad = first_non_finite(value, name)
        if bad is not None:
            return bad
    return None


def _short(names: list[str], shown: int = SHOWN) -> str:
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def state_dict_mismatch(module: torch.nn.Module, state_dict: Mapping[str, Any]) -> str | None:
    """What keeps ``state_dict`` from loading into ``module`` strictly, briefly, or None when it fits.

    Lists (the first `SHOWN` of) the missing keys, the unexpected keys and the tensors of the wrong
    shape with the expected and the found shapes.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes, not_tensors = [], []
    for key, value in state_dict.items():
        if key not in own:
            continue
        if not isinstance(value, torch.Tensor):
            not_tensors.append(f"{key} ({type(value).__name__})")
        elif tuple(value.shape) != tuple(own[key].shape):
            shapes.append(f"{key}: expected {tuple(own[key].shape)}, found {tuple(value.shape)}")
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape: {_short(shapes)}")
    if missing:
        parts.append(f"{len(missing)} missing: {_short(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
    if not_tensors:
        parts.append(f"{len(not_tensors)} not tensors: {_short(not_tensors)}")
    return "; ".join(parts) or None


def check_state_dict(module: torch.nn.Module, state_dict: Mapping[str, Any], source: str | None = None) -> None:
    """Raise a `CheckpointError` naming ``source`` when ``state_dict`` does not fit ``module`` exactly."""
    problem = state_dict_mismatch(module, state_dict)
    if problem is not None:
        where = source or source_of(state_dict)
        raise CheckpointError(f"{where}: does not fit the {type(module).__name__} network: {problem}")


def load_state_dict_checked(module: torch.nn.Module, state_dict: Mapping[str, Any], source: str | None = None) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, with every mismatch a `CheckpointError`
    naming ``source`` (by default the file a `CheckpointDict` came from) instead of torch's error."""
    check_state_dict(module, state_dict, source)
    torch.nn.Module.load_state_dict(module, dict(state_dict), strict=True)


def parse_r2d2_net_string(net: str, source: str = "checkpoint") -> dict[str, Any]:
    """Turn an official ``net`` string into delfi's R2D2 network arguments, without executing it.

    >>> parse_r2d2_net_string("Quad_L2Net_ConfCFS(mchan=6)")
    {'arch': 'quad_l2net', 'mchan': 6}
    """
    try:
        node = ast.parse(net.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CheckpointError(f"{source}: cannot parse network description {net!r}") from exc
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
        raise CheckpointError(f"{source}: unsupported network description {net!r}")
    if node.func.id not in R2D2_CONSTRUCTORS:
        known = ", ".join(R2D2_CONSTRUCTORS)
        raise CheckpointError(f"{source}: unknown R2D2 architecture {node.func.id!r} (known: {known})")
    args: dict[str, Any] = {"arch": R2D2_CONSTRUCTORS[node.func.id]}
    for keyword in node.keywords:
        value = getattr(keyword.value, "value", None)
        if (
            keyword.arg not in R2D2_KWARGS
            or keyword.arg in args  # a repeated keyword is a SyntaxError for the official eval()
            or not isinstance(keyword.value, ast.Constant)
            or type(value) is not int  # channel counts: integers (not bools, strings, floats)
            or value <= 0
        ):
            raise CheckpointError(f"{source}: unsupported argument in {net!r}")
        args[keyword.arg] = value
    return args


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel-style prefix from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _checked_state_dict(state_dict: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``state_dict`` if it maps names to tensors, else a `CheckpointError` naming ``path``."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of parameter names to tensors")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: 'state_dict' entries that are not tensors: {_short(not_tensors)}")
    return state_dict


def _official_r2d2(checkpoint: Any, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not an R2D2 checkpoint (no 'state_dict')")
    state_dict = _checked_state_dict(checkpoint["state_dict"], path)
    net = checkpoint.get("net", "Quad_L2Net_ConfCFS()")
    return parse_r2d2_net_string(str(net), source=str(path)), CheckpointDict.of(strip_prefix(state_dict), path)


def load_r2d2_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an official R2D2 checkpoint: (network arguments as written in its ``net`` string, state
    dict with clean keys). Any kind of R2D2 checkpoint: `load_checkpoint`."""
    return _official_r2d2(load_torch_file(path), path)


# --------------------------------------------------------------------------------------------------
# The one checkpoint format: save_checkpoint / load_checkpoint
# --------------------------------------------------------------------------------------------------

CHECKPOINT_KEY = "delfi"
"""The top-level key of delfi's metadata (in delfi files and in the trainer's Lightning files)."""

FORMAT = "delfi-checkpoint"
FORMAT_VERSION = 1
"""The version `save_checkpoint` writes; `load_checkpoint` reads 0 (the first DELF / DELG files) to this."""

KINDS = ("delfi", "lightning", "official-r2d2")
LIGHTNING_PREFIX = "net."
"""Where the trainer's LightningModule keeps the network (``self.net``): its state dict keys' prefix."""

FAMILIES = ("r2d2", "delf", "delg", "multilevel")
PROVENANCE_KEYS = ("data", "seed", "steps", "delfi_version", "command")

R2D2_DEFAULTS = {"arch": "quad_l2net", "mchan": 4, "dim": 128}
"""The official constructors' defaults (a ``net`` string names only what differs)."""


@dataclass
class CheckpointInfo:
    """What `load_checkpoint` read.

    Attributes:
        family: ``"r2d2"``, ``"delf"`` or ``"delg"``.
        config: the settings saved with the network (at least the architecture keys of the family's
            network, e.g. ``arch``, ``mchan``, ``dim``; the first DELF / DELG files hold their whole
            extractor config).
        normalisation: the input normalisation the network was trained with (a name of
            `delfi.models.resnet.NORMALISATION`; ``"imagenet"`` for R2D2).
        provenance: how it was trained (``data``, ``seed``, ``steps``, ``delfi_version``,
            ``command``, ...); empty for the official files.
        state_dict: the network's tensors with its own keys (no ``module.`` / ``net.`` prefix), a
            `CheckpointDict` that remembers the file.
        kind: ``"delfi"``, ``"lightning"`` or ``"official-r2d2"``.
        path: the file.
        format_version: of the delfi metadata (0: the first DELF / DELG files; official files: 0).
    """

    family: str
    config: dict[str, Any]
    normalisation: str
    provenance: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    kind: str
    path: Path
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # e.g. a Lightning file's global_step

    def require_family(self, family: str) -> "CheckpointInfo":
        """``self``, or a `CheckpointError` naming the file when it holds another family's network."""
        if self.family == family:
            return self
        if self.kind == "official-r2d2":
            raise CheckpointError(
                f"{self.path}: not a delfi {family} checkpoint (no '{CHECKPOINT_KEY}' metadata; "
                f"it reads as an official R2D2 file)"
            )
        raise CheckpointError(f"{self.path}: a {self.family!r} checkpoint, expected {family!r}")


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (dict with str keys, list, str, int, float, bool, None), or a
    `ValueError` naming ``where``: a checkpoint's metadata must load with the tensors-only unpickler."""
    from enum import Enum

    if isinstance(value, Enum):
        return _plain(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return _plain(value.item(), where)
    import numpy as np

    if isinstance(value, np.generic):
        return _plain(value.item(), where)
    raise ValueError(f"{where}: {type(value).__name__} is not plain data (str, number, bool, None, list, dict)")


def network_of(model: torch.nn.Module, family: str) -> torch.nn.Module:
    """The network to save: ``model`` itself when it is the family's network class, or an
    extractor's ``network``."""
    from delfi.models.networks import network_class

    cls = network_class(family)
    if isinstance(model, cls):
        return model
    inner = model._modules.get("network") if isinstance(model, torch.nn.Module) else None
    if isinstance(inner, cls):
        return inner
    raise TypeError(f"expected a {cls.__name__} (or an extractor built on one) for family {family!r}, got {type(model).__name__}")


def save_checkpoint(
    path: str | os.PathLike,
    network: torch.nn.Module,
    *,
    family: str,
    config: Mapping[str, Any] | None = None,
    normalisation: str = "imagenet",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``network`` (the family's network, or an extractor built on one) as a delfi checkpoint.

    The file is written next to ``path`` under a temporary name and moved into place with
    `os.replace`, so ``path`` never holds a partial file. The network's architecture
    (`architecture()`) is merged into ``config``; a ``config`` value that contradicts it is refused.
    ``provenance`` gets ``delfi_version`` (this delfi) and ``None`` for each of ``data``, ``seed``,
    ``steps``, ``command`` it does not give.

    Raises:
        ValueError: an unknown family or normalisation, metadata that is not plain data, or a config
            that does not describe the network.
        TypeError: ``network`` is not the family's network.
    """
    from delfi import __version__
    from delfi.models.resnet import NORMALISATION

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    if normalisation not in NORMALISATION:
        raise ValueError(f"normalisation: one of {', '.join(NORMALISATION)}, got {normalisation!r}")
    net = network_of(network, family)
    settings = _plain(dict(config or {}), "config")
    architecture = _plain(net.architecture(), "architecture")
    from delfi.models.networks import same_setting

    clash = [f"{k}={settings[k]!r} (the network has {v!r})" for k, v in architecture.items()
             if k in settings and not same_setting(family, k, settings[k], v)]  # fmt: skip
    if clash:
        raise ValueError(f"config does not describe the network: {', '.join(clash)}")
    settings.update(architecture)
    record = {key: None for key in PROVENANCE_KEYS}
    record.update(_plain(dict(provenance or {}), "provenance"))
    record["delfi_version"] = record.get("delfi_version") or __version__
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": settings,
        "normalisation": normalisation,
        "provenance": record,
    }
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    bad = first_non_finite(state_dict)
    if bad is not None:
        raise ValueError(f"tensor {bad!r} has non-finite values (NaN or inf): not saving a diverged network")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save({CHECKPOINT_KEY: meta, "state_dict": state_dict}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _is_lightning(data: Mapping[str, Any]) -> bool:
    return any(k in data for k in ("pytorch-lightning_version", "optimizer_states", "loops", "global_step"))


def _metadata(meta: Any, path: Path, where: str) -> tuple[int, str, dict, str, dict]:
    """(format_version, family, config, normalisation, provenance) of a delfi metadata dict."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: '{where}' is not a dict of delfi metadata")
    fmt = meta.get("format", FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt!r} in '{where}' (expected {FORMAT!r})")
    version = meta.get("format_version", 0 if "format" not in meta else None)
    if type(version) is not int or version < 0:
        raise CheckpointError(f"{path}: bad format_version {version!r} in '{where}'")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer delfi (checkpoint format version {version}; this delfi reads up to "
            f"{FORMAT_VERSION}): upgrade delfi"
        )
    family = meta.get("family", meta.get("model"))
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {family!r} in '{where}' (known: {', '.join(FAMILIES)})")
    config = meta.get("config") or {}
    provenance = meta.get("provenance") or {}
    if not isinstance(config, Mapping) or not isinstance(provenance, Mapping):
        raise CheckpointError(f"{path}: 'config' and 'provenance' in '{where}' must be dicts")
    normalisation = meta.get("normalisation") or config.get("normalisation") or "imagenet"
    if not isinstance(normalisation, str):
        raise CheckpointError(f"{path}: 'normalisation' in '{where}' is not a name")
    return version, str(family), dict(config), normalisation, dict(provenance)


def load_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Read any delfi, Lightning or official R2D2 checkpoint (tensors only, nothing executed).

    Raises:
        CheckpointError: naming the file: not found, not a torch file, truncated, holding code or
            objects other than tensors and plain data (never executed; the message never suggests
            loading it unsafely), no network in it, unknown or newer format, or non-finite tensors
            in its state dict.
    """
    path = Path(path)
    data = load_torch_file(path, check_finite=False)  # optimiser / callback states may hold inf legitimately
    if not isinstance(data, Mapping) or "state_dict" not in data:
        raise CheckpointError(f"{path}: not a delfi, Lightning or official R2D2 checkpoint (no 'state_dict')")
    bad = first_non_finite(data["state_dict"], "state_dict")
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad!r} has non-finite values (NaN or inf): refusing these weights")
    extra: dict[str, Any] = {}
    if _is_lightning(data):
        kind = "lightning"
        if isinstance(data.get(CHECKPOINT_KEY), Mapping):
            meta, where = data[CHECKPOINT_KEY], CHECKPOINT_KEY
        elif isinstance(data.get("hyper_parameters"), Mapping) and (
            "family" in data["hyper_parameters"] or "model" in data["hyper_parameters"]
        ):
            meta, where = data["hyper_parameters"], "hyper_parameters"
        else:
            raise CheckpointError(
                f"{path}: a Lightning checkpoint without delfi metadata (no '{CHECKPOINT_KEY}' dict, and no "
                "'family' in its hyper_parameters): not written by delfi's trainer"
            )
        version, family, config, normalisation, provenance = _metadata(meta, path, where)
        full = _checked_state_dict(data["state_dict"], path)
        state_dict = {k[len(LIGHTNING_PREFIX):]: v for k, v in full.items() if k.startswith(LIGHTNING_PREFIX)}
        if not state_dict:
            raise CheckpointError(f"{path}: a Lightning checkpoint without a network (no '{LIGHTNING_PREFIX}*' keys in its state_dict)")
        extra = {k: data[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in data}
        if provenance.get("steps") is None and isinstance(data.get("global_step"), int):
            provenance["steps"] = data["global_step"]
    elif CHECKPOINT_KEY in data:
        kind = "delfi"
        version, family, config, normalisation, provenance = _metadata(data[CHECKPOINT_KEY], path, CHECKPOINT_KEY)
        state_dict = strip_prefix(_checked_state_dict(data["state_dict"], path))
    else:
        kind, version, family, normalisation, provenance = "official-r2d2", 0, "r2d2", "imagenet", {}
        args, state_dict = _official_r2d2(data, path)
        config = {**R2D2_DEFAULTS, **args}
    if family == "r2d2":
        config = {**R2D2_DEFAULTS, **config} if kind != "official-r2d2" else config
    return CheckpointInfo(
        family=family,
        config=config,
        normalisation=normalisation,
        provenance=provenance,
        state_dict=CheckpointDict.of(dict(state_dict), path),
        kind=kind,
        path=path,
        format_version=version,
        extra=extra,
    )
