"""Loading official checkpoints safely: tensors only, nothing executed.

The official R2D2 checkpoints are dicts with ``net`` (the constructor call as a string, e.g.
``"Quad_L2Net_ConfCFS(mchan=6)"``) and ``state_dict`` (keys possibly prefixed ``module.``). The
official loader ``eval()``s that string; here it is parsed with `ast` and only known constructors
with literal keyword arguments are accepted.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import warnings
from collections.abc import Mapping
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


def load_checkpoint(path: str | os.PathLike, *, check_finite: bool = True) -> Any:
    """Load a torch checkpoint with the tensors-only unpickler on the CPU.

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
    allowed = [(_plain_dict, "collections.defaultdict"), list]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notices are not the user's business
            with torch.serialization.safe_globals(allowed):
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


def load_r2d2_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an official R2D2 checkpoint: (network arguments, state dict with clean keys)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not an R2D2 checkpoint (no 'state_dict')")
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of parameter names to tensors")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: 'state_dict' entries that are not tensors: {_short(not_tensors)}")
    net = checkpoint.get("net", "Quad_L2Net_ConfCFS()")
    return parse_r2d2_net_string(str(net), source=str(path)), CheckpointDict.of(strip_prefix(state_dict), path)
