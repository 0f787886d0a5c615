"""Benchmark figures (matplotlib, drawn on an Agg canvas: no pyplot, no global state, no display).

`plot_mma_curves` draws the D2-Net paper's HPatches figure: mean matching accuracy against the
pixel threshold, one panel each for all pairs, illumination pairs and viewpoint pairs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SUBSET_TITLES", "mma_curves_of", "plot_mma_curves"]

SUBSET_TITLES = {"overall": "Overall", "i": "Illumination", "v": "Viewpoint"}
_SUMMARY_KEYS = {"overall": "mma", "i": "mma_i", "v": "mma_v"}


def mma_curves_of(source: Any) -> dict[str, dict[int, float]]:
    """``{"overall" | "i" | "v": {t: mma}}`` from any of the forms `plot_mma_curves` accepts.

    Accepted: such a dict itself; an `HPatchesResult`; an object with a ``result`` attribute
    holding one (an `HPatchesReport`); a dict with ``mma`` / ``mma_i`` / ``mma_v`` (what
    `load_cache` and ``HPatchesResult.summary`` return, or a ``results.json``); a plain
    ``{t: mma}`` dict (drawn in the overall panel only).
    """
    result = getattr(source, "result", source)
    if hasattr(result, "mma_curve"):
        return {subset: result.mma_curve(subset) for subset in SUBSET_TITLES}
    if not isinstance(source, Mapping):
        raise TypeError(f"cannot read MMA curves from a {type(source).__name__}")
    if any(key in source for key in SUBSET_TITLES):
        return {s: {int(t): float(v) for t, v in source[s].items()} for s in SUBSET_TITLES if s in source}
    if "mma" in source:
        return {
            s: {int(t): float(v) for t, v in source[key].items()}
            for s, key in _SUMMARY_KEYS.items()
            if isinstance(source.get(key), Mapping)
        }
    return {"overall": {int(t): float(v) for t, v in source.items()}}


def plot_mma_curves(
    curves: Mapping[str, Any],
    out: str | os.PathLike | None = None,
    *,
    max_threshold: int = 10,
    title: str | None = None,
    dpi: int = 120,
) -> Any:
    """Three panels (overall / illumination / viewpoint) of MMA against the threshold, one line per method.

    Args:
        curves: ``{method: {"overall": {t: mma}, "i": {...}, "v": {...}}}``; a value may also be an
            `HPatchesResult`, an `HPatchesReport`, a `load_cache` dict or a ``results.json`` dict
            (see `mma_curves_of`). Subsets missing for a method are left out of that panel.
        out: PNG path to save to (parent folders are created), or None to only return the figure.
        max_threshold: largest threshold drawn (the D2-Net figure stops at 10 px).
        title: optional figure title.

    Returns:
        The `matplotlib.figure.Figure` (with an Agg canvas attached).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    parsed = {str(method): mma_curves_of(value) for method, value in curves.items()}
    for ax, (subset, name) in zip(axes, SUBSET_TITLES.items()):
        for method, by_subset in parsed.items():
            curve = by_subset.get(subset)
            if not curve:
                continue
            ts = sorted(t for t in curve if t <= max_threshold)
            ys = [curve[t] for t in ts]
            if ts and not all(math.isnan(y) for y in ys):
                ax.plot(ts, ys, marker="o", markersize=3, linewidth=2, label=method)
        ax.set_title(name)
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, max_threshold)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, max_threshold + 1))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("MMA")
    if parsed:
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, labels, loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    return fig
