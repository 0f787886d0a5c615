"""The demo's retrieval set: each scene photo is a query; the database holds several synthetic views
of every scene (a zoom and rotation about the centre, then a random perspective change of
`delfi.datasets.synthetic.random_homography`, easy to hard, and a brightness / contrast change), plus distractor photos that are none of them. Everything follows from one seed.

Names (feature-store keys, also the PNG files under ``images/``):
``query/<scene>.png``, ``db/<scene>-<v>.png``, ``db/<distractor>.png``.
The ground truth homography of a view maps pixels of its query to pixels of the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from delfi.datasets.synthetic import random_homography, warp_image
from delfi.demo.photos import SamplePhoto, distractors, load_photo, scenes

__all__ = ["DemoSet", "build_scene_set", "make_view", "similarity", "VIEW_STRENGTHS", "VIEW_ZOOMS", "VIEW_ROTATIONS"]

VIEW_STRENGTHS = (0.08, 0.14, 0.2, 0.25)
"""Corner displacement (fraction of the image size, `random_homography`) of view 1, 2, ...: easy to hard."""
VIEW_ZOOMS = (1.0, 1.3, 0.8, 1.5)
"""Zoom about the image centre of view 1, 2, ... (applied before the perspective change)."""
VIEW_ROTATIONS = (5.0, 12.0, 20.0, 30.0)
"""Largest rotation (degrees, random sign and size) of view 1, 2, ..."""


@dataclass
class DemoSet:
    folder: Path  # images/ of the demo folder
    queries: list[str] = field(default_factory=list)
    database: list[str] = field(default_factory=list)
    positives: dict[str, list[str]] = field(default_factory=dict)  # query -> its views
    homographies: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (query, view) -> H
    photos: dict[str, SamplePhoto] = field(default_factory=dict)  # name -> source photo

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def names(self) -> list[str]:
        return self.queries + self.database


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _save(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def similarity(width: int, height: int, zoom: float, degrees: float) -> np.ndarray:
    """(3, 3) zoom and rotation about the image centre (pixel-centre coordinates)."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a = np.deg2rad(degrees)
    c, s = zoom * np.cos(a), zoom * np.sin(a)
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]], np.float64)


def make_view(query: np.ndarray, rng: np.random.Generator, level: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic view of ``query`` (H, W, 3) uint8 at difficulty ``level`` (0 = easiest):
    (view uint8, homography query -> view)."""
    height, width = query.shape[:2]
    level = min(level, len(VIEW_STRENGTHS) - 1)
    rotation = rng.uniform(-1, 1) * VIEW_ROTATIONS[level]
    perspective = random_homography(width, height, seed=int(rng.integers(2**31)), strength=VIEW_STRENGTHS[level])
    H = perspective @ similarity(width, height, VIEW_ZOOMS[level], rotation)
    H = H / H[2, 2]
    view = warp_image(_to_tensor(query), H)
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-0.08, 0.08)  # photometric change
    view = view * gain + bias
    return _to_uint8(view), H


def build_scene_set(folder: str | Path, *, size: int = 400, n_scenes: int | None = None, views: int = 3,
                    n_distractors: int | None = None, seed: int = 0) -> DemoSet:
    """Write the demo images under ``folder`` (PNG) and return their names and ground truth.

    Args:
        size: longest side of every image in pixels.
        n_scenes / n_distractors: how many of the listed photos to use (default all).
        views: synthetic views per scene in the database.
        seed: fixes every homography and photometric change.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    folder = Path(folder)
    chosen = scenes()[: n_scenes if n_scenes is not None else None]
    others = distractors()[: n_distractors if n_distractors is not None else None]
    if not chosen:
        raise ValueError("the demo needs at least one scene photo")
    rng = np.random.default_rng(seed)
    demo = DemoSet(folder)
    for photo in chosen:
        query = load_photo(photo, size)
        qname = f"query/{photo.name}.png"
        _save(query, folder / qname)
        demo.queries.append(qname)
        demo.photos[qname] = photo
        demo.positives[qname] = []
        for v in range(views):
            view, H = make_view(query, rng, v)
            vname = f"db/{photo.name}-{v + 1}.png"
            _save(view, folder / vname)
            demo.database.append(vname)
            demo.photos[vname] = photo
            demo.positives[qname].append(vname)
            demo.homographies[(qname, vname)] = H
    for photo in others:
        name = f"db/{photo.name}.png"
        _save(load_photo(photo, size), folder / name)
        demo.database.append(name)
        demo.photos[name] = photo
    return demo
