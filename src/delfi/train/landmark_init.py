"""Where a DELF / DELG network's weights start: ImageNet backbone weights (``net.backbone_weights``,
torchvision layout, a file or a weights name) and/or any delfi checkpoint (``net.init_from``,
``--init``): every tensor of the same name and shape is loaded, so a DELG run can start from a
DELF finetune checkpoint (backbone to ``layer3``, attention) and a second stage from the first's
``best.ckpt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import nn

__all__ = ["InitReport", "load_backbone_weights", "load_matching_tensors"]


@dataclass
class InitReport:
    """What a checkpoint gave the network: tensor names loaded, and the network's names it lacked."""

    source: str
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the network's tensors left at their initial values

    def summary(self) -> str:
        return f"{len(self.loaded)} tensors from {self.source} ({len(self.kept)} kept at their initial values)"


def load_backbone_weights(net: nn.Module, name_or_path: str | os.PathLike) -> InitReport:
    """ImageNet weights (torchvision state dict; a file or a known weights name) into ``net.backbone``.

    Raises:
        ValueError: the file is missing or cannot be loaded into the backbone (the message says why).
    """
    from delfi.models.checkpoints import CheckpointError, load_torch_file
    from delfi.models.resnet import load_imagenet_state_dict
    from delfi.models.weights import resolve_weights

    try:
        path = resolve_weights(name_or_path)[0]
        report = load_imagenet_state_dict(net.backbone, load_torch_file(path))
    except (CheckpointError, LookupError, OSError) as exc:
        raise ValueError(f"net.backbone_weights: {str(exc).splitlines()[0]}") from None
    own = [f"backbone.{k}" for k in net.backbone.state_dict()]
    loaded = [f"backbone.{k}" for k in report.loaded]
    return InitReport(str(path), loaded, [k for k in own if k not in set(loaded)])


def load_matching_tensors(net: nn.Module, checkpoint: str | os.PathLike) -> InitReport:
    """Load every tensor of ``checkpoint`` (any delfi, Lightning-from-delfi or official file) whose
    name and shape match one of ``net``'s.

    Raises:
        ValueError: an unreadable checkpoint, or one with no tensor of a matching name and shape.
    """
    from delfi.models.checkpoints import CheckpointError, load_checkpoint

    try:
        info = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ValueError(f"--init: {exc}") from None
    own = net.state_dict()
    matching = {k: v for k, v in info.state_dict.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matching:
        raise ValueError(f"--init {checkpoint}: none of its tensors fits this network (a {info.family} checkpoint; "
                         f"the run trains a {type(net).__name__})")  # fmt: skip
    net.load_state_dict(matching, strict=False)
    return InitReport(str(checkpoint), sorted(matching), [k for k in own if k not in matching])
