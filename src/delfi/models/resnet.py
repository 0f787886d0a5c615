"""ResNet-50 / ResNet-101 backbones whose parameter names match torchvision's.

The module tree (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` .. ``layer4`` of `Bottleneck`
blocks with ``conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/downsample.1``, ``avgpool``, ``fc``) is the
one torchvision uses, so a torchvision ImageNet state dict loads with ``load_state_dict(strict=True)``
and a delfi state dict loads into torchvision. delfi does not depend on torchvision.

Where the stride of a stage's first block sits (``stride_in``):

``"3x3"``  torchvision's "ResNet v1.5": the stride-2 is on the 3x3 conv (``conv2``) of the first block
           of ``layer2`` .. ``layer4``. Slightly more accurate; torchvision's ImageNet weights use it.
``"1x1"``  the original paper / Caffe / Keras / TF layout: the stride-2 is on the first 1x1 conv
           (``conv1``). The 1x1 conv then simply drops three pixels out of four, so the 3x3 conv sees a
           wider window: the receptive field of ``layer3`` grows from 267 to 291 pixels (see
           `delfi.extract.receptive`). TF DELF / DELG checkpoints use it.

Both layouts have the same parameters (names and shapes) and the same output sizes: a stage at stride
``s`` has ``ceil(H / s) x ceil(W / s)`` cells for an ``H x W`` input. Loading weights trained with one
layout into the other works mechanically but gives a different function.

>>> net = ResNet(50, num_classes=None).eval()                        # doctest: +SKIP
>>> load_imagenet_state_dict(net, torch.load("resnet50-0676ba61.pth", weights_only=True))  # doctest: +SKIP
>>> net.forward_features(x, ("layer3", "layer4"))["layer3"].shape   # doctest: +SKIP
torch.Size([1, 1024, 14, 14])                                        # for a 224 x 224 input
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from delfi.models.checkpoints import CheckpointError, StateDictKeysError, source_of

__all__ = [
    "ResNet",
    "Bottleneck",
    "STAGES",
    "STAGE_STRIDES",
    "STAGE_CHANNELS",
    "BLOCKS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalisation",
    "NORMALISATION",
    "ImageNetWeights",
    "IMAGENET_WEIGHTS",
    "LoadReport",
    "load_imagenet_state_dict",
    "freeze_batchnorm",
]

STAGES: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4")
"""The names `ResNet.forward_features` can return, in execution order. ``conv1`` is the output of
conv1 + bn1 + relu (before the max-pool); ``layer1`` includes the max-pool."""

STAGE_STRIDES: dict[str, int] = {"conv1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
STAGE_CHANNELS: dict[str, int] = {"conv1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}

BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Bottleneck blocks per stage (layer1 .. layer4) for each supported depth."""

STRIDE_IN = ("3x3", "1x1")


# --------------------------------------------------------------------------------------------------
# Input normalisation and known ImageNet weights
# --------------------------------------------------------------------------------------------------

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalisation:
    """How a network expects its input: ``(x - mean) / std`` on RGB values in [0, 1], per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""

    def __call__(self, images: Tensor) -> Tensor:
        """Normalise ``images`` (B, 3, H, W) or (3, H, W), RGB in [0, 1]."""
        shape = (3, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        return (images - mean) / std


NORMALISATION: dict[str, Normalisation] = {
    "imagenet": Normalisation(
        IMAGENET_MEAN, IMAGENET_STD, "torchvision ImageNet weights: ImageNet mean/std on RGB in [0, 1]"
    ),
    "tf-delf": Normalisation(
        (128 / 255,) * 3, (128 / 255,) * 3, "TF DELF/DELG: (uint8 - 128) / 128, i.e. [-1, 1)"
    ),
    "unit": Normalisation((0.0,) * 3, (1.0,) * 3, "DeLF-pytorch: RGB in [0, 1], unchanged"),
}
"""Input normalisation per weight source (see `ImageNetWeights.normalisation`)."""


@dataclass(frozen=True)
class ImageNetWeights:
    """A published ImageNet checkpoint for a backbone (a candidate row for the weights table).

    torch hub's convention: the file name ends with the first 8 hex digits of the file's sha256
    (``resnet50-0676ba61.pth``), which is all that is known here; `sha256_prefix` holds them.
    """

    name: str
    depth: int
    url: str
    sha256_prefix: str
    stride_in: str
    normalisation: str
    top1: float
    licence: str = "BSD-3-Clause (torchvision)"
    source: str = "pytorch/vision"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_TORCHVISION_URL = "https://download.pytorch.org/models"

IMAGENET_WEIGHTS: dict[str, ImageNetWeights] = {
    w.name: w
    for w in (
        ImageNetWeights(
            "resnet50-imagenet", 50, f"{_TORCHVISION_URL}/resnet50-0676ba61.pth", "0676ba61",
            "3x3", "imagenet", 76.130,
        ),
        ImageNetWeights(
            "resnet101-imagenet", 101, f"{_TORCHVISION_URL}/resnet101-63fe2227.pth", "63fe2227",
            "3x3", "imagenet", 77.374,
        ),
    )
}
"""torchvision's ImageNet-1k (V1 recipe) ResNets: plain state dicts, all 1000-class ``fc`` included."""


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block with 4x channel expansion (torchvision names).

    Input (B, in_channels, H, W) -> output (B, 4 * width, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, stride_in: str = "3x3") -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride_3x3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def main_path(self) -> list[nn.Module]:
        """The convs of the residual branch, in order (the receptive field follows this path)."""
        return [self.conv1, self.conv2, self.conv3]


class ResNet(nn.Module):
    """ResNet-50 / ResNet-101 with torchvision-compatible parameter names.

    Args:
        depth: 50 or 101.
        stride_in: ``"3x3"`` (torchvision v1.5) or ``"1x1"`` (original / TF); see the module docstring.
        num_classes: size of the ``fc`` classifier; ``None`` builds no ``fc`` (a pure backbone).
        zero_init_residual: start every block's last BN at zero (each block begins as the identity).
    """

    def __init__(
        self,
        depth: int = 50,
        stride_in: str = "3x3",
        num_classes: int | None = 1000,
        *,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth!r}")
        if stride_in not in STRIDE_IN:
            raise ValueError(f"stride_in must be one of {STRIDE_IN}, got {stride_in!r}")
        self.depth = depth
        self.stride_in = stride_in
        self.num_classes = num_classes
        self.bn_frozen = False

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width) in enumerate(zip(BLOCKS[depth], (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(in_channels, width, stride if b == 0 else 1, stride_in))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Linear | None = nn.Linear(in_channels, num_classes) if num_classes else None
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """torchvision's initialisation: He-normal (fan_out) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    # ---------------------------------------------------------------------------------------------

    def forward_features(self, x: Tensor, layers: str | Iterable[str] = ("layer3",)) -> dict[str, Tensor]:
        """Named intermediate feature maps, computing nothing after the last one requested.

        Args:
            x: (B, 3, H, W) normalised images.
            layers: any of ``"conv1"`` (B, 64, H/2, W/2), ``"layer1"`` (B, 256, H/4, W/4),
                ``"layer2"`` (B, 512, H/8, W/8), ``"layer3"`` (B, 1024, H/16, W/16),
                ``"layer4"`` (B, 2048, H/32, W/32); every ``H/s`` means ``ceil(H / s)``.

        Returns:
            ``{name: tensor}`` for the requested names, in execution order.
        """
        wanted = {layers} if isinstance(layers, str) else set(layers)
        unknown = wanted - set(STAGES)
        if unknown:
            raise ValueError(f"unknown ResNet layers {sorted(unknown)}; expected names from {STAGES}")
        if not wanted:
            raise ValueError(f"request at least one layer from {STAGES}")
        last = max(STAGES.index(name) for name in wanted)
        out: dict[str, Tensor] = {}
        for name in STAGES[: last + 1]:
            if name == "conv1":
                x = self.relu(self.bn1(self.conv1(x)))
            elif name == "layer1":
                x = self.layer1(self.maxpool(x))
            else:
                x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> logits (B, num_classes); without ``fc``: pooled features (B, 2048)."""
        x = self.forward_features(x, ("layer4",))["layer4"]
        x = torch.flatten(self.avgpool(x), 1)
        return x if self.fc is None else self.fc(x)

    # ---------------------------------------------------------------------------------------------

    def receptive_layers(self, upto: str) -> list[nn.Module]:
        """The conv / pool layers on the main path from the input to stage `upto`, in order.

        Skips the ``downsample`` shortcuts (their support lies inside the main path's); used by
        `delfi.extract.receptive.receptive_field`.
        """
        if upto not in STAGES:
            raise ValueError(f"unknown ResNet stage {upto!r}; expected one of {STAGES}")
        path: list[nn.Module] = [self.conv1]
        for name in STAGES[1 : STAGES.index(upto) + 1]:
            if name == "layer1":
                path.append(self.maxpool)
            for block in getattr(self, name):
                path.extend(block.main_path())
        return path

    def freeze_bn(self, frozen: bool = True) -> ResNet:
        """Keep every BatchNorm in eval mode with frozen affine parameters (small-batch finetuning).

        Running statistics stop updating and BN weights/biases get no gradient; gradients still flow
        through the BN layers to earlier layers. The setting survives later ``.train()`` calls;
        ``freeze_bn(False)`` undoes it (and restores the BN mode of the model).
        """
        self.bn_frozen = frozen
        freeze_batchnorm(self, frozen)
        if not frozen:
            self.train(self.training)
        return self

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def freeze_batchnorm(module: nn.Module, frozen: bool = True) -> nn.Module:
    """Put every BatchNorm of `module` in eval mode and stop its parameters' gradients.

    ``frozen=False`` re-enables the gradients (the mode is left to the caller's ``.train()``). A
    plain module's later ``.train()`` puts its BNs back in training mode; `ResNet.freeze_bn` persists.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if frozen:
                m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(not frozen)
    return module


# --------------------------------------------------------------------------------------------------
# Loading ImageNet state dicts
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What `load_imagenet_state_dict` did: keys loaded, ignored (fc not in the model or of another
    size) and left at their initial values (``num_batches_tracked`` buffers absent from old files)."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Unwrap a ``{"state_dict": {...}}`` checkpoint and drop a ``module.`` (DataParallel) prefix."""
    inner = state_dict.get("state_dict")
    sd = dict(inner if isinstance(inner, Mapping) else state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_imagenet_state_dict(model: ResNet, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Load a torchvision-layout ImageNet state dict into `model`, ignoring what a backbone lacks.

    ``fc.*`` keys are ignored when the model has no ``fc`` or an ``fc`` of another size (then ``fc``
    keeps its initialisation). Missing ``num_batches_tracked`` buffers are tolerated. Any other
    missing or unexpected key, or a shape mismatch, raises a `CheckpointError` naming them (and the
    file, for a state dict read by `delfi.models.checkpoints.load_checkpoint`); for missing /
    unexpected keys it is also a `KeyError`.
    """
    where = f"{source_of(state_dict, '')}: " if source_of(state_dict, "") else ""
    sd = _strip_wrappers(state_dict)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in sd.items():
        if key.startswith("fc.") and (key not in own or own[key].shape != value.shape):
            report.ignored.append(key)
        elif key in own and own[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    unexpected = [k for k in to_load if k not in own]
    missing = [k for k in own if k not in to_load]
    report.kept = [k for k in missing if k.endswith("num_batches_tracked") or k.startswith("fc.")]
    missing = [k for k in missing if k not in report.kept]
    if mismatched:
        raise CheckpointError(
            f"{where}ResNet-{model.depth}: checkpoint tensors of the wrong shape: {_short(mismatched)}"
        )
    if missing or unexpected:
        hint = ""
        deeper = [k for k in unexpected if k.startswith("layer3.")]
        if deeper or any(k.startswith("layer3.") for k in missing):
            hint = " (layer3 differs: is this a checkpoint of another depth, 50 vs 101?)"
        raise StateDictKeysError(
            f"{where}ResNet-{model.depth} cannot load this state dict{hint}. "
            f"Missing keys: {_short(missing) or 'none'}. Unexpected keys: {_short(unexpected) or 'none'}."
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    return report
