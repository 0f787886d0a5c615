"""Pictures of attention: one overlay per pyramid scale (DELF / DELG) or per network level (multi-level
attention), then the selected keypoints.

Rendered with matplotlib's Agg canvas (never pyplot), laid out like `delfi.viz.matches`: sizes are
pixels at 100 dpi, the whole figure at most about 1600 px wide, and ``dpi=200`` renders the same
picture twice as large. Images are drawn in delfi's pixel convention (the centre of the top-left
pixel is (0, 0); ``extent=(-0.5, W - 0.5, H - 0.5, -0.5)``), so keypoints land on the pixel they name.

Geometry of the overlay (an approximation): an ``(h, w)`` attention map is stretched over the whole
image, i.e. its extent is also ``(-0.5, W - 0.5, H - 0.5, -0.5)``, so cell ``(i, j)`` is drawn over
``x in [j * W / w - 0.5, (j + 1) * W / w - 0.5]``, ``y in [i * H / h - 0.5, (i + 1) * H / h - 0.5]``
and then bilinearly upsampled. The network's cell really looks at a larger, padded receptive field
whose centre is ``stride * j - padding + (size - 1) / 2`` pixels of the resized image (a few pixels
off the stretched position, and the map's last row / column may cover slightly more or less than the
image). For the exact geometry use `delfi.extract.receptive` (`rf_centres`, `rf_boxes`); for a
picture meant to show *where* the attention is, the stretched map is accurate to about one cell.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
import numpy as np
from torch import Tensor

try:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Colormap, Normalize
except ImportError as error:  # matplotlib is the optional "viz" extra
    raise ImportError("delfi.viz needs matplotlib: pip install 'delfi[viz]'") from error

from delfi.types import Features
from delfi.viz.matches import (
    BASE_DPI,
    CELL_GAP,
    COLORBAR_BAND,
    KEYPOINT_CMAP,
    MAX_HEIGHT,
    MAX_WIDTH,
    PAD,
    PANEL_FONTSIZE,
    PANEL_LINE,
    ROW_GAP,
    SEP,
    TITLE_FONTSIZE,
    TITLE_LINE,
    ImageLike,
    _add_axes,
    _add_colorbar,
    _as_rgb,
    _finish,
    _fit_scale,
    _new_figure,
    _numpy,
    _value_norm,
)

__all__ = ["plot_attention"]

MIN_PANEL_WIDTH = 320  # small images are enlarged up to this display width (px at 100 dpi)
MIN_FIGURE_WIDTH = 440
KEYPOINTS_TITLE = "selected keypoints"
UNTRAINED_CAPTION = "UNTRAINED: random weights (these maps mean nothing)"
UNTRAINED_COLOR = "#d62728"
MARKER_RANGES = ((300, (3.0, 12.0)), (1500, (2.5, 8.0)), (None, (2.0, 5.0)))
"""Marker diameters in points (smallest to largest keypoint scale) by how many keypoints are drawn,
for a panel of about 500 x 500 px; multiplied by sqrt(panel area) / 500 (clipped to 0.6..1.5)."""


# ----------------------------------------------------------------------------- inputs


def _as_map(value: Tensor | np.ndarray, index: int) -> np.ndarray:
    """An ``(h, w)`` float64 attention map (leading singleton dims dropped)."""
    arr = _numpy(value).astype(np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"levels[{index}]: an attention map must be (h, w), got shape {_numpy(value).shape}")
    return arr


def _as_levels(levels: Sequence[tuple[float | str, Tensor | np.ndarray]]) -> list[tuple[float | str, np.ndarray]]:
    """(scale or label, map) pairs: a number is a pyramid scale, a string names the panel (e.g. a
    network level, ``"layer3"``)."""
    out = []
    for i, level in enumerate(levels):
        try:
            scale, amap = level
            scale = scale if isinstance(scale, str) else float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"levels[{i}] must be a (scale or label, attention map) pair") from None
        out.append((scale, _as_map(amap, i)))
    return out


def _shared_norm(maps: Sequence[np.ndarray]) -> Normalize:
    """One colour scale for every panel: 0 (or the lowest value, if negative) to the highest value."""
    finite = [m[np.isfinite(m)] for m in maps]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = min(0.0, float(finite.min())), float(finite.max())
    return Normalize(lo, hi if hi > lo else lo + 1.0)


def _display_image(img: np.ndarray, width_px: float, height_px: float) -> np.ndarray:
    """``img`` shrunk (never enlarged) to about the pixel size it is shown at."""
    h, w = img.shape[:2]
    tw, th = max(1, math.ceil(width_px)), max(1, math.ceil(height_px))
    if tw >= w and th >= h:
        return img
    from PIL import Image

    small = Image.fromarray(img).resize((min(tw, w), min(th, h)), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(small)


# ----------------------------------------------------------------------------- text


def _format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1f}" if 100 <= abs(value) < 1e6 else f"{value:.4g}"


def _panel_title(scale: float | str, amap: np.ndarray) -> str:
    """``"scale 0.707 (max 312.4)"``, or ``"layer3 (max 2.1)"`` for a labelled panel."""
    finite = amap[np.isfinite(amap)]
    peak = float(finite.max()) if finite.size else float("nan")
    name = scale if isinstance(scale, str) else f"scale {scale:.3g}"
    return f"{name} (max {_format_value(peak)})"


def _keypoints_title(total: int, drawn: int) -> str:
    if drawn < total:
        return f"{KEYPOINTS_TITLE} ({total}{SEP}top {drawn} drawn)"
    return f"{KEYPOINTS_TITLE} ({total})"


def _marker_sizes(scales: np.ndarray | None, count: int, panel_px: float = 500.0) -> np.ndarray:
    """Scatter sizes (points^2): diameters spread over a `MARKER_RANGES` range by log(scale), the
    middle of the range without scales; smaller ranges for more points and smaller panels."""
    small, large = next(r for limit, r in MARKER_RANGES if limit is None or count <= limit)
    factor = float(np.clip(panel_px / 500.0, 0.6, 1.5))
    if scales is None or count == 0:
        return np.full(count, ((small + large) / 2 * factor) ** 2)
    logs = np.log(np.clip(np.nan_to_num(scales, nan=1.0), 1e-6, None))
    lo, hi = float(logs.min()), float(logs.max())
    t = np.full(count, 0.5) if hi - lo < 1e-9 else (logs - lo) / (hi - lo)
    return ((small + (large - small) * t) * factor) ** 2


# ----------------------------------------------------------------------------- drawing


def _show(ax, display: np.ndarray, size: tuple[int, int]) -> None:
    """The (possibly shrunk) image over the ORIGINAL image's pixel coordinates."""
    h, w = size
    ax.imshow(display, origin="upper", extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="antialiased",
              aspect="auto")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _overlay(ax, amap: np.ndarray, size: tuple[int, int], cmap: Colormap, norm: Normalize, alpha: float) -> None:
    """The map stretched over the whole image (see the module docstring), bilinear, alpha-blended."""
    h, w = size
    ax.imshow(np.ma.masked_invalid(amap), cmap=cmap, norm=norm, alpha=alpha, origin="upper",
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear", aspect="auto")


def _draw_keypoints(ax, features: Features, size: tuple[int, int], max_points: int | None, panel_px: float):
    """Top ``max_points`` keypoints by score, coloured by score; the title and the colour mapping."""
    h, w = size
    points = _numpy(features.keypoints).astype(np.float64).reshape(-1, 2)
    scores = _numpy(features.scores).astype(np.float64).reshape(-1)
    scales = None if features.scales is None else _numpy(features.scales).astype(np.float64).reshape(-1)
    fw, fh = features.image_size
    if fw > 0 and fh > 0 and (fw, fh) != (w, h):  # features of the original, a resized image shown
        points = (points + 0.5) * np.array([w / fw, h / fh]) - 0.5
    total = len(points)
    keep = np.argsort(-scores, kind="stable")
    if max_points is not None:
        keep = keep[: max(int(max_points), 0)]
    keep = keep[::-1]  # lowest first, so the best are drawn on top
    title = _keypoints_title(total, len(keep))
    if len(keep) == 0:
        return title, None
    values = scores[keep]
    norm, cmap = _value_norm(values), colormaps[KEYPOINT_CMAP]
    sizes = _marker_sizes(None if scales is None else scales[keep], len(keep), panel_px)
    ax.scatter(points[keep, 0], points[keep, 1], s=sizes, c=cmap(norm(np.nan_to_num(values, nan=norm.vmin))),
               edgecolors="black", linewidths=0.4 if len(keep) <= 300 else 0.25 if len(keep) <= 2000 else 0.0, zorder=3)
    return title, ScalarMappable(norm=norm, cmap=cmap)


def _colorbar_at(fig, mappable: ScalarMappable, label: str, left: float, top: float, width: float,
                 fig_w: float, fig_h: float) -> None:
    cax = fig.add_axes((left / fig_w, 1.0 - (top + 10) / fig_h, width / fig_w, 10 / fig_h))
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=8, length=2, pad=1)
    bar.outline.set_linewidth(0.5)
    fig.text((left - 8) / fig_w, 1.0 - (top + 5) / fig_h, label, ha="right", va="center", fontsize=8)


def _two_colorbars(fig, bars: list[tuple[ScalarMappable, str]], top: float, fig_w: float, fig_h: float) -> None:
    label_w, gap = 90.0, 36.0  # room left of each bar for its label; between the two
    bar_w = min(300.0, (fig_w - 2 * PAD - 2 * label_w - gap) / 2)
    x = (fig_w - (2 * (label_w + bar_w) + gap)) / 2
    for mappable, label in bars:
        _colorbar_at(fig, mappable, label, x + label_w, top, bar_w, fig_w, fig_h)
        x += label_w + bar_w + gap


# ----------------------------------------------------------------------------- public API


def plot_attention(
    image: ImageLike,
    levels: Sequence[tuple[float, Tensor | np.ndarray]],
    features: Features | None = None,
    *,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    columns: int = 4,
    alpha: float = 0.5,
    cmap: str | Colormap = "inferno",
    dpi: int = 100,
    max_points: int | None = 1000,
    untrained: bool = False,
) -> Path | np.ndarray:
    """Attention maps of an image pyramid over the image, one panel per scale, then the keypoints.

    Args:
        image: a file path, a ``(3, H, W)`` tensor in [0, 1] or an ``(H, W, 3)`` array (uint8, or
            float in [0, 1]); shrunk for display so the figure is at most about 1600 px wide.
        levels: per pyramid scale ``(scale, attention (h, w))``: raw non-negative attention scores
            (any range) at that scale's feature-map resolution. Each map is stretched over the
            whole image (an approximation, see the module docstring), bilinearly upsampled and
            alpha-blended. All panels share one colour scale, 0 to the highest value of any map
            (shown by a colorbar), so scales are comparable; a panel is titled
            ``"scale 0.707 (max 312.4)"`` with that map's own maximum.
        features: when given, a last panel "selected keypoints" shows ``features.keypoints`` (in
            the original image's pixels; rescaled when ``features.image_size`` differs from the
            image's size) coloured by score (colormap "turbo", with its own colorbar), marker size
            growing with ``log(features.scales)`` when present, and the count in its title.
        out: where to save (format from the suffix); None returns the RGB uint8 array instead.
        title: the figure's title ("attention" when None).
        columns: panels per row; panels wrap onto further rows.
        alpha: opacity of the attention overlay, 0 (image only) to 1 (map only).
        cmap: colormap (name or `Colormap`) of the attention maps.
        dpi: resolution; the layout is made at 100 dpi.
        max_points: draw only this many best-scoring keypoints (all when None).
        untrained: the maps come from a model without trained weights: a red caption
            (`UNTRAINED_CAPTION`) under the title and a red "UNTRAINED" stamp across every panel.

    Returns:
        The saved `Path` when ``out`` is given, else the figure as an ``(H, W, 3)`` uint8 array.
    """
    img, _ = _as_rgb(image)
    maps = _as_levels(levels)
    if not maps and features is None:
        raise ValueError("plot_attention needs at least one level or features")
    if int(columns) < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap = colormaps[cmap] if isinstance(cmap, str) else cmap
    norm = _shared_norm([m for _, m in maps])

    h, w = img.shape[:2]
    n_panels = len(maps) + (features is not None)
    cols = min(int(columns), n_panels)
    rows = math.ceil(n_panels / cols)
    cell_max_w = (MAX_WIDTH - 2 * PAD - (cols - 1) * CELL_GAP) / cols
    s = _fit_scale(w, h, cell_max_w, MAX_HEIGHT / 1.5, min(cell_max_w, MIN_PANEL_WIDTH))
    disp_w, disp_h = w * s, h * s
    display = _display_image(img, disp_w * dpi / BASE_DPI, disp_h * dpi / BASE_DPI)

    grid_w = cols * disp_w + (cols - 1) * CELL_GAP
    fig_w = math.ceil(max(grid_w + 2 * PAD, MIN_FIGURE_WIDTH))
    text = str(title) if title else "attention"
    head = TITLE_LINE * (text.count("\n") + 1 + bool(untrained)) + 10
    band = PANEL_LINE + 6
    grid_h = rows * (band + disp_h) + (rows - 1) * ROW_GAP
    fig_h = math.ceil(head + grid_h + PAD + COLORBAR_BAND)
    fig = _new_figure(fig_w, fig_h, dpi)
    fig.text(0.5, 1.0 - 6 / fig_h, text, ha="center", va="top", fontsize=TITLE_FONTSIZE + 1, linespacing=1.3)
    if untrained:
        caption_top = 6 + TITLE_LINE * (text.count("\n") + 1)
        fig.text(0.5, 1.0 - caption_top / fig_h, UNTRAINED_CAPTION, ha="center", va="top",
                 fontsize=TITLE_FONTSIZE, color=UNTRAINED_COLOR, fontweight="bold")
    x0 = (fig_w - grid_w) / 2

    def panel(index: int):
        """The axes of panel ``index`` (row by row) showing the image, and a function to title it."""
        r, c = divmod(index, cols)
        left, top = x0 + c * (disp_w + CELL_GAP), head + r * (band + disp_h + ROW_GAP)
        ax = _add_axes(fig, left, top + band, disp_w, disp_h, fig_w, fig_h)
        _show(ax, display, (h, w))
        if untrained:
            ax.text(0.5, 0.5, "UNTRAINED", transform=ax.transAxes, ha="center", va="center", rotation=20,
                    fontsize=max(10.0, disp_w / 14), color=UNTRAINED_COLOR, alpha=0.75, fontweight="bold", zorder=10)

        def label(text: str) -> None:
            fig.text((left + disp_w / 2) / fig_w, 1.0 - (top + 2) / fig_h, text, ha="center", va="top",
                     fontsize=PANEL_FONTSIZE)

        return ax, label

    for i, (scale, amap) in enumerate(maps):
        ax, label = panel(i)
        _overlay(ax, amap, (h, w), colormap, norm, alpha)
        label(_panel_title(scale, amap))
    bars: list[tuple[ScalarMappable, str]] = []
    if maps:
        bars.append((ScalarMappable(norm=norm, cmap=colormap), "attention"))
    if features is not None:
        ax, label = panel(len(maps))
        kp_title, mappable = _draw_keypoints(ax, features, (h, w), max_points, math.sqrt(disp_w * disp_h))
        label(kp_title)
        if mappable is not None:
            bars.append((mappable, "keypoint score"))
    bar_top = head + grid_h + 12
    if len(bars) == 1:
        _add_colorbar(fig, bars[0][0], bars[0][1], bar_top, fig_w, fig_h)
    elif bars:
        _two_colorbars(fig, bars, bar_top, fig_w, fig_h)
    return _finish(fig, out, dpi)
