"""Score maps of one photo: the network's dense repeatability and reliability next to the image.

`dense_maps` runs an R2D2-family network once at the image's own size; `plot_score_maps` draws any
``(reliability, repeatability)`` pair of (H, W) maps (tensors or arrays, any leading 1-sized dims),
so the call site does not depend on how a model exposes its network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dense_maps", "plot_score_maps"]


def _network(model: Any):
    """The model's dense network, ``model.network`` (R2D2; ``model.net`` is an alias of it)."""
    net = getattr(model, "network", None)
    if net is None or not callable(net):
        raise AttributeError(f"{type(model).__name__} exposes no dense network (.network)")
    return net


def dense_maps(model: Any, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reliability, repeatability), each (H, W) float32, of an (H, W, 3) uint8 image at full size."""
    import torch

    image = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    net = _network(model)
    modes = [(m, m.training) for m in net.modules()] if hasattr(net, "modules") else []
    try:
        if hasattr(net, "eval"):
            net.eval()  # a network being trained: no batch statistics, no running-stat updates
        with torch.inference_mode():
            x = model.normalise(image) if hasattr(model, "normalise") else image[None]
            out = net(x)
    finally:
        for module, training in modes:
            module.training = training
    return _plane(out["reliability"]), _plane(out["repeatability"])


def _plane(value: Any) -> np.ndarray:
    array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"a score map must be (H, W) after squeezing, got shape {array.shape}")
    return array.astype(np.float32)


def plot_score_maps(image: np.ndarray, reliability: Any, repeatability: Any, out: str | os.PathLike,
                    *, title: str = "") -> Path:
    """Save image | repeatability | reliability side by side (each map with its colorbar) to ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reliability, repeatability = _plane(reliability), _plane(repeatability)
    height, width = image.shape[:2]
    panel_w = 4.2
    fig = Figure(figsize=(3 * panel_w, panel_w * height / width + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image")
    for ax, values, name in ((axes[1], repeatability, "repeatability"), (axes[2], reliability, "reliability")):
        shown = ax.imshow(values, cmap="magma", vmin=0.0, vmax=max(float(values.max()), 1e-6),
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_title(f"{name} (max {float(values.max()):.2f}, mean {float(values.mean()):.2f})")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
