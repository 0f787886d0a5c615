"""The multi-level attention network (ALGORITHMS.md section 4): a frozen ResNet whose ``layer2``,
``layer3`` and ``layer4`` activations are each compressed to a small descriptor map and scored by
their own attention head.

Per level l (``layer2`` 512 channels at stride 8, ``layer3`` 1024 at 16, ``layer4`` 2048 at 32 for a
ResNet-50):

- an encoder (1x1 conv C_l -> ``code_dim``, no activation) whose code is the level's local
  descriptor, with a decoder (1x1 conv back to C_l + ReLU) that only training uses (the
  reconstruction loss of stage 1: `Autoencoder`, as DELG's);
- the code is resampled to the **layer2 grid** (every level then has the same cells), and an
  attention head (1x1 conv code_dim -> 512, BN, ReLU, 1x1 -> 1, softplus) scores it.

**Resampling** is geometric: cell i of the layer2 grid has its receptive-field centre at pixel
``c = s2 * i + o2`` (`delfi.extract.receptive`); level l's cell k at ``s_l * k + o_l``; the code is
sampled bilinearly at ``k = (c - o_l) / s_l`` (border values beyond the edge), so a keypoint on any
level sits where its feature looks. The seed upsamples by 2 and 4 with bilinear interpolation,
which shifts the deeper levels by a few pixels. The encoder is linear and bilinear weights sum to
one, so encoding at the level's own resolution and resampling the 64-channel code equals encoding
the resampled activations, at a fraction of the cost.

``first_stride1``: the first convolution has stride 1 (every map twice as fine; the receptive
fields follow from the network).

Outputs of `forward` (B images (B, 3, H, W), normalised for the backbone; h x w = the layer2 grid):

``features``        tuple over levels of (B, C_l, h_l, w_l): the backbone activations (frozen).
``reconstruction``  tuple of (B, C_l, h_l, w_l): the decoders' outputs (only with ``reconstruct``).
``encoded``         tuple of (B, code_dim, h, w): the descriptor maps (not normalised).
``attention``       tuple of (B, 1, h, w): the scores, >= 0.

The backbone is always frozen (no gradient, batch norm in eval mode); which heads train is the
training module's choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from delfi.extract.receptive import ReceptiveField, receptive_field
from delfi.models.architecture import ResNetArchitecture
from delfi.models.heads import AttentionHead, Autoencoder
from delfi.models.resnet import ResNet

__all__ = ["LEVELS", "MultiLevelNet", "resample_to_grid"]

LEVELS: tuple[str, ...] = ("layer2", "layer3", "layer4")
CHANNELS = {"layer2": 512, "layer3": 1024, "layer4": 2048}


def resample_to_grid(x: Tensor, source: ReceptiveField, target: ReceptiveField, size: tuple[int, int]) -> Tensor:
    """Bilinear resampling of a map (B, C, h_s, w_s) with receptive field ``source`` onto the grid
    (h, w) = ``size`` of receptive field ``target``, matching receptive-field centres.

    Returns:
        (B, C, h, w).
    """
    h, w = size
    if x.shape[-2:] == (h, w) and source == target:
        return x

    def coordinates(n_out: int, n_in: int) -> Tensor:
        centre = torch.arange(n_out, device=x.device, dtype=torch.float32) * target.stride + _offset(target)
        k = (centre - _offset(source)) / source.stride
        return 2 * k / max(n_in - 1, 1) - 1 if n_in > 1 else torch.zeros_like(k)

    gy = coordinates(h, x.shape[-2])
    gx = coordinates(w, x.shape[-1])
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    grid = grid.to(x.dtype).unsqueeze(0).expand(x.shape[0], h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _offset(rf: ReceptiveField) -> float:
    """Pixel centre of cell 0 of a receptive field."""
    return -rf.padding + (rf.size - 1) / 2


class MultiLevelNet(ResNetArchitecture, nn.Module):
    """Frozen ResNet + per-level encoder / decoder + per-level attention.

    Args:
        depth: ResNet depth (50 or 101).
        stride_in: ``"3x3"`` (torchvision) or ``"1x1"``.
        code_dim: descriptor size of every level (the seed's 64).
        first_stride1: the first convolution with stride 1 (all maps twice as fine).
        attention_hidden: hidden channels of the attention heads (512).
    """

    family = "multilevel"
    config_keys: tuple[str, ...] = ("depth", "stride_in", "code_dim", "first_stride1")
    outputs: tuple[str, ...] = ("features", "reconstruction", "encoded", "attention")

    def __init__(self, depth: int = 50, stride_in: str = "3x3", code_dim: int = 64, first_stride1: bool = False,
                 *, attention_hidden: int = 512) -> None:
        super().__init__()
        from delfi.models.networks import _stride_in

        self.depth, self.stride_in, self.code_dim = int(depth), _stride_in(stride_in), int(code_dim)
        self.first_stride1 = bool(first_stride1)
        self.backbone = ResNet(self.depth, self.stride_in, num_classes=None)
        if self.first_stride1:
            self.backbone.conv1.stride = (1, 1)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.encoders = nn.ModuleList(Autoencoder(CHANNELS[name], self.code_dim) for name in LEVELS)
        self.attentions = nn.ModuleList(AttentionHead(self.code_dim, attention_hidden, batch_norm=True) for _ in LEVELS)
        self._fields = {name: receptive_field(self.backbone, name) for name in LEVELS}

    def train(self, mode: bool = True) -> "MultiLevelNet":
        """Heads follow ``mode``; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    # --- geometry ---------------------------------------------------------------------------------

    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """The receptive field of each level's own map (computed from the backbone)."""
        return dict(self._fields)

    @property
    def grid_field(self) -> ReceptiveField:
        """The receptive field whose grid every level's output map uses (``layer2``'s)."""
        return self._fields[LEVELS[0]]

    # --- forward ----------------------------------------------------------------------------------

    def backbone_features(self, images: Tensor) -> tuple[Tensor, ...]:
        """The frozen activations (B, C_l, h_l, w_l) of every level, without gradient."""
        with torch.no_grad():
            maps = self.backbone.forward_features(images, layers=LEVELS)
        return tuple(maps[name] for name in LEVELS)

    def encode(self, features: tuple[Tensor, ...], size: tuple[int, int]) -> tuple[Tensor, ...]:
        """Descriptor maps (B, code_dim, h, w) on the layer2 grid ``size`` from the activations."""
        grid = self.grid_field
        return tuple(
            resample_to_grid(encoder.encode(x), self._fields[name], grid, size)
            for name, encoder, x in zip(LEVELS, self.encoders, features)
        )

    def attend(self, encoded: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Attention maps (B, 1, h, w) >= 0 of the descriptor maps."""
        return tuple(head(code) for head, code in zip(self.attentions, encoded))

    def dense_maps(self, images: Tensor) -> dict[str, tuple[Tensor, ...]]:
        """``encoded`` and ``attention`` only (what extraction needs)."""
        features = self.backbone_features(images)
        encoded = self.encode(features, tuple(features[0].shape[-2:]))
        return {"encoded": encoded, "attention": self.attend(encoded)}

    def forward(self, images: Tensor, reconstruct: bool = True) -> dict[str, tuple[Tensor, ...]]:
        features = self.backbone_features(images)
        encoded = self.encode(features, tuple(features[0].shape[-2:]))
        out: dict[str, tuple[Tensor, ...]] = {"features": features, "encoded": encoded, "attention": self.attend(encoded)}
        if reconstruct:
            out["reconstruction"] = tuple(enc.decode(enc.encode(x)) for enc, x in zip(self.encoders, features))
        return out
