"""Fast, memory-bounded inference for R2D2 networks on one pyramid level.

Three independent speed-ups, each an option, all exact up to float rounding:
- batch-norm folded into the preceding conv (eval mode BN is a per-channel affine map);
- channels-last memory layout, where oneDNN runs dilated convolutions far faster;
- horizontal strips with a halo of the network's receptive radius, so peak memory is bounded by
  ``tile_pixels`` instead of the image size. Detection (3x3 local maxima) and the descriptor
  gather happen per strip, so the dense 128-channel map of a whole level never exists.
bfloat16 runs the convolution body in bfloat16 (heads and descriptors stay float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from delfi.extract.detect import r2d2_keypoint_mask
from delfi.models.l2net import R2D2Net, receptive_radius
from delfi.models.modes import evaluating


@dataclass
class LevelDetections:
    """Keypoints found on one pyramid level (coordinates are level pixel indices).

    Attributes:
        x, y: (N,) int64 column / row indices.
        reliability, repeatability: (N,) float32 confidences at those pixels.
        descriptors: (N, dim) float32 L2-normalised descriptors.
    """

    x: Tensor
    y: Tensor
    reliability: Tensor
    repeatability: Tensor
    descriptors: Tensor


@dataclass
class _FusedLayer:
    weight: Tensor
    bias: Tensor
    padding: int
    dilation: int
    relu: bool
    pool: int


class L2NetInference:
    """Runs an `R2D2Net` level by level, with the speed options above.

    Args:
        net: the network (its weights are read at construction when fused: rebuild after they change,
            as `delfi.models.r2d2.R2D2.runner` does). Its mode is left alone: `detect` runs it in
            eval mode and gives every submodule its previous mode back.
        fuse_batchnorm: fold BN into convs.
        channels_last: use the channels-last layout.
        precision: "float32" or "bfloat16" for the convolution body.
        tile_pixels: strip size budget in pixels (0 disables tiling).
    """

    def __init__(
        self,
        net: R2D2Net,
        *,
        fuse_batchnorm: bool = True,
        channels_last: bool = True,
        precision: str = "float32",
        tile_pixels: int = 0,
    ) -> None:
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
        self.net = net
        self.fuse = fuse_batchnorm or precision == "bfloat16"
        self.channels_last = channels_last
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.tile_pixels = tile_pixels
        self.layers = self._fold() if self.fuse else []
        fast = net.arch == "fast_quad_l2net"
        # Halo of exact tiling, plus one row for the 3x3 local-maximum test. The fast variant pools
        # by 2 then upsamples: its radius in input pixels is bounded generously and crops start on
        # even rows so the pooling grid is unchanged.
        self.halo = (64 if fast else receptive_radius(net.specs)) + 1
        self.align = 2 if fast else 1

    def _fold(self) -> list[_FusedLayer]:
        layers, convs = [], [m for m in self.net.ops if isinstance(m, torch.nn.Conv2d)]
        norms = iter(m for m in self.net.ops if isinstance(m, torch.nn.BatchNorm2d))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for spec, conv in zip(self.net.specs, convs):
            weight, bias = conv.weight.detach().double(), conv.bias.detach().double()
            if spec.batch_norm:
                bn = next(norms)
                inv_std = (bn.running_var.double() + bn.eps).rsqrt()
                weight = weight * inv_std[:, None, None, None]
                bias = (bias - bn.running_mean.double()) * inv_std
            layers.append(
                _FusedLayer(
                    weight.to(self.dtype).contiguous(memory_format=memory_format),
                    bias.to(self.dtype),
                    spec.padding,
                    spec.dilation,
                    spec.relu,
                    spec.pool_after,
                )
            )
        return layers

    def body(self, x: Tensor) -> Tensor:
        """Raw descriptor map: (1, 3, h, w) float32 -> (1, dim, h, w) float32."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.fuse:
            return self.net.features(x)
        x = x.to(self.dtype)
        for layer in self.layers:
            x = F.conv2d(x, layer.weight, layer.bias, padding=layer.padding, dilation=layer.dilation)
            if layer.relu:
                x = F.relu_(x)
            if layer.pool > 1:
                x = F.max_pool2d(x, layer.pool)
        if self.net.arch == "fast_quad_l2net":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x.float()

    def confidences(self, raw: Tensor, rows: int = 64) -> tuple[Tensor, Tensor]:
        """(reliability, repeatability), each (1, 1, h, w), from the raw map.

        Computed ``rows`` rows at a time: the heads square the 128-channel map, and a full-size
        temporary would raise peak memory by a third.
        """
        parts = [self.net.confidences(raw[:, :, r : r + rows]) for r in range(0, raw.shape[-2], rows)]
        return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)

    @torch.inference_mode()
    def detect(self, image: Tensor, reliability_threshold: float, repeatability_threshold: float) -> LevelDetections:
        """Detect and describe keypoints on one level.

        Args:
            image: (1, 3, h, w) normalised level image.

        Returns:
            `LevelDetections` in row-major order of (y, x).
        """
        with evaluating(self.net):
            return self._detect(image, reliability_threshold, repeatability_threshold)

    def _detect(self, image: Tensor, reliability_threshold: float, repeatability_threshold: float) -> LevelDetections:
        height, width = image.shape[-2:]
        strips = 1 if self.tile_pixels <= 0 else -(-height * width // self.tile_pixels)
        if strips <= 1:
            return self._strip(image, 0, 0, height, reliability_threshold, repeatability_threshold)
        rows = -(-height // strips)  # balanced strips: the halo overhead is the same for each
        parts = []
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            c0 = max(0, r0 - self.halo)
            c0 -= c0 % self.align
            c1 = min(height, r1 + self.halo)
            crop = image[:, :, c0:c1]
            parts.append(self._strip(crop, c0, r0, r1, reliability_threshold, repeatability_threshold))
        return LevelDetections(*(torch.cat([getattr(p, f) for p in parts]) for f in LevelDetections.__dataclass_fields__))

    def _strip(self, crop: Tensor, c0: int, r0: int, r1: int, rel_thr: float, rep_thr: float) -> LevelDetections:
        """Detections in rows [r0, r1) of the level, from ``crop`` = level rows [c0, c0 + crop height)."""
        raw = self.body(crop)
        reliability, repeatability = self.confidences(raw)
        c1 = c0 + crop.shape[-2]
        e0, e1 = max(r0 - 1, c0), min(r1 + 1, c1)  # rows needed by the 3x3 maximum test
        mask = r2d2_keypoint_mask(
            reliability[:, :, e0 - c0 : e1 - c0], repeatability[:, :, e0 - c0 : e1 - c0], rel_thr, rep_thr
        )[0, 0, r0 - e0 : r1 - e0]
        y, x = mask.nonzero(as_tuple=True)
        yc = y + (r0 - c0)
        descriptors = F.normalize(raw[0, :, yc, x].t(), p=2, dim=1)
        return LevelDetections(x, y + r0, reliability[0, 0, yc, x], repeatability[0, 0, yc, x], descriptors)
