"""Synthetic landmark classes for tests and demos: objects cut from photos, pasted onto other photos.

Class ``c`` is one object: a fixed square patch of one of the object photos with a fixed elliptic
mask (so the pasted object is not a rectangle). Every image of the class is a random crop of a
random background photo (random position and zoom, maybe mirrored) with the object alpha-blended
in at a random scale (side uniform in ``object_scale * size``), rotation (uniform in
``+- max_rotation`` degrees), position (fully inside the image) and a small brightness / contrast
jitter. The backgrounds of every class come from one pool, drawn the same way, so the object is
the only class signal. The object's box (the bounding box of its rotated mask) and the share of
the image it covers are recorded.

**Determinism**: the objects depend on ``object_seed`` (``seed`` unless given), image ``i`` of
class ``c`` on ``SeedSequence([seed, c, i])`` only, so the same call writes byte-identical PNGs,
and a call with another ``start_index`` (or ``seed``) and the same ``object_seed`` writes new
images of the *same* classes (a held-out set). Rendering runs on one torch thread (restored
afterwards): for these tiny tensors it is the fastest and never stalls on a busy machine.

**Photos**: paths or ``(H, W, 3)`` uint8 arrays. `skimage_photos` gives scikit-image's bundled
public-domain / CC0 photos (see `delfi.demo.photos`): objects from astronaut, chelsea, coffee,
rocket and camera (photos with distinct subjects), backgrounds from brick, grass, gravel, text,
hubble_deep_field, retina and clock (textures and scenes unlike the objects).

Layout written: ``out/class-00/0000.png ...`` and ``out/synthetic-landmarks.json`` (boxes,
shares, classes, settings, object patches and per-image placements).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BACKGROUND_PHOTOS", "MANIFEST", "OBJECT_PHOTOS", "SyntheticLandmarks", "load_synthetic_landmarks",
           "make_synthetic_landmarks", "skimage_photos"]

MANIFEST = "synthetic-landmarks.json"
FORMAT = "delfi-synthetic-landmarks"
OBJECT_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera")
BACKGROUND_PHOTOS: tuple[str, ...] = ("brick", "grass", "gravel", "text", "hubble_deep_field", "retina", "clock")
_MIN_PATCH = 24  # smallest object patch side cut from a photo (pixels)
_ZOOM = (0.35, 1.0)  # background crop side, as a fraction of the photo's smaller side
_BRIGHTNESS = 0.08  # object brightness jitter: + uniform(-b, b)
_CONTRAST = (0.85, 1.15)  # object contrast jitter around its mean
_ELLIPSE_AXES = (0.55, 0.9)  # the mask's minor / major axis ratio, per class


@dataclass
class SyntheticLandmarks:
    """A written synthetic landmark set.

    Attributes:
        root: its folder.
        boxes: relative posix path -> ``(x0, y0, x1, y1)`` in pixel-edge coordinates (``x1 - x0`` is
            the width in pixels) of the pasted object: the bounding box of its rotated mask's
            visible pixels (alpha > 0.5 / 255).
        object_share: relative path -> fraction of the image's pixels covered by the mask
            (alpha >= 0.5).
        classes: class names (``class-00``, ...), the sub-folder names.
        settings: the generation settings, seed, photos, object patches and per-image placements.
    """

    root: Path
    boxes: dict[str, tuple[float, float, float, float]]
    object_share: dict[str, float]
    classes: list[str]
    settings: dict = field(default_factory=dict)


def skimage_photos() -> tuple[list[Path], list[Path]]:
    """(object photos, background photos): the files of `OBJECT_PHOTOS` and `BACKGROUND_PHOTOS` in
    the installed scikit-image (`delfi.demo.photos.MissingSkimageError` when it is missing)."""
    from delfi.demo.photos import PHOTOS, photo_path

    by_name = {p.name: p for p in PHOTOS}
    return [photo_path(by_name[n]) for n in OBJECT_PHOTOS], [photo_path(by_name[n]) for n in BACKGROUND_PHOTOS]


def _load(photo: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, str]:
    """(H, W, 3) float32 in [0, 1] and a name for the manifest."""
    if isinstance(photo, np.ndarray):
        array = photo
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"a photo array must be (H, W, 3) or (H, W) uint8, got {photo.shape} {photo.dtype}")
        return array.astype(np.float32) / 255, f"array {array.shape[1]}x{array.shape[0]}"
    from PIL import Image

    path = Path(photo)
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the photo ({exc})") from None
    return array, path.name


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, H, W) -> (C, height, width), bilinear, antialiased."""
    if image.shape[1:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


def _object_patches(photos: list[np.ndarray], classes: int, rng: np.random.Generator) -> list[dict]:
    """Class c: a square patch of photo ``c % n``, the ``c // n``-th of that photo; patches of one
    photo lie in distinct cells of a grid over it, so they never overlap."""
    count = len(photos)
    cells: list[list[tuple[int, int, int]]] = []
    for index, photo in enumerate(photos):
        height, width = photo.shape[:2]
        needed = len(range(index, classes, count))  # the classes c with c % count == index
        if needed == 0:
            cells.append([])
            continue
        cols = max(1, min(needed, math.ceil(math.sqrt(needed * width / height))))
        rows = math.ceil(needed / cols)
        cell_w, cell_h = width // cols, height // rows
        side = int(0.8 * min(cell_w, cell_h))
        if side < _MIN_PATCH:
            raise ValueError(f"object photo {index} ({width}x{height}) is too small for {needed} non-overlapping "
                             f"patches of at least {_MIN_PATCH} px: give more or larger object photos")
        order = rng.permutation(rows * cols)[:needed]
        placed = []
        for cell in order:
            r, c = divmod(int(cell), cols)
            x = c * cell_w + int(rng.integers(0, cell_w - side + 1))
            y = r * cell_h + int(rng.integers(0, cell_h - side + 1))
            placed.append((x, y, side))
        cells.append(placed)
    patches = []
    for c in range(classes):
        photo, k = c % count, c // count
        x, y, side = cells[photo][k]
        patches.append({"photo": photo, "x": x, "y": y, "side": side,
                        "ellipse_ratio": float(rng.uniform(*_ELLIPSE_AXES)),
                        "ellipse_angle": float(rng.uniform(0, 180))})
    return patches


def _ellipse_mask(side: int, ratio: float, angle_deg: float) -> torch.Tensor:
    """(side, side) float32 alpha of an ellipse inscribed in the square (major axis = side, minor =
    ratio * side, turned by ``angle_deg``), with a one-pixel soft edge."""
    centre = side / 2
    coords = torch.arange(side, dtype=torch.float64) + 0.5 - centre
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    t = math.radians(angle_deg)
    u = x * math.cos(t) + y * math.sin(t)
    v = -x * math.sin(t) + y * math.cos(t)
    a, b = side / 2, ratio * side / 2
    radius = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
    # signed distance to the edge, approximately, in pixels (scaled by the minor half-axis)
    return ((1 - radius) * b + 0.5).clamp(0, 1).float()


def _check_settings(classes: int, per_class: int, size: int, object_scale: Sequence[float], max_rotation: float,
                    start_index: int) -> tuple[float, float]:
    for name, value, low in (("classes", classes, 1), ("per_class", per_class, 1), ("size", size, 16),
                             ("start_index", start_index, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if classes > 100:
        raise ValueError(f"classes must be at most 100 (class-00 ... class-99), got {classes}")
    try:
        low, high = (float(v) for v in object_scale)
    except (TypeError, ValueError):
        raise ValueError(f"object_scale must be a (min, max) pair, got {object_scale!r}") from None
    if not (0 < low <= high <= 1):
        raise ValueError(f"object_scale must satisfy 0 < min <= max <= 1, got {object_scale!r}")
    if not (isinstance(max_rotation, (int, float)) and 0 <= max_rotation <= 180):
        raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation!r}")
    turn = math.radians(min(float(max_rotation), 45.0))
    if high * (math.cos(turn) + math.sin(turn)) > 1:
        raise ValueError(f"an object of side {high} * size turned by up to {max_rotation} degrees does not fit "
                         f"in the image: lower object_scale or max_rotation")
    return low, high


def _check_empty_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out}: folder is not empty; give a new or empty folder (nothing is ever overwritten)")


def _background(backgrounds: list[torch.Tensor], size: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    index = int(rng.integers(len(backgrounds)))
    photo = backgrounds[index]
    _, height, width = photo.shape
    side = max(1, int(round(rng.uniform(*_ZOOM) * min(height, width))))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    mirror = bool(rng.random() < 0.5)
    crop = _resize(photo[:, top : top + side, left : left + side], size, size)
    if mirror:
        crop = crop.flip(-1)
    return crop, {"background": index, "crop": [left, top, side], "mirror": mirror}


def _paste(background: torch.Tensor, rgb: torch.Tensor, alpha: torch.Tensor, angle_deg: float,
           centre: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the (3, s, s) object ``rgb`` with (s, s) ``alpha`` turned by ``angle_deg`` about its
    centre, placed with its centre at ``centre`` (continuous pixel coordinates) onto the (3, S, S)
    background. Returns the (3, S, S) image and the (S, S) alpha on the image."""
    size, side = background.shape[-1], rgb.shape[-1]
    premultiplied = torch.cat([rgb * alpha, alpha[None]], dim=0)  # no dark fringe when resampled
    t = math.radians(angle_deg)
    cos, sin = math.cos(t), math.sin(t)
    pixels = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(pixels - centre[1], pixels - centre[0], indexing="ij")
    u = cos * x + sin * y + side / 2  # inverse rotation: image -> object coordinates
    v = -sin * x + cos * y + side / 2
    grid = torch.stack([u / side * 2 - 1, v / side * 2 - 1], dim=-1)[None]
    warped = F.grid_sample(premultiplied[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    placed_alpha = warped[3].clamp(0, 1)
    image = background * (1 - placed_alpha) + warped[:3]
    return image.clamp(0, 1), placed_alpha


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8))


def _write_images(out: Path, names: list[str], object_rgb: list[torch.Tensor], backgrounds: list[torch.Tensor],
                  patches: list[dict], *, size: int, scale: tuple[float, float], max_rotation: float, seed: int,
                  start_index: int, per_class: int) -> tuple[dict, dict, dict]:
    """Render and write every image; (boxes, shares, placements) by relative path."""
    from PIL import Image

    low, high = scale
    boxes: dict[str, tuple[float, float, float, float]] = {}
    shares: dict[str, float] = {}
    placements: dict[str, dict] = {}
    for c, name in enumerate(names):
        (out / name).mkdir()
        for index in range(start_index, start_index + per_class):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), c, index]))
            background, where = _background(backgrounds, size, rng)
            side = max(4, int(round(rng.uniform(low, high) * size)))
            rgb = _resize(object_rgb[c], side, side)
            mean = rgb.mean()
            contrast, brightness = rng.uniform(*_CONTRAST), rng.uniform(-_BRIGHTNESS, _BRIGHTNESS)
            rgb = ((rgb - mean) * float(contrast) + mean + float(brightness)).clamp(0, 1)
            alpha = _ellipse_mask(side, patches[c]["ellipse_ratio"], patches[c]["ellipse_angle"])
            angle = float(rng.uniform(-max_rotation, max_rotation))
            t = math.radians(angle)
            half = side / 2 * (abs(math.cos(t)) + abs(math.sin(t)))  # the turned square's half extent
            low_c, high_c = min(half, size / 2), max(size - half, size / 2)
            cx, cy = (float(rng.uniform(low_c, high_c)) for _ in range(2))
            image, placed = _paste(background, rgb, alpha, angle, (cx, cy))
            visible = (placed > 0.5 / 255).numpy()
            rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
            rel = f"{name}/{index:04d}.png"
            boxes[rel] = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            shares[rel] = float((placed >= 0.5).float().mean())
            placements[rel] = {**where, "side": side, "angle": angle, "centre": [cx, cy],
                               "contrast": float(contrast), "brightness": float(brightness)}
            Image.fromarray(_to_uint8(image)).save(out / rel, format="PNG", compress_level=1)

    return boxes, shares, placements


def make_synthetic_landmarks(out: str | os.PathLike, object_photos: Sequence[str | os.PathLike | np.ndarray],
                             background_photos: Sequence[str | os.PathLike | np.ndarray], *, classes: int = 8,
                             per_class: int = 12, size: int = 160, object_scale: tuple[float, float] = (0.3, 0.55),
                             max_rotation: float = 30.0, seed: int = 0, start_index: int = 0,
                             object_seed: int | None = None) -> SyntheticLandmarks:
    """Write ``classes x per_class`` synthetic landmark images (PNG, ``size x size`` RGB) into ``out``.

    Args:
        out: a new or empty folder.
        object_photos: photos the class objects are cut from (fewer than ``classes``: several
            non-overlapping patches per photo).
        background_photos: the background pool shared by every class.
        classes, per_class: class count (at most 100) and images per class.
        size: image side in pixels (>= 16).
        object_scale: object side range, as a fraction of ``size`` (``0 < min <= max <= 1``; the
            turned object must fit in the image).
        max_rotation: object rotation range, +- degrees.
        seed: the images' randomness.
        start_index: index of the first image of each class (files ``<class>/<index:04d>.png``).
        object_seed: the objects' randomness (patch positions, mask shapes); ``seed`` when None.

    Returns:
        The written set (also in ``out/synthetic-landmarks.json``).

    Raises:
        ValueError: bad settings, an unreadable or too small photo, or ``out`` is a file or a
        non-empty folder.
    """
    out = Path(out)
    low, high = _check_settings(classes, per_class, size, object_scale, max_rotation, start_index)
    if not object_photos or not background_photos:
        raise ValueError("give at least one object photo and one background photo")
    _check_empty_folder(out)
    object_seed = seed if object_seed is None else object_seed
    objects = [_load(p) for p in object_photos]
    backgrounds = [_load(p) for p in background_photos]
    patches = _object_patches([a for a, _ in objects], classes, np.random.default_rng([int(object_seed), 0x0B]))
    object_rgb = []
    for patch in patches:
        array = objects[patch["photo"]][0]
        x, y, side = patch["x"], patch["y"], patch["side"]
        object_rgb.append(_to_tensor(array[y : y + side, x : x + side]))
    background_tensors = [_to_tensor(a) for a, _ in backgrounds]
    names = [f"class-{c:02d}" for c in range(classes)]

    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and never stalls on a busy machine
    try:
        boxes, shares, placements = _write_images(out, names, object_rgb, background_tensors, patches, size=size,
                                                  scale=(low, high), max_rotation=float(max_rotation),
                                                  seed=int(seed), start_index=start_index, per_class=per_class)
    finally:
        torch.set_num_threads(threads)

    settings = {"classes": classes, "per_class": per_class, "size": size, "object_scale": [low, high],
                "max_rotation": float(max_rotation), "seed": int(seed), "start_index": start_index,
                "object_seed": int(object_seed), "object_photos": [n for _, n in objects],
                "background_photos": [n for _, n in backgrounds], "objects": patches}
    manifest = {"format": FORMAT, "version": 1, "classes": names, "settings": settings,
                "images": {rel: {"box": list(boxes[rel]), "object_share": shares[rel], **placements[rel]}
                           for rel in boxes}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return SyntheticLandmarks(out, boxes, shares, names, {**settings, "images": placements})


def load_synthetic_landmarks(root: str | os.PathLike) -> SyntheticLandmarks:
    """The set written by `make_synthetic_landmarks` into ``root``.

    Raises:
        ValueError: no readable manifest, not this format, or images it lists are missing.
    """
    root = Path(root)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a synthetic landmark manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != 1:
        raise ValueError(f"{path}: not a {FORMAT} version 1 manifest")
    images = manifest["images"]
    missing = [rel for rel in images if not (root / rel).is_file()]
    if missing:
        raise ValueError(f"{root}: {len(missing)} image(s) of the manifest are missing, e.g. {missing[0]}")
    boxes = {rel: tuple(float(v) for v in entry["box"]) for rel, entry in images.items()}
    shares = {rel: float(entry["object_share"]) for rel, entry in images.items()}
    placements = {rel: {k: v for k, v in entry.items() if k not in ("box", "object_share")}
                  for rel, entry in images.items()}
    return SyntheticLandmarks(root, boxes, shares, list(manifest["classes"]),
                              {**manifest["settings"], "images": placements})
