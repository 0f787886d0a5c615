"""The trainable networks of each family: batched ``forward(images) -> dict of dense maps``.

A network is a plain `torch.nn.Module` (no eval mode forced, no inference mode, no memory format
changed behind the caller's back); the extractors (`delfi.models.r2d2.R2D2`, `delfi.models.delf.DELF`,
`delfi.models.delg.DELG`) run it for inference and add the pyramid, selection and PCA.

Inputs are (B, 3, H, W) images already normalised as the network expects (the checkpoint's
``normalisation``). Outputs (h x w = the feature-map size: H x W for R2D2, about H/16 x W/16 for
DELF / DELG ``layer3``):

``R2D2Net``  ``descriptors`` (B, dim, H, W) L2-normalised, ``reliability`` (B, 1, H, W) and
             ``repeatability`` (B, 1, H, W) in (0, 1): what the R2D2 losses take.
``DELFNet``  ``features`` (B, 1024, h, w) ResNet ``layer3``; ``attention_logits`` (B, 1, h, w);
             ``attention`` (B, 1, h, w) = softplus(logits) >= 0; ``attended`` (B, 1024) the
             attention-pooled feature (mean over h, w of the L2-normalised features times the
             attention, `heads.attention_pool`) that the attention classifier (cross-entropy)
             trains on.
``DELGNet``  as DELF, plus ``local`` (B, local_dim, h, w) the local descriptor map (autoencoder code,
             not normalised), ``reconstruction`` (B, 1024, h, w) the autoencoder's output (only with
             ``autoencoder``; the MSE target is ``features.detach()``), and ``global`` (B, global_dim)
             the L2-normalised GeM + whitening descriptor of ``layer4`` (ArcFace trains on it).
             The local branch (autoencoder, attention) sees ``layer3`` through a stop-gradient
             (``local_stop_gradient``, TF DELG), so only the global loss trains the backbone;
             ``attention`` and ``attended`` are computed on the reconstruction (on ``layer3`` without
             autoencoder, DELG-pytorch).

Each network declares its family and the constructor settings that fix its parameters
(`config_keys`, as config keys of the family's extractor), returned by `architecture()`: that is
what a checkpoint stores to rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from delfi.extract.receptive import TF_SUBSAMPLE_POOL, ReceptiveField, receptive_field
from delfi.models.architecture import ResNetArchitecture
from delfi.models.heads import AttentionHead, Autoencoder, GeM, Whitening, attention_pool
from delfi.models.l2net import R2D2Net
from delfi.models.multilevel_net import MultiLevelNet
from delfi.models.resnet import ResNet

__all__ = ["StrideIn", "R2D2Net", "DELFNet", "DELGNet", "MultiLevelNet", "NETWORKS", "network_class", "build_network", "same_setting"]


class StrideIn(str, Enum):
    torchvision = "3x3"  # stride on the 3x3 conv (torchvision v1.5)
    slim = "1x1"  # stride on the first 1x1 conv (original / TF slim)


def _stride_in(value: Any) -> str:
    """``"3x3"`` / ``"1x1"`` from a `StrideIn`, its value or its name."""
    if isinstance(value, StrideIn):
        return value.value
    if isinstance(value, str) and value in StrideIn.__members__:
        return StrideIn[value].value
    return StrideIn(value).value


_MISSING = object()


def _setting(config: Any, key: str, default: Any = _MISSING) -> Any:
    """``config[key]`` (a dict) or ``config.key`` (a dataclass), enums as their values."""
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    if value is _MISSING:
        raise KeyError(f"the config has no {key!r}")
    return value.value if isinstance(value, Enum) else value


class DELFNet(ResNetArchitecture, nn.Module):
    """DELF: ResNet to ``layer3`` + attention head (module names as the DELF extractor's checkpoints).

    Args:
        depth: ResNet depth (50 or 101).
        stride_in: ``"3x3"`` (torchvision) or ``"1x1"`` (TF slim), see `delfi.models.resnet`.
        extra_pool: TF slim's stride-2 subsampling of ``layer3`` (stride 32).
        attention_batch_norm: BN in the attention head (TF; DeLF-pytorch has none).
        pool: ``"mean"`` (TF) or ``"sum"`` (DeLF-pytorch) reduction of ``attended``.
    """

    family = "delf"
    config_keys: tuple[str, ...] = ("depth", "stride_in", "extra_pool", "attention_batch_norm")
    outputs: tuple[str, ...] = ("features", "attention_logits", "attention", "attended")

    def __init__(self, depth: int = 50, stride_in: str = "3x3", extra_pool: bool = False,
                 attention_batch_norm: bool = True, *, pool: str = "mean") -> None:
        super().__init__()
        self.depth, self.stride_in, self.extra_pool = int(depth), _stride_in(stride_in), bool(extra_pool)
        self.attention_batch_norm, self.pool = bool(attention_batch_norm), pool
        self.backbone = ResNet(self.depth, self.stride_in, num_classes=None)
        self._build_heads()

    def _build_heads(self) -> None:
        self.attention = AttentionHead(1024, 512, batch_norm=self.attention_batch_norm)

    def local_receptive_field(self) -> ReceptiveField:
        """Receptive field of a ``layer3`` cell (with the extra pool when set)."""
        return receptive_field(self.backbone, "layer3", extra_pool=TF_SUBSAMPLE_POOL if self.extra_pool else None)

    def layer3(self, features: Mapping[str, Tensor]) -> Tensor:
        """``layer3`` of `ResNet.forward_features`'s output, subsampled with ``extra_pool``."""
        x = features["layer3"]
        return x[:, :, ::2, ::2] if self.extra_pool else x

    def forward_features(self, images: Tensor, layers: tuple[str, ...] = ("layer3",)) -> dict[str, Tensor]:
        """The backbone's feature maps (`ResNet.forward_features`)."""
        return self.backbone.forward_features(images, layers=layers)

    def attend(self, features: Tensor) -> dict[str, Tensor]:
        """``attention_logits``, ``attention`` and ``attended`` of a feature map (B, 1024, h, w)."""
        logits = self.attention.logits(features)
        attention = F.softplus(logits)
        return {"attention_logits": logits, "attention": attention,
                "attended": attention_pool(features, attention, reduce=self.pool)}  # fmt: skip

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.layer3(self.forward_features(images, ("layer3",)))
        return {"features": features, **self.attend(features)}


class DELGNet(DELFNet):
    """DELG: one ResNet, global GeM + whitening on ``layer4``, local autoencoder + attention on ``layer3``.

    Args (besides `DELFNet`'s):
        local_dim: autoencoder code size (or the 1x1 reduction's without autoencoder).
        autoencoder: False: DELG-pytorch style, attention on ``layer3`` and a 1x1 reduction.
        global_dim: output size of the whitening FC.
        gem_p, gem_learnable: the GeM exponent (its value is in the state dict) and whether it trains.
        local_stop_gradient: the local branch sees ``layer3.detach()`` (TF DELG).
    """

    family = "delg"
    config_keys = DELFNet.config_keys + ("autoencoder", "local_dim", "global_dim", "gem_learnable")
    outputs = ("features", "local", "reconstruction", "attention_logits", "attention", "attended", "global")

    def __init__(self, depth: int = 50, stride_in: str = "3x3", extra_pool: bool = False,
                 attention_batch_norm: bool = True, autoencoder: bool = True, local_dim: int = 128,
                 global_dim: int = 2048, gem_learnable: bool = False, *, gem_p: float = 3.0,
                 local_stop_gradient: bool = True, pool: str = "mean") -> None:
        self.autoencoder_enabled, self.local_dim, self.global_dim = bool(autoencoder), int(local_dim), int(global_dim)
        self.gem_p, self.gem_learnable = float(gem_p), bool(gem_learnable)
        self.local_stop_gradient = bool(local_stop_gradient)
        super().__init__(depth, stride_in, extra_pool, attention_batch_norm, pool=pool)

    def _build_heads(self) -> None:  # registration order = the DELG extractor's state dict order
        if self.autoencoder_enabled:
            self.autoencoder = Autoencoder(1024, self.local_dim)
        else:
            self.reduction = nn.Conv2d(1024, self.local_dim, kernel_size=1)
        self.attention = AttentionHead(1024, 512, batch_norm=self.attention_batch_norm)
        self.gem = GeM(self.gem_p, learnable=self.gem_learnable)
        self.whitening = Whitening(2048, self.global_dim, bias=True, normalize=True)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "DELGNet":
        kwargs.setdefault("gem_p", float(_setting(config, "gem_p", 3.0)))
        return super().from_config(config, **kwargs)

    def _architecture_value(self, key: str) -> Any:
        return self.autoencoder_enabled if key == "autoencoder" else getattr(self, key)

    def local_branch(self, layer3: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(local descriptor map, reconstruction or None, the map the attention runs on)."""
        if self.autoencoder_enabled:
            code, reconstruction = self.autoencoder(layer3)
            return code, reconstruction, reconstruction
        return self.reduction(layer3), None, layer3

    def local_outputs(self, layer3: Tensor) -> tuple[Tensor, Tensor]:
        """(attention (B, 1, h, w), local descriptor map (B, local_dim, h, w)) from ``layer3``."""
        code, _, attended_map = self.local_branch(layer3)
        return self.attention(attended_map), code

    def global_descriptor(self, layer4: Tensor) -> Tensor:
        """(B, global_dim) L2-normalised global descriptors from ``layer4`` (B, 2048, h, w)."""
        return self.whitening(self.gem(layer4))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        maps = self.forward_features(images, ("layer3", "layer4"))
        features = self.layer3(maps)
        local_in = features.detach() if self.local_stop_gradient else features
        code, reconstruction, attended_map = self.local_branch(local_in)
        out = {"features": features, "local": code}
        if reconstruction is not None:
            out["reconstruction"] = reconstruction
        out.update(self.attend(attended_map))
        out["global"] = self.global_descriptor(maps["layer4"])
        return out


NETWORKS: dict[str, type[nn.Module]] = {"r2d2": R2D2Net, "delf": DELFNet, "delg": DELGNet, "multilevel": MultiLevelNet}
"""The network class of each family."""


def network_class(family: str) -> type[nn.Module]:
    if family not in NETWORKS:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[family]


def build_network(family: str, config: Any) -> nn.Module:
    """The family's network from an extractor config (dataclass or dict; e.g. a checkpoint's ``config``)."""
    return network_class(family).from_config(config)  # type: ignore[attr-defined]


def same_setting(family: str, key: str, a: Any, b: Any) -> bool:
    """Whether two values of an architecture key mean the same network (``"torchvision"`` = ``"3x3"``)."""
    if key == "stride_in":
        try:
            return _stride_in(a) == _stride_in(b)
        except ValueError:
            return False
    a = a.value if isinstance(a, Enum) else a
    b = b.value if isinstance(b, Enum) else b
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b
