"""Loading official checkpoints safely: tensors only, nothing executed.

The official R2D2 checkpoints are dicts with ``net`` (the constructor call as a string, e.g.
``"Quad_L2Net_ConfCFS(mchan=6)"``) and ``state_dict`` (keys possibly prefixed ``module.``). The
official loader ``eval()``s that string; here it is parsed with `ast` and only known constructors
with literal keyword arguments are accepted.
"""

from __future__ import annotations

import ast
import os
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


def _plain_dict(*_args: Any) -> dict:
    """Stand-in for ``collections.defaultdict`` in pickles (training logs); builds a plain dict."""
    return {}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a torch checkpoint with ``weights_only=True`` on the CPU.

    Some official files (e.g. faster2d2) pickle their training logs as ``defaultdict(list)``,
    which the weights-only unpickler refuses; those are read back as plain dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    allowed = [(_plain_dict, "collections.defaultdict"), list]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem becomes a clear error
        raise CheckpointError(f"{path}: not a loadable weights-only torch checkpoint ({exc})") from exc


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
    net = checkpoint.get("net", "Quad_L2Net_ConfCFS()")
    return parse_r2d2_net_string(str(net), source=str(path)), strip_prefix(state_dict)
