"""The R2D2 networks: fully-convolutional L2-Net variants with repeatability and reliability heads.

The module layout (an ``ops`` list of conv / batch-norm / ReLU / pool layers, heads ``clf`` and
``sal``) mirrors the official checkpoints so that their state dicts load without renaming.

Architectures (``arch``):
    ``quad_l2net``       Quad_L2Net_ConfCFS: every "stride 2" becomes a doubled dilation, so the
                         output keeps the input resolution; the final 8x8 conv is three 2x2 convs.
    ``fast_quad_l2net``  Fast_Quad_L2Net_ConfCFS: one 2x2 max-pool after the third conv, halved
                         dilations afterwards, and a bilinear x2 upsampling at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

ARCHITECTURES = ("quad_l2net", "fast_quad_l2net")


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer: channels, kernel, dilation, padding, and what follows it."""

    in_channels: int
    out_channels: int
    kernel: int
    dilation: int
    batch_norm: bool
    relu: bool
    pool_after: int = 1  # >1: a max-pool of this size follows (fast variant)

    @property
    def padding(self) -> int:
        return ((self.kernel - 1) * self.dilation) // 2


def layer_specs(arch: str = "quad_l2net", mchan: int = 4, dim: int = 128) -> list[ConvSpec]:
    """The conv layers of an R2D2 network, in order (the official ``_add_conv`` dilation rule).

    Each "stride 2" layer keeps stride 1 and doubles the dilation of every later layer.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown R2D2 architecture {arch!r}; expected one of {ARCHITECTURES}")
    fast = arch == "fast_quad_l2net"
    # (out channels, kernel, stride, relu, bn, pool)
    plan = [
        (8 * mchan, 3, 1, True, True, 1),
        (8 * mchan, 3, 1, True, True, 1),
        (16 * mchan, 3, 1 if fast else 2, True, True, 2 if fast else 1),
        (16 * mchan, 3, 1, True, True, 1),
        (32 * mchan, 3, 2, True, True, 1),
        (32 * mchan, 3, 1, True, True, 1),
        (32 * mchan, 2, 2, False, True, 1),
        (32 * mchan, 2, 2, False, True, 1),
        (dim, 2, 2, False, False, 1),
    ]
    specs, channels, dilation = [], 3, 1
    for out, kernel, stride, relu, bn, pool in plan:
        specs.append(ConvSpec(channels, out, kernel, dilation, bn, relu, pool))
        dilation *= stride
        channels = out
    return specs


def receptive_radius(specs: list[ConvSpec]) -> int:
    """How far (in input pixels, each side) an output pixel sees: the halo needed for exact tiling.

    Only valid for architectures without pooling (all layers at input resolution).
    """
    if any(s.pool_after > 1 for s in specs):
        raise ValueError("receptive_radius is defined here for stride-1 architectures only")
    return sum((s.kernel - 1) * s.dilation - s.padding if s.kernel % 2 == 0 else s.padding for s in specs)


def repeatability_activation(x: Tensor) -> Tensor:
    """The official repeatability squashing: ``softplus(x) / (1 + softplus(x))`` in (0, 1)."""
    s = F.softplus(x)
    return s / (1 + s)


def reliability_activation(x: Tensor) -> Tensor:
    """Two-channel softmax, channel 1: (B, 2, H, W) -> (B, 1, H, W)."""
    return F.softmax(x, dim=1)[:, 1:2]


class R2D2Net(nn.Module):
    """An R2D2 network (official layer names), returning dense descriptors and confidence maps.

    Input: (B, 3, H, W) RGB normalised with ImageNet mean / std.
    Output of `forward`: dict with ``descriptors`` (B, dim, H, W) L2-normalised along channels,
    ``reliability`` (B, 1, H, W) and ``repeatability`` (B, 1, H, W), both in (0, 1).
    """

    family = "r2d2"
    config_keys: tuple[str, ...] = ("arch", "mchan", "dim")
    """The constructor settings (R2D2 config keys) that fix the parameters: what a checkpoint stores."""
    outputs: tuple[str, ...] = ("descriptors", "reliability", "repeatability")

    def __init__(self, arch: str = "quad_l2net", mchan: int = 4, dim: int = 128) -> None:
        super().__init__()
        arch = arch.value if isinstance(arch, Enum) else arch
        self.arch, self.mchan, self.dim = arch, mchan, dim
        self.specs = layer_specs(arch, mchan, dim)
        ops: list[nn.Module] = []
        for spec in self.specs:
            ops.append(
                nn.Conv2d(
                    spec.in_channels,
                    spec.out_channels,
                    spec.kernel,
                    padding=spec.padding,
                    dilation=spec.dilation,
                )
            )
            if spec.batch_norm:
                ops.append(nn.BatchNorm2d(spec.out_channels, affine=False))
            if spec.relu:
                ops.append(nn.ReLU(inplace=True))
            if spec.pool_after > 1:
                ops.append(nn.MaxPool2d(spec.pool_after))
        if arch == "fast_quad_l2net":
            ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.ops = nn.ModuleList(ops)
        self.clf = nn.Conv2d(dim, 2, kernel_size=1)  # reliability
        self.sal = nn.Conv2d(dim, 1, kernel_size=1)  # repeatability

    @classmethod
    def from_config(cls, config: Any) -> "R2D2Net":
        """The network of an R2D2 config (dataclass or dict with ``arch``, ``mchan``, ``dim``)."""
        defaults = {"arch": "quad_l2net", "mchan": 4, "dim": 128}
        if isinstance(config, Mapping):
            values = {key: config.get(key, default) for key, default in defaults.items()}
        else:
            values = {key: getattr(config, key, default) for key, default in defaults.items()}
        return cls(values["arch"], int(values["mchan"]), int(values["dim"]))

    def architecture(self) -> dict[str, Any]:
        """The settings that rebuild this network (`config_keys`)."""
        return {"arch": self.arch, "mchan": self.mchan, "dim": self.dim}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, with a clear `CheckpointError` instead of torch's errors.

        Tensors of the wrong shape are always refused (torch refuses them too, with a long
        traceback); missing and unexpected keys too when ``strict`` or when the state dict was read
        from a checkpoint file (a `CheckpointDict`: a file must fit the network exactly). The
        message names the file and lists the first few keys of each kind, with expected and found
        shapes.
        """
        from delfi.models.checkpoints import CheckpointDict, check_state_dict, state_dict_mismatch

        if strict or isinstance(state_dict, CheckpointDict):
            check_state_dict(self, state_dict)
        else:
            own = self.state_dict()
            shared = {k: v for k, v in state_dict.items() if k in own}
            if state_dict_mismatch(self, {**own, **shared}) is not None:
                check_state_dict(self, {**own, **shared}, getattr(state_dict, "source", None))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def features(self, x: Tensor) -> Tensor:
        """Raw (pre-normalisation) descriptor map: (B, 3, H, W) -> (B, dim, H, W)."""
        for op in self.ops:
            x = op(x)
        return x

    def confidences(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reliability, repeatability), each (B, 1, H, W), from the raw map (B, dim, H, W)."""
        squared = x * x
        return reliability_activation(self.clf(squared)), repeatability_activation(self.sal(squared))

    def heads(self, x: Tensor) -> dict[str, Tensor]:
        """Descriptors and confidence maps from the raw map (B, dim, H, W)."""
        reliability, repeatability = self.confidences(x)
        return {
            "descriptors": F.normalize(x, p=2, dim=1),
            "reliability": reliability,
            "repeatability": repeatability,
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.heads(self.features(x))
