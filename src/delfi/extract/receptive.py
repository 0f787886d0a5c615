"""Receptive fields of convolutional feature maps, computed from the network itself.

A feature map is described by a `ReceptiveField` ``(size r, stride s, padding p)``: its cell
``(i, j)`` (row i, column j) sees the input pixels of the box

    ``[s*j - p, s*i - p, s*j - p + r - 1, s*i - p + r - 1]``   (x0, y0, x1, y1, inclusive)

whose centre ``(s*j - p + (r - 1) / 2, s*i - p + (r - 1) / 2)`` is in delfi's pixel convention (the
centre of the top-left pixel is (0, 0)). Parts of the box may fall outside the image (zero padding).

The triple is composed layer by layer along the network's main path, starting from a single pixel
``(1, 1, 0)``. A layer with kernel k, stride t, padding q and dilation d (effective kernel
``k_eff = d * (k - 1) + 1``) maps ``(r, s, p)`` to ``(r + (k_eff - 1) * s, s * t, p + q * s)``.

Reference values (checked by the tests): torchvision-style ResNet-50 (``stride_in="3x3"``) layer3
267 / 16 / 133, layer4 427 / 32 / 213; ``stride_in="1x1"`` layer3 291 / 16 / 145, and with TF DELF's
extra 1x1 / stride-2 subsampling max-pool (`with_extra_pool`) 291 / 32 / 145, the value published for
TF's ``resnet_v1_50/block3`` (slim's own layout, stride on the 3x3 conv of a stage's *last* block,
gives the same triple).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "ReceptiveField",
    "LayerGeometry",
    "IDENTITY",
    "TF_SUBSAMPLE_POOL",
    "compose",
    "layer_geometry",
    "trace_layers",
    "receptive_field",
    "with_extra_pool",
    "rf_boxes",
    "rf_centres",
]


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a feature map: size ``r``, stride ``s`` and padding ``p`` in input pixels.

    Cell (i, j) covers ``x in [s*j - p, s*j - p + r - 1]``, ``y in [s*i - p, s*i - p + r - 1]``.
    """

    size: int
    stride: int
    padding: int

    def then(self, layer: LayerGeometry) -> ReceptiveField:
        """The receptive field after applying `layer` to this feature map."""
        return ReceptiveField(
            size=self.size + (layer.effective_kernel - 1) * self.stride,
            stride=self.stride * layer.stride,
            padding=self.padding + layer.padding * self.stride,
        )

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of cell (i, j), inclusive, in input pixels."""
        x0, y0 = self.stride * j - self.padding, self.stride * i - self.padding
        return x0, y0, x0 + self.size - 1, y0 + self.size - 1

    def centre(self, i: int, j: int) -> tuple[float, float]:
        """(x, y) centre of cell (i, j)'s box in input pixels."""
        half = (self.size - 1) / 2
        return self.stride * j - self.padding + half, self.stride * i - self.padding + half


IDENTITY = ReceptiveField(1, 1, 0)
"""The receptive field of the input itself (one pixel)."""


@dataclass(frozen=True)
class LayerGeometry:
    """The spatial geometry of one conv / pool layer (square kernels)."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    @property
    def effective_kernel(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


TF_SUBSAMPLE_POOL = LayerGeometry(kernel=1, stride=2)
"""TF DELF's extra ``MaxPooling2D((1, 1), strides=(2, 2))`` after block3: pure subsampling (keeps
every other cell), so it doubles the stride and changes neither size nor padding."""


def compose(layers: Iterable[LayerGeometry | nn.Module], start: ReceptiveField = IDENTITY) -> ReceptiveField:
    """Compose layers (geometries or Conv2d / MaxPool2d / AvgPool2d modules) in forward order."""
    rf = start
    for layer in layers:
        rf = rf.then(layer if isinstance(layer, LayerGeometry) else layer_geometry(layer))
    return rf


def _single(value: int | Sequence[int], what: str, module: nn.Module) -> int:
    if isinstance(value, int):
        return value
    values = tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"{what}={values} of {module} is not square; only square layers are supported")
    return int(values[0])


_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def layer_geometry(module: nn.Module) -> LayerGeometry:
    """The `LayerGeometry` of a Conv2d, MaxPool2d or AvgPool2d."""
    if not isinstance(module, _SPATIAL):
        raise TypeError(f"no receptive-field rule for {type(module).__name__}; expected one of "
                        f"{', '.join(t.__name__ for t in _SPATIAL)}")
    kernel = _single(module.kernel_size, "kernel_size", module)
    stride = _single(module.stride if module.stride is not None else kernel, "stride", module)
    dilation = _single(getattr(module, "dilation", 1), "dilation", module)
    padding = module.padding
    if isinstance(padding, str):  # Conv2d "same" (stride 1 only) / "valid"
        padding = 0 if padding == "valid" else (dilation * (kernel - 1)) // 2
    return LayerGeometry(kernel, stride, _single(padding, "padding", module), dilation)


class _StopForward(Exception):
    """Raised by a hook to end a tracing forward pass once the requested module has run."""


def trace_layers(
    module: nn.Module,
    upto: str,
    *,
    input_size: tuple[int, int] = (64, 64),
    in_channels: int = 3,
    skip: str = r"(^|\.)downsample(\.|$)",
    forward: str = "forward",
) -> list[tuple[str, LayerGeometry]]:
    """The Conv2d / MaxPool2d / AvgPool2d layers run before module `upto` finishes, in execution order.

    A forward pass (``no_grad``, eval mode, restored afterwards) of a ``(1, in_channels, *input_size)``
    zero input records each spatial layer as it executes; layers whose qualified name matches the
    regular expression `skip` (by default ResNet's ``downsample`` shortcuts) are left out, so the
    result is the main path. Every other layer (BN, activations, additions) is assumed pointwise.

    Returns:
        ``[(qualified name, geometry), ...]`` in execution order.
    """
    modules = dict(module.named_modules())
    if upto not in modules or upto == "":
        raise ValueError(f"{type(module).__name__} has no submodule named {upto!r}")
    skip_re = re.compile(skip) if skip else None
    found: list[tuple[str, LayerGeometry]] = []
    handles = []

    def record(name: str):
        def hook(mod: nn.Module, args, output) -> None:
            found.append((name, layer_geometry(mod)))
        return hook

    def stop(mod: nn.Module, args, output) -> None:
        raise _StopForward

    for name, mod in modules.items():
        if isinstance(mod, _SPATIAL) and not (skip_re and skip_re.search(name)):
            handles.append(mod.register_forward_hook(record(name)))
    handles.append(modules[upto].register_forward_hook(stop))  # registered last: fires last

    param = next(iter(module.parameters()), None)
    x = torch.zeros(1, in_channels, *input_size,
                    dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            getattr(module, forward)(x)
    except _StopForward:
        pass
    else:
        raise RuntimeError(f"module {upto!r} never ran during {type(module).__name__}.{forward}")
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return found


def receptive_field(
    module_or_layers: nn.Module | Iterable[LayerGeometry | nn.Module],
    upto: str | None = None,
    *,
    extra_pool: LayerGeometry | None = None,
) -> ReceptiveField:
    """Receptive field of a network's feature map, composed from its layers.

    Args:
        module_or_layers: a module that defines ``receptive_layers(upto)`` (delfi's `ResNet`: an
            explicit walk of the main path), any other module (traced with `trace_layers`, `upto`
            naming a submodule, ``downsample`` branches skipped), or a sequence of layers
            (`LayerGeometry` or Conv2d / pool modules) in forward order.
        upto: the feature map: a stage name (``"layer3"``) or submodule name; ignored for a sequence.
        extra_pool: a layer applied after `upto`, e.g. `TF_SUBSAMPLE_POOL` (see `with_extra_pool`).
    """
    if isinstance(module_or_layers, nn.Module):
        if upto is None:
            raise ValueError("receptive_field of a module needs `upto`, the name of the feature map")
        walk = getattr(module_or_layers, "receptive_layers", None)
        if callable(walk):
            layers: list = list(walk(upto))
        else:
            layers = [g for _, g in trace_layers(module_or_layers, upto)]
    else:
        layers = list(module_or_layers)
    rf = compose(layers)
    return rf if extra_pool is None else rf.then(extra_pool)


def with_extra_pool(rf: ReceptiveField, kernel: int = 1, stride: int = 2, padding: int = 0) -> ReceptiveField:
    """`rf` followed by a pool of the given geometry.

    The default (kernel 1, stride 2, padding 0) is TF DELF's subsampling max-pool after block3: it
    turns ``stride_in="1x1"`` layer3 (291 / 16 / 145) into the published 291 / 32 / 145. A k x k pool
    would instead add ``(k - 1) * 16`` to the size (e.g. 2 x 2 / 2 gives 307 / 32 / 145).
    """
    return rf.then(LayerGeometry(kernel, stride, padding))


def _grid(rf: ReceptiveField, height: int, width: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Top-left corners (x0, y0) of every cell, row-major: two (H*W,) tensors."""
    if height < 0 or width < 0:
        raise ValueError(f"feature map size must be non-negative, got {height} x {width}")
    ys = torch.arange(height, dtype=dtype, device=device) * rf.stride - rf.padding
    xs = torch.arange(width, dtype=dtype, device=device) * rf.stride - rf.padding
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")
    return x0.reshape(-1), y0.reshape(-1)


def rf_boxes(
    rf: ReceptiveField, height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Receptive boxes of an ``height x width`` feature map.

    Returns:
        (H*W, 4) ``(x0, y0, x1, y1)`` inclusive input-pixel bounds, row-major over the grid (cell
        (i, j) is row ``i * width + j``); not clipped to the image.
    """
    x0, y0 = _grid(rf, height, width, dtype, device)
    extent = rf.size - 1
    return torch.stack([x0, y0, x0 + extent, y0 + extent], dim=1)


def rf_centres(
    rf: ReceptiveField, height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Receptive-field centres of an ``height x width`` feature map.

    Returns:
        (H*W, 2) ``(x, y)`` with ``x = s*j - p + (r - 1) / 2`` (delfi's convention: the centre of the
        top-left pixel is (0, 0)), row-major over the grid.
    """
    x0, y0 = _grid(rf, height, width, dtype, device)
    half = (rf.size - 1) / 2
    return torch.stack([x0 + half, y0 + half], dim=1)
