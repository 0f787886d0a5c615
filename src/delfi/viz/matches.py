"""Pictures of keypoints and matches, rendered with matplotlib's Agg canvas (never pyplot).

Coordinates follow delfi's convention: the centre of the top-left pixel is (0, 0). Images are
drawn with ``imshow(..., origin="upper", extent=(-0.5, W - 0.5, H - 0.5, -0.5))`` (what
matplotlib does by default), so pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5]`` in data units and
a keypoint ``(x, y)`` is drawn on top of the pixel whose centre it names.

Every function returns the saved `Path` when ``out`` is given, else the rendered figure as an
``(H, W, 3)`` uint8 RGB array. Sizes are laid out in pixels at 100 dpi (a matches figure is at
most about 1600 px wide); ``dpi=200`` renders the same picture twice as large.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delfi.io.images import read_image
from delfi.types import Features, Matches

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import EllipseCollection, LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
except ImportError as error:  # matplotlib is the optional "viz" extra
    raise ImportError("delfi.viz needs matplotlib: pip install 'delfi[viz]'") from error

__all__ = ["picture_formats", "plot_keypoints", "plot_match_grid", "plot_matches"]

BASE_DPI = 100
"""Layout sizes below are pixels at this dpi."""
MAX_WIDTH = 1600
MAX_HEIGHT = 1100
MIN_WIDTH = 640
MAX_UPSCALE = 16.0
PAD = 8
GAP = 10  # between the two images of a pair
CELL_GAP = 36  # between the panels of a grid
ROW_GAP = 18
TITLE_FONTSIZE = 11
TITLE_LINE = 19
PANEL_FONTSIZE = 9
PANEL_LINE = 16
COLORBAR_BAND = 40

INLIER_COLOR = (0.1, 1.0, 0.1)
OUTLIER_COLOR = (1.0, 0.1, 0.1)
OUTLIER_ALPHA = 0.6
MATCH_CMAP = "cool"  # cyan (low score) to magenta (high): no red/green to confuse with inliers
KEYPOINT_CMAP = "turbo"
KEYPOINT_COLOR = (0.1, 1.0, 0.1)
MAX_CIRCLES = 300
SEP = " \u00b7 "

ImageLike = Any  # str | os.PathLike | Tensor (3, H, W) | np.ndarray (H, W, 3) | PIL.Image.Image
PointsLike = Any  # Features | Tensor (N, 2) | np.ndarray (N, 2)


# ----------------------------------------------------------------------------- inputs


def _as_rgb(image: ImageLike) -> tuple[np.ndarray, str | None]:
    """An ``(H, W, 3)`` uint8 array and, for a file, its name."""
    name = None
    if isinstance(image, (str, os.PathLike)):
        name = Path(os.fspath(image)).name
        image = read_image(image)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):  # delfi's (C, H, W)
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"an image must be (3, H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] != 3:
        raise ValueError(f"an image must have 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image, shape {arr.shape}")
    return _to_uint8(arr), name


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        peak = int(arr.max()) if arr.size else 0
        scaled = arr.astype(np.float64) / (65535.0 if peak > 255 else 255.0)
    else:  # float images are taken as [0, 1]
        scaled = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()
        return value.numpy()
    return np.asarray(value)


def _as_points(points: PointsLike) -> np.ndarray:
    """(N, 2) float64 keypoints from `Features` or an (N, 2) tensor / array."""
    if isinstance(points, Features):
        points = points.keypoints
    arr = _numpy(points).astype(np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"keypoints must be (N, 2), got shape {arr.shape}")
    return arr


@dataclass
class _MatchArrays:
    indices: np.ndarray  # (K, 2) int64
    scores: np.ndarray  # (K,) float64
    inliers: np.ndarray | None  # (K,) bool
    kind: str | None
    status: str | None


def _as_matches(matches: Matches | Any, n0: int, n1: int) -> _MatchArrays:
    if isinstance(matches, Matches):
        indices, scores = _numpy(matches.indices), _numpy(matches.scores)
        inliers = None if matches.inliers is None else _numpy(matches.inliers).astype(bool)
        meta = matches.meta if isinstance(matches.meta, dict) else {}
        status = meta.get("status")
        kind, status = matches.kind, (None if status is None else str(status))
        if status == "too few inliers" and "min_inliers" in meta:  # say what "enough" is
            needed = max(int(meta["min_inliers"]), int(meta.get("chance_inliers", -1)) + 1)
            status = f"{status} (needs {needed})"
    else:  # a bare (K, 2) index array
        indices = _numpy(matches)
        scores, inliers, kind, status = np.ones(len(indices)), None, None, None
    indices = indices.astype(np.int64).reshape(-1, 2)
    if len(indices):
        for side, n in ((0, n0), (1, n1)):
            bad = (indices[:, side] < 0) | (indices[:, side] >= n)
            if bad.any():
                raise ValueError(
                    f"matches.indices[:, {side}] must index keypoints{side} (N={n}), "
                    f"got {int(indices[bad, side][0])}"
                )
    return _MatchArrays(indices, scores.astype(np.float64).reshape(-1), inliers, kind, status)


def _subset(count: int, max_lines: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the matches to draw: all, or a seeded random ``max_lines`` of them."""
    if max_lines is None or count <= max_lines:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=max(int(max_lines), 0), replace=False))


# ----------------------------------------------------------------------------- text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("ch") else f"{n} {word}s"


def _match_summary(m: _MatchArrays, drawn: int) -> str:
    """"N matches" or "I inliers / N matches (P%)", then kind, status and subsampling."""
    k = len(m.indices)
    if k == 0:
        parts = ["0 matches"]
    elif m.inliers is not None:
        i = int(m.inliers.sum())
        parts = [f"{_plural(i, 'inlier')} / {_plural(k, 'match')} ({100.0 * i / k:.1f}%)"]
    else:
        parts = [_plural(k, "match")]
    if m.kind:
        parts.append(m.kind)
    if m.status:
        parts.append(m.status)
    if drawn < k:
        parts.append(f"{drawn} drawn")
    return SEP.join(parts)


def _short(name: str, limit: int = 48) -> str:
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1) :]


def _pair_title(title: str | None, names: Sequence[str | None], summary: str) -> str:
    lines = [str(title)] if title else []
    if any(names):
        lines.append(f"{_short(str(names[0] or '?'))}  \u2194  {_short(str(names[1] or '?'))}")
    lines.append(summary)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- layout


def _fit_scale(content_w: float, content_h: float, max_w: float, max_h: float, min_w: float) -> float:
    """Display scale: shrink to fit ``max_w x max_h``; grow small content up to ``min_w`` wide."""
    fit = min(max_w / content_w, max_h / content_h)
    if fit <= 1.0:
        return fit
    return max(1.0, min(min_w / content_w, fit, MAX_UPSCALE))


@dataclass
class _PairLayout:
    scale: float  # display px per image px
    width: float  # display size of the pair, px at BASE_DPI
    height: float
    offset: float  # x of image1's pixel-0 centre in the shared data coordinates


def _pair_layout(
    size0: tuple[int, int], size1: tuple[int, int], max_w: float, max_h: float, min_w: float
) -> _PairLayout:
    (h0, w0), (h1, w1) = size0, size1
    s = _fit_scale(w0 + w1, max(h0, h1), max_w - GAP, max_h, min_w - GAP)
    return _PairLayout(s, (w0 + w1) * s + GAP, max(h0, h1) * s, w0 + GAP / s)


def _new_figure(width: float, height: float, dpi: float) -> Figure:
    fig = Figure(figsize=(width / BASE_DPI, height / BASE_DPI), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _add_axes(fig: Figure, left: float, top: float, width: float, height: float, fig_w: float, fig_h: float):
    """Axes at an exact pixel box (px at BASE_DPI, measured from the top-left of the figure)."""
    ax = fig.add_axes((left / fig_w, 1.0 - (top + height) / fig_h, width / fig_w, height / fig_h))
    ax.set_axis_off()
    return ax


def _add_colorbar(fig: Figure, mappable: ScalarMappable, label: str, top: float, fig_w: float, fig_h: float) -> None:
    bar_w = min(360.0, 0.45 * fig_w)
    left = (fig_w - bar_w) / 2
    cax = fig.add_axes((left / fig_w, 1.0 - (top + 10) / fig_h, bar_w / fig_w, 10 / fig_h))
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=8, length=2, pad=1)
    bar.outline.set_linewidth(0.5)
    fig.text((left - 8) / fig_w, 1.0 - (top + 5) / fig_h, label, ha="right", va="center", fontsize=8)


def picture_formats() -> set[str]:
    """File suffixes (lower case, no dot) the pictures can be saved as, e.g. ``{"png", "pdf", ...}``."""
    return {name.lower() for name in FigureCanvasAgg(Figure()).get_supported_filetypes()}


def _finish(fig: Figure, out: str | os.PathLike | None, dpi: float) -> Path | np.ndarray:
    if out is not None:
        path = Path(os.fspath(out))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")
        return path
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------- drawing


def _show(ax, image: np.ndarray, x_offset: float = 0.0) -> None:
    h, w = image.shape[:2]
    ax.imshow(
        image,
        origin="upper",
        extent=(x_offset - 0.5, x_offset + w - 0.5, h - 0.5, -0.5),  # pixel centres at integers
        interpolation="antialiased",
        aspect="auto",
    )


def _line_width(count: int) -> float:
    return 1.5 if count <= 50 else 1.0 if count <= 200 else 0.7


def _score_norm(scores: np.ndarray) -> Normalize:
    """[0, 1] when all scores lie there (similarities: comparable across figures), else min..max."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return Normalize(0.0, 1.0)
    if hi <= lo:
        return Normalize(lo - 0.5, hi + 0.5)
    return Normalize(lo, hi)


def _value_norm(values: np.ndarray) -> Normalize:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return Normalize(lo - 0.5, hi + 0.5) if hi <= lo else Normalize(lo, hi)


@dataclass
class _Pair:
    image0: np.ndarray
    image1: np.ndarray
    points0: np.ndarray
    points1: np.ndarray
    matches: _MatchArrays
    drawn: np.ndarray  # indices into the matches
    names: tuple[str | None, str | None]

    @property
    def sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.image0.shape[:2], self.image1.shape[:2]


def _prepare_pair(image0, image1, keypoints0, keypoints1, matches, *, names, max_lines, seed) -> _Pair:
    img0, file0 = _as_rgb(image0)
    img1, file1 = _as_rgb(image1)
    p0, p1 = _as_points(keypoints0), _as_points(keypoints1)
    m = _as_matches(matches, len(p0), len(p1))
    names = tuple(names) if names is not None else (None, None)
    if len(names) != 2:
        raise ValueError(f"names must be a pair, got {names!r}")
    return _Pair(
        img0, img1, p0, p1, m,
        drawn=_subset(len(m.indices), max_lines, seed),
        names=(names[0] if names[0] is not None else file0, names[1] if names[1] is not None else file1),
    )


def _draw_pair(ax, pair: _Pair, layout: _PairLayout) -> ScalarMappable | None:
    """Both images and the match lines in one axes; the score colour mapping when one is used."""
    (h0, w0), (h1, w1) = pair.sizes
    _show(ax, pair.image0)
    _show(ax, pair.image1, layout.offset)
    ax.set_xlim(-0.5, layout.offset + w1 - 0.5)
    ax.set_ylim(max(h0, h1) - 0.5, -0.5)
    m, drawn = pair.matches, pair.drawn
    if len(drawn) == 0:
        return None
    idx = m.indices[drawn]
    start = pair.points0[idx[:, 0]]
    end = pair.points1[idx[:, 1]] + np.array([layout.offset, 0.0])
    lw = _line_width(len(drawn))
    mappable = None
    if m.inliers is not None:
        inl = m.inliers[drawn]
        groups = [(~inl, OUTLIER_COLOR, OUTLIER_ALPHA, 0.6 * lw, 2), (inl, INLIER_COLOR, 1.0, lw, 3)]
    else:
        norm, cmap = _score_norm(m.scores), colormaps[MATCH_CMAP]
        colors = cmap(norm(np.nan_to_num(m.scores[drawn], nan=norm.vmin)))
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        groups = [(np.ones(len(drawn), bool), colors, 0.9, lw, 3)]
    for mask, color, alpha, width, z in groups:
        if not mask.any():
            continue
        c = color[mask] if isinstance(color, np.ndarray) else color
        segments = np.stack([start[mask], end[mask]], axis=1)
        ax.add_collection(LineCollection(segments, colors=c, linewidths=width, alpha=alpha, zorder=z))
        ends = np.concatenate([start[mask], end[mask]])
        end_colors = np.concatenate([c, c]) if isinstance(c, np.ndarray) else [c]
        ax.scatter(ends[:, 0], ends[:, 1], s=(2.4 * width) ** 2, c=end_colors, alpha=alpha, linewidths=0, zorder=z + 0.5)
    return mappable


# ----------------------------------------------------------------------------- public API


def plot_matches(
    image0: ImageLike,
    image1: ImageLike,
    keypoints0: PointsLike,
    keypoints1: PointsLike,
    matches: Matches,
    *,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    max_lines: int | None = 500,
    dpi: int = 100,
    names: Sequence[str | None] = (None, None),
    seed: int = 0,
) -> Path | np.ndarray:
    """Draw two images side by side (tops aligned) with a line per match.

    Args:
        image0, image1: a file path, a ``(3, H, W)`` tensor in [0, 1] or an ``(H, W, 3)`` array
            (uint8, or float in [0, 1]).
        keypoints0, keypoints1: `Features` or ``(N, 2)`` (x, y) in each image's pixels.
        matches: `Matches` whose ``indices`` index the two keypoint sets.
        out: where to save (format from the suffix); None returns the RGB uint8 array instead.
        title: an extra first line of the title.
        max_lines: draw at most this many matches, a random subset chosen with ``seed`` (the
            title still reports the true counts); None draws all.
        dpi: resolution; the layout is made at 100 dpi (at most ~1600 px wide).
        names: labels of the two images (file names by default when paths are given).

    With ``matches.inliers``: inliers green, outliers thinner translucent red. Without: each
    match coloured by score (colormap "cool", with a colorbar). The title gives
    "N matches" or "I inliers / N matches (P%)", the geometry kind and ``meta["status"]``.
    """
    pair = _prepare_pair(image0, image1, keypoints0, keypoints1, matches, names=names, max_lines=max_lines, seed=seed)
    layout = _pair_layout(*pair.sizes, MAX_WIDTH - 2 * PAD, MAX_HEIGHT, MIN_WIDTH - 2 * PAD)
    text = _pair_title(title, pair.names, _match_summary(pair.matches, len(pair.drawn)))
    title_h = TITLE_LINE * (text.count("\n") + 1) + 10
    has_bar = pair.matches.inliers is None and len(pair.drawn) > 0
    fig_w = max(layout.width + 2 * PAD, 2 * PAD + 400)
    fig_h = title_h + layout.height + PAD + (COLORBAR_BAND if has_bar else 0)
    fig_w, fig_h = math.ceil(fig_w), math.ceil(fig_h)
    fig = _new_figure(fig_w, fig_h, dpi)
    fig.text(0.5, 1.0 - 6 / fig_h, text, ha="center", va="top", fontsize=TITLE_FONTSIZE, linespacing=1.3)
    ax = _add_axes(fig, (fig_w - layout.width) / 2, title_h, layout.width, layout.height, fig_w, fig_h)
    mappable = _draw_pair(ax, pair, layout)
    if mappable is not None:
        _add_colorbar(fig, mappable, "match score", title_h + layout.height + 12, fig_w, fig_h)
    return _finish(fig, out, dpi)


def plot_keypoints(
    image: ImageLike,
    features: Features | PointsLike,
    *,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    color_by: str | None = "score",
    max_points: int | None = 5000,
    dpi: int = 100,
) -> Path | np.ndarray:
    """Draw keypoints on an image, coloured by score (``color_by="score"``), by scale
    (``"scale"``) or in one colour (None).

    Only the ``max_points`` best-scoring keypoints are drawn (all when None); the title gives the
    true count. When the features have scales and at most 300 points are drawn, each gets a
    circle of radius ``scale / 2``. ``features`` may also be a bare ``(N, 2)`` array (one colour).
    """
    img, file_name = _as_rgb(image)
    points = _as_points(features)
    scores = scales = None
    if isinstance(features, Features):
        scores = _numpy(features.scores).astype(np.float64).reshape(-1)
        scales = None if features.scales is None else _numpy(features.scales).astype(np.float64).reshape(-1)
    if color_by not in ("score", "scale", None):
        raise ValueError(f"color_by must be 'score', 'scale' or None, got {color_by!r}")
    if color_by == "scale" and scales is None and isinstance(features, Features):
        raise ValueError("color_by='scale' but these features have no scales")
    total = len(points)
    keep = np.arange(total)
    if max_points is not None and total > max_points:
        keep = (np.argsort(-scores, kind="stable") if scores is not None else keep)[: max(int(max_points), 0)]
    points = points[keep]
    values = {"score": scores, "scale": scales, None: None}[color_by]
    values = None if values is None else values[keep]
    scales = None if scales is None else scales[keep]

    summary = _plural(total, "keypoint")
    if len(keep) < total:
        summary += f"{SEP}top {len(keep)} drawn"
    lines = [str(title)] if title else []
    if file_name:
        lines.append(_short(file_name))
    text = "\n".join([*lines, summary])

    h, w = img.shape[:2]
    s = _fit_scale(w, h, MAX_WIDTH - 2 * PAD, MAX_HEIGHT, 480 - 2 * PAD)
    disp_w, disp_h = w * s, h * s
    title_h = TITLE_LINE * (text.count("\n") + 1) + 10
    has_bar = values is not None and len(points) > 0
    fig_w = math.ceil(max(disp_w + 2 * PAD, 2 * PAD + 300))
    fig_h = math.ceil(title_h + disp_h + PAD + (COLORBAR_BAND if has_bar else 0))
    fig = _new_figure(fig_w, fig_h, dpi)
    fig.text(0.5, 1.0 - 6 / fig_h, text, ha="center", va="top", fontsize=TITLE_FONTSIZE, linespacing=1.3)
    ax = _add_axes(fig, (fig_w - disp_w) / 2, title_h, disp_w, disp_h, fig_w, fig_h)
    _show(ax, img)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if len(points):
        n = len(points)
        size = 16.0 if n <= MAX_CIRCLES else 7.0 if n <= 2000 else 3.0
        if values is not None:
            norm, cmap = _value_norm(values), colormaps[KEYPOINT_CMAP]
            colors = cmap(norm(np.nan_to_num(values, nan=norm.vmin)))
        else:
            norm = cmap = None
            colors = np.tile(np.array([*KEYPOINT_COLOR, 1.0]), (n, 1))
        if scales is not None and n <= MAX_CIRCLES:
            ax.add_collection(EllipseCollection(
                widths=scales, heights=scales, angles=np.zeros(n), units="xy", offsets=points,
                offset_transform=ax.transData, facecolors="none", edgecolors=colors, linewidths=0.9, zorder=2,
            ))
        ax.scatter(points[:, 0], points[:, 1], s=size, c=colors, edgecolors="black",
                   linewidths=0.3 if n <= 2000 else 0.0, zorder=3)
        if norm is not None:
            _add_colorbar(fig, ScalarMappable(norm=norm, cmap=cmap), str(color_by), title_h + disp_h + 12, fig_w, fig_h)
    return _finish(fig, out, dpi)


_GRID_KEYS = ("image0", "image1", "keypoints0", "keypoints1", "matches")
_GRID_OPTIONS = ("title", "max_lines", "names", "seed")


def plot_match_grid(
    items: Sequence[dict[str, Any]],
    *,
    out: str | os.PathLike | None = None,
    columns: int = 2,
    title: str | None = None,
    dpi: int = 100,
) -> Path | np.ndarray:
    """Several image pairs in a grid, each panel titled like `plot_matches`.

    Each item is a dict of `plot_matches` arguments: ``image0, image1, keypoints0, keypoints1,
    matches`` and optionally ``title, max_lines, names, seed``. Panels are filled row by row,
    ``columns`` to a row. Without inliers, lines are coloured by score (colormap "cool", 0..1
    for scores in [0, 1]) but no colorbar is drawn.
    """
    if not items:
        raise ValueError("plot_match_grid needs at least one item")
    pairs, texts = [], []
    for i, item in enumerate(items):
        missing = [k for k in _GRID_KEYS if k not in item]
        unknown = [k for k in item if k not in _GRID_KEYS + _GRID_OPTIONS]
        if missing or unknown:
            raise TypeError(f"plot_match_grid item {i}: missing {missing}, unexpected {unknown}")
        pair = _prepare_pair(
            *(item[k] for k in _GRID_KEYS), names=item.get("names", (None, None)),
            max_lines=item.get("max_lines", 500), seed=item.get("seed", 0),
        )
        pairs.append(pair)
        texts.append(_pair_title(item.get("title"), pair.names, _match_summary(pair.matches, len(pair.drawn))))

    cols = max(1, min(int(columns), len(pairs)))
    rows = math.ceil(len(pairs) / cols)
    cell_max = (MAX_WIDTH - 2 * PAD - (cols - 1) * CELL_GAP) / cols
    layouts = [_pair_layout(*p.sizes, cell_max, MAX_HEIGHT / 1.5, min(cell_max, 400)) for p in pairs]
    cell_w = max(layout.width for layout in layouts)
    fig_w = math.ceil(max(cols * cell_w + (cols - 1) * CELL_GAP + 2 * PAD, 400))
    x0 = (fig_w - (cols * cell_w + (cols - 1) * CELL_GAP)) / 2
    head = TITLE_LINE * (title.count("\n") + 1) + 10 if title else PAD
    row_tops, row_heights, band_heights, y = [], [], [], head
    for r in range(rows):
        members = range(r * cols, min((r + 1) * cols, len(pairs)))
        band = PANEL_LINE * max(texts[i].count("\n") + 1 for i in members) + 6
        height = band + max(layouts[i].height for i in members)
        row_tops.append(y)
        band_heights.append(band)
        row_heights.append(height)
        y += height + ROW_GAP
    fig_h = math.ceil(y - ROW_GAP + PAD)
    fig = _new_figure(fig_w, fig_h, dpi)
    if title:
        fig.text(0.5, 1.0 - 6 / fig_h, title, ha="center", va="top", fontsize=TITLE_FONTSIZE + 1, linespacing=1.3)
    for i, (pair, layout, text) in enumerate(zip(pairs, layouts, texts)):
        r, c = divmod(i, cols)
        centre = x0 + c * (cell_w + CELL_GAP) + cell_w / 2
        fig.text(centre / fig_w, 1.0 - (row_tops[r] + 2) / fig_h, text, ha="center", va="top",
                 fontsize=PANEL_FONTSIZE, linespacing=1.25)
        ax = _add_axes(fig, centre - layout.width / 2, row_tops[r] + band_heights[r], layout.width, layout.height,
                       fig_w, fig_h)
        _draw_pair(ax, pair, layout)
    return _finish(fig, out, dpi)
