"""A synthetic sf-xs-style map: named views of places cut from photographs, for tests and demos.

The map is a straight street in UTM zone 10S (San Francisco): place ``i`` is at the centre of the
10 m cell containing ``(550000 + i * spacing, 4180000)``. Each place looks like one square region
of one of the given photos (regions of a photo do not overlap, so different places look
different; a strongly rotated and shifted view may reach a few pixels into a neighbouring
region). A *view* of a place is a perspective crop of its region (60% of the region's side at
scale 1; scale 0.8-1.2, rotation up to 10 degrees, shift up to 10% of the region, corner jitter)
with brightness (x0.75-1.25), colour cast, contrast (gamma 0.8-1.25) and offset changes, so two
views of a place look alike but not identical. With the defaults and scikit-image's six scene
photos, an 8 x 8 thumbnail descriptor (cosine, mean removed) finds the right place first for
50-75% of the 12 validation or test queries over seeds 0-2 (chance: 8%).

Places and splits:

* ``places`` training places, ``train_per_place`` views each, in ``out/train/``;
* ``val_places`` further places for ``out/val/`` and ``test_places`` for ``out/test/``: held-out
  places (not seen in training, but cut from the same photos), so recall@1 measures whether a
  trained model generalises to new places rather than whether it remembers its training classes.
  Each has ``database/`` (one view per place) and ``queries/`` (one other view per place).

Positions and headings:

* every view is within 3 m (per axis) of its place's cell centre, so all views of a place share
  one 10 m cell, and with ``spacing`` 40 m exactly one database image is within 25 m of each query
  (checked before anything is written);
* every view of a place has a heading in the same 30-degree bin; bins are drawn from the even ones
  (0, 60, ..., 300 degrees), so with CosPlace's defaults (10 m cells, 30-degree bins, N = 5,
  L = 2) and ``spacing`` 40 m the training places fall in (up to) 5 groups (``cell_e mod 5``) of
  one class per place, all of them used with ``groups = 8`` (:mod:`delfi.datasets.vpr_groups`).
* pano ids name the place and view (``syn<seed>p<place>r<role>v<view>``, role 0 train, 1
  database, 2 query); timestamps are in 2013 (train), 2017 (database) and 2021 (queries).

File names are full sf-xs / CosPlace names,
``@east@north@10@S@lat@lon@pano_id@@heading@@@@timestamp@@.jpg`` (heading is field 9 of the
``'@'``-split stem), unique per view. Output is deterministic for a seed (byte-identical JPEGs at a
fixed quality with the same Pillow); a non-empty ``out`` is refused and no file is ever overwritten.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SyntheticMap", "make_synthetic_vpr", "utm_to_latlon", "EAST0", "NORTH0", "ZONE", "LETTER"]

EAST0 = 550000.0
NORTH0 = 4180000.0
ZONE = 10
LETTER = "S"
CELL = 10.0  # metres: views of a place stay within one cell of this size
JITTER = 3.0  # metres, per axis, around the cell centre
HEADING_BIN = 30  # degrees: views of a place stay within one bin of this size
JPEG_QUALITY = 90
VIEW_SIDE = 0.6  # a view's side at scale 1, as a fraction of its place's region
MIN_REGION = 32  # pixels: the smallest region a place may be cut from
RADIUS = 25.0  # metres: VPR positives


@dataclass
class SyntheticMap:
    """Where a synthetic map was written, and its files per split (each list sorted)."""

    root: Path
    train: list[Path]
    val_database: list[Path]
    val_queries: list[Path]
    test_database: list[Path]
    test_queries: list[Path]


def utm_to_latlon(east: float, north: float, zone: int = ZONE) -> tuple[float, float]:
    """Latitude and longitude (degrees, WGS84) of a northern-hemisphere UTM position (Snyder's series)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x, m = east - 500000.0, north / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi = (mu + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
           + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
           + 151 * e1**3 / 96 * math.sin(6 * mu) + 1097 * e1**4 / 512 * math.sin(8 * mu))
    sin, cos, tan = math.sin(phi), math.cos(phi), math.tan(phi)
    c, t = ep2 * cos**2, tan**2
    n = a / math.sqrt(1 - e2 * sin**2)
    r = a * (1 - e2) / (1 - e2 * sin**2) ** 1.5
    d = x / (n * k0)
    lat = phi - n * tan / r * (d**2 / 2 - (5 + 3 * t + 10 * c - 4 * c**2 - 9 * ep2) * d**4 / 24
                               + (61 + 90 * t + 298 * c + 45 * t**2 - 252 * ep2 - 3 * c**2) * d**6 / 720)
    lon = (d - (1 + 2 * t + c) * d**3 / 6 + (5 - 2 * c + 28 * t - 3 * c**2 + 8 * ep2 + 24 * t**2) * d**5 / 120) / cos
    return math.degrees(lat), (zone - 1) * 6 - 180 + 3 + math.degrees(lon)


def _load(photo: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A photo as (H, W, 3) uint8 RGB, from a path or an (H, W) / (H, W, 3) uint8 array."""
    if isinstance(photo, np.ndarray):
        image = photo
    else:
        from PIL import Image

        with Image.open(photo) as opened:
            image = np.asarray(opened.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"a photo must be (H, W) or (H, W, 3) uint8, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


def _regions(shapes: Sequence[tuple[int, int]], count: int) -> tuple[int, list[tuple[int, int, int]]]:
    """The largest square region side giving at least ``count`` non-overlapping regions over the
    photos, and every region as ``(photo, x0, y0)``."""
    for side in range(max(min(h, w) for h, w in shapes), MIN_REGION - 1, -1):
        if sum((h // side) * (w // side) for h, w in shapes) >= count:
            out = []
            for index, (h, w) in enumerate(shapes):
                rows, cols = h // side, w // side
                # centre the grid in the photo
                oy, ox = (h - rows * side) // 2, (w - cols * side) // 2
                out += [(index, ox + c * side, oy + r * side) for r in range(rows) for c in range(cols)]
            return side, out
    raise ValueError(f"the photos are too small for {count} places: need {count} regions of at least "
                     f"{MIN_REGION} x {MIN_REGION} pixels")


def _view(photo, region: tuple[float, float, float], size: int, rng: np.random.Generator) -> bytes:
    """One perturbed view (JPEG bytes) of the square region ``(x0, y0, side)`` of a PIL photo."""
    import io

    from PIL import Image

    from delfi.datasets.synthetic import homography_from_points

    x0, y0, side = region
    scale = rng.uniform(0.8, 1.2)
    angle = math.radians(rng.uniform(-10.0, 10.0))
    centre = np.array([x0 + side / 2, y0 + side / 2]) + rng.uniform(-0.1, 0.1, 2) * side
    half = VIEW_SIDE * side * scale / 2
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    corners = centre + square @ rotation.T + rng.uniform(-0.04, 0.04, (4, 2)) * 2 * half
    target = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    h = homography_from_points(target, corners)  # output pixel -> photo pixel, as PIL wants
    h = h / h[2, 2]
    warped = photo.transform((size, size), Image.Transform.PERSPECTIVE, tuple(h.ravel()[:8]),
                             resample=Image.Resampling.BICUBIC, fillcolor=(127, 127, 127))
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)  # brightness and colour cast
    gamma = rng.uniform(0.8, 1.25)  # contrast
    pixels = 255.0 * (np.asarray(warped, np.float64) / 255.0) ** gamma * gain + rng.uniform(-15, 15)
    pixels = np.clip(pixels, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=JPEG_QUALITY,
                                                                   subsampling=0, optimize=False)
    return buffer.getvalue()


def _name(east: float, north: float, heading: int, pano_id: str, timestamp: str) -> str:
    lat, lon = utm_to_latlon(east, north)
    return (f"@{east:.2f}@{north:.2f}@{ZONE}@{LETTER}@{lat:.5f}@{lon:.5f}@{pano_id}@@{heading:.0f}"
            f"@@@@{timestamp}@@.jpg")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder: refusing to write a synthetic map there")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: refusing to write a synthetic map into it (never overwrites)")


def make_synthetic_vpr(
    out: str | os.PathLike,
    photos: Sequence[str | os.PathLike | np.ndarray],
    *,
    places: int = 24,
    train_per_place: int = 12,
    size: int = 128,
    spacing: float = 40.0,
    seed: int = 0,
    val_places: int = 12,
    test_places: int = 12,
    seen_places: bool = False,
) -> SyntheticMap:
    """Write a synthetic sf-xs-style map under ``out`` (see the module docstring) and list its files.

    ``photos`` are image paths or uint8 arrays; their non-overlapping square regions (as large as
    ``places + val_places + test_places`` of them allow, at least 32 px) become the places, assigned
    in a seeded random order. ``seen_places``: ``val/`` and ``test/`` hold new views of the training
    places instead of held-out places (``val_places`` / ``test_places`` are then not used): a map
    on which a model trained for minutes can learn the places themselves. Raises ValueError for a non-empty ``out``, bad counts, photos too
    small, or a ``spacing`` that would not leave exactly one database positive per query.
    """
    from PIL import Image

    out = Path(out)
    _check_out(out)
    for label, value, low in (("places", places, 1), ("train_per_place", train_per_place, 1),
                              ("val_places", val_places, 1), ("test_places", test_places, 1), ("size", size, 8)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if not photos:
        raise ValueError("make_synthetic_vpr needs at least one photo")

    total = places if seen_places else places + val_places + test_places
    centres = np.array([[math.floor((EAST0 + i * spacing) / CELL) * CELL + CELL / 2,
                         math.floor(NORTH0 / CELL) * CELL + CELL / 2] for i in range(total)])
    gaps = np.linalg.norm(np.diff(centres, axis=0), axis=1) if total > 1 else np.array([np.inf])
    worst = 2 * JITTER * math.sqrt(2)  # two views of one place are at most this far apart
    if not (np.all(np.isfinite(centres)) and gaps.min() - worst > RADIUS):
        raise ValueError(f"spacing={spacing} m leaves places {gaps.min():.1f} m apart: views are within "
                         f"{worst:.1f} m of each other, so places must be more than {RADIUS + worst:.1f} m apart "
                         f"for exactly one database image within {RADIUS:g} m of each query")

    images = [_load(p) for p in photos]
    side, regions = _regions([im.shape[:2] for im in images], total)
    order = np.random.default_rng([seed, 1]).permutation(len(regions))[:total]
    # Sample views at about their output resolution: shrink photos whose regions are much larger.
    shrink = min(1.0, size / (VIEW_SIDE * side))
    pil = [Image.fromarray(im) if shrink == 1.0 else
           Image.fromarray(im).resize((max(1, round(im.shape[1] * shrink)), max(1, round(im.shape[0] * shrink))),
                                      Image.Resampling.LANCZOS) for im in images]

    # Everything is drawn before any file is written: each view's generator depends only on
    # (seed, place, role, view), so the files do not depend on the order they are written in.
    files: dict[str, list[tuple[str, np.random.Generator, int]]] = {
        "train": [], "val/database": [], "val/queries": [], "test/database": [], "test/queries": []}
    split_of = ["train"] * places + ["val"] * val_places + ["test"] * test_places
    for place in range(total):
        heading_bin = 2 * int(np.random.default_rng([seed, 2, place]).integers(0, 360 // HEADING_BIN // 2))
        roles = ([("train", 0, v) for v in range(train_per_place)] if split_of[place] == "train" else
                 [(f"{split_of[place]}/database", 1, 0), (f"{split_of[place]}/queries", 2, 0)])
        if seen_places:  # views 1 and 2 of the database / query roles: unlike the val views
            roles += [("val/database", 1, 0), ("val/queries", 2, 0), ("test/database", 1, 1), ("test/queries", 2, 1)]
        for folder, role, view in roles:
            rng = np.random.default_rng([seed, 3, place, role, view])
            east, north = centres[place] + rng.uniform(-JITTER, JITTER, 2)
            heading = heading_bin * HEADING_BIN + int(rng.integers(2, HEADING_BIN - 1))
            year = (2013, 2017, 2021)[role]
            timestamp = f"{year}{1 + int(rng.integers(0, 12)):02d}"
            pano_id = f"syn{seed}p{place:03d}r{role}v{view:03d}"
            files[folder].append((_name(east, north, heading, pano_id, timestamp), rng, place))

    folders = {folder: out / folder for folder in files}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for folder, entries in files.items():
        written[folder] = []
        for name, rng, place in entries:
            index, x0, y0 = regions[order[place]]
            data = _view(pil[index], (x0 * shrink, y0 * shrink, side * shrink), size, rng)
            path = folders[folder] / name
            with open(path, "xb") as handle:  # never overwrite
                handle.write(data)
            written[folder].append(path)
    return SyntheticMap(root=out, train=sorted(written["train"]), val_database=sorted(written["val/database"]),
                        val_queries=sorted(written["val/queries"]), test_database=sorted(written["test/database"]),
                        test_queries=sorted(written["test/queries"]))
