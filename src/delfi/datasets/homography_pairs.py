"""Training pairs for R2D2-style self-supervision: synthetic homography pairs made from single
photos (`HomographyPairs`) and real pairs with a given dense flow (`FlowPairs`).

Each item is a dict of fixed-size tensors (default collation works):
    ``image1``, ``image2``  (3, S, S) float32 RGB in [0, 1]   (S = ``crop_size``, 192)
    ``flow``                (2, S, S) float32: for each pixel of crop 1 its (x, y) in crop 2
                            (delfi's convention: pixel centres at integers). Finite everywhere.
    ``mask``                (S, S) bool: the flow is valid (inside image 1 and inside crop 2,
                            ``0 <= x, y <= S - 1``); the one source of validity.
    ``homography``          (3, 3) float64 crop 1 -> crop 2 (all NaN for `FlowPairs`).
    ``index``               int64 item index.

Synthetic pairs (after the official ``auto_pairs`` + ``PairLoader`` pipeline), per item:
1. image 1: the photo resized so that its longest side is uniform in [min_size, max_size];
2. image 2 = image 1 seen through ``S2 @ R @ T``: ``T`` a keystone tilt (one random edge shortened
   to ``L / (L + 2 s)``, ``s`` uniform in [0, tilt * max(w, h)], the edge-length ratio of
   R2D2's ``RandomTilting``), ``R`` a rotation uniform in +-``max_rotation`` degrees about the
   centre, ``S2`` a second random scale (longest side again uniform in [min_size, max_size]);
3. order: the pair is ordered so that crop 1 comes from the finer of the two views (the map
   crop 1 -> crop 2 shrinks at the image centre), so that all of crop 1 can land inside crop 2
   (zooming in by s would cap the valid fraction at 1 / s**2); each view's size distribution is
   unchanged. Photometric changes (step 5) always go to image 2;
4. crops: ``crop_trials`` candidate windows in image 1, each with the window of image 2 centred on
   the homography image of its centre (+ ``crop_offset`` jitter, clamped inside image 2); the
   best by valid fraction wins, candidates whose local scale change leaves (0.2, 5) only when
   nothing else is left. Both crops are rendered from the resized photo by
   `kornia.geometry.transform.warp_perspective` (bilinear; the photo is first shrunk with
   antialiasing where the warp would shrink it), black outside the photo and the view's frame;
5. image 2 only: uniform pixel noise of ``noise`` intensity levels peak to peak (on 0..255;
   added after the warp, the official code adds it before its second rescale), then colour
   jitter (brightness, contrast, saturation, hue) = (0.2, 0.2, 0.2, 0.1) in random order.

Randomness: every item draws from ``numpy.random.SeedSequence([seed, epoch, index])``, so an item
is the same whatever the worker count or order; `set_epoch` changes the draw per epoch (it
reaches worker processes when they are re-created each epoch, ``persistent_workers=False``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from delfi.datasets.pair_geometry import (
    color_jitter,
    crop_with_padding,
    flow_from_homography,
    jacobian_scale,
    project,
    resize,
    rotation_about_centre,
    scale_matrix,
    tilt_homography,
    translation,
)
from delfi.io.images import ImageError, collect_images, read_image

__all__ = ["FlowPairs", "HomographyPairs", "PairConfig", "make_homography_pair"]


def __getattr__(name: str):
    if name == "FlowPairs":  # lives in flow_pairs.py (which imports this module's helpers)
        from delfi.datasets.flow_pairs import FlowPairs

        return FlowPairs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PairConfig:
    """Augmentation settings (defaults: the official R2D2 training data)."""

    crop_size: int = 192
    min_size: int = 256  # longest side of each image, uniform in [min_size, max_size]
    max_size: int = 1024
    scale_image2: bool = True  # image 2 gets its own random scale
    tilt: float = 0.5
    max_rotation: float = 10.0  # degrees (the official pipeline has none)
    noise: float = 25.0  # peak-to-peak uniform noise on 0..255; 0 = off
    jitter: tuple[float, float, float, float] | None = (0.2, 0.2, 0.2, 0.1)  # None = off
    crop_trials: int = 50
    crop_offset: float = 0.1  # crop 2 centre jitter, as a fraction of crop_size
    scale_range: tuple[float, float] = (0.2, 5.0)

    def __post_init__(self) -> None:
        if self.crop_size < 8 or not 8 <= self.min_size <= self.max_size:
            raise ValueError(f"need crop_size >= 8 and 8 <= min_size <= max_size; got {self}")
        if self.tilt < 0 or self.noise < 0 or self.crop_trials < 1:
            raise ValueError(f"tilt and noise must be >= 0 and crop_trials >= 1; got {self}")


def item_rng(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """The per-item random sources: a numpy Generator and a torch Generator derived from it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def jitter_and_noise(image: torch.Tensor, config: PairConfig, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Image 2's photometric changes: pixel noise, then colour jitter (random factors and order)."""
    if config.noise:
        noise = (torch.rand(image.shape, generator=gen) - 0.5) * (config.noise / 255)
        image = (image + noise).clamp(0, 1)
    if config.jitter:
        b, c, s, h = config.jitter
        factors = [rng.uniform(max(0, 1 - v), 1 + v) for v in (b, c, s)] + [rng.uniform(-h, h)]
        image = color_jitter(image, *factors, order=rng.permutation(4).tolist())
    return image


class EpochPairs(Dataset):
    """Base of the pair datasets: item ``index`` is a function of ``(seed, epoch, index)``."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> tuple[np.random.Generator, torch.Generator]:
        """`item_rng` of item ``index`` of the current epoch (IndexError outside the dataset)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return item_rng(self.seed, self.epoch, index)


def window_offsets(limit: int, c: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random start offsets of a ``c``-pixel window along an axis of ``limit`` pixels
    (centred, negative, when the axis is shorter than the window)."""
    return rng.integers(0, limit - c + 1, n) if limit >= c else np.full(n, (limit - c) // 2)


def clamp_corners(corners: np.ndarray, size, c: int) -> np.ndarray:
    """(T, 2) top-left corners of ``c``-pixel windows kept inside an image of ``size`` (w, h),
    centred on an axis shorter than the window (in place; returned)."""
    for axis, limit in ((0, size[0]), (1, size[1])):
        corners[:, axis] = np.clip(corners[:, axis], 0, limit - c) if limit >= c else (limit - c) // 2
    return corners


def check_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Decode every image once: (usable paths, [(path, reason)] of the unreadable ones)."""
    usable, skipped = [], []
    for path in paths:
        try:
            read_image(path)
            usable.append(Path(path))
        except ImageError as e:
            skipped.append((e.path, e.reason))
    return usable, skipped


class HomographyPairs(EpochPairs):
    """Synthetic pairs from single photos (see the module docstring); one pair per image.

    Args:
        images: image files, folders (searched recursively) or ``.txt`` lists (`collect_images`).
        config: `PairConfig`.
        seed: base seed; items are functions of (seed, epoch, index).
        min_images: refuse (ValueError) fewer usable images than this.

    Attributes:
        skipped: [(path, reason)] of the unreadable images (reported, left out).
    """

    def __init__(
        self,
        images: Sequence[str | os.PathLike] | str | os.PathLike,
        config: PairConfig = PairConfig(),
        seed: int = 0,
        min_images: int = 1,
    ) -> None:
        inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        entries = collect_images(inputs)
        self.paths, self.skipped = check_images([e.path for e in entries])
        self.config, self.seed, self.epoch = config, seed, 0
        for path, reason in self.skipped:
            warnings.warn(f"skipping unreadable training image {path}: {reason}", stacklevel=2)
        if len(self.paths) < min_images:
            found = f"{len(self.paths)} usable image(s) of {len(entries)} found in {', '.join(map(str, inputs))}"
            why = "; unreadable: " + "; ".join(f"{p}: {r}" for p, r in self.skipped[:5]) if self.skipped else ""
            raise ValueError(f"homography pairs need at least {min_images} usable image(s); {found}{why}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, gen = self.rng_for(index)
        for step in range(len(self)):  # an image broken since construction: the next one, deterministically
            path = self.paths[(index + step) % len(self)]
            try:
                image = read_image(path)
                break
            except ImageError as e:
                warnings.warn(f"skipping unreadable training image {e.path}: {e.reason}", stacklevel=2)
        else:
            raise ValueError("no training image is readable any more")
        item = make_homography_pair(image, self.config, rng, gen)
        item["index"] = torch.tensor(index)
        return item


def _sample_homography(width: int, height: int, config: PairConfig, rng: np.random.Generator):
    """(photo -> second view homography, the second view's size (w, h))."""
    tilt = tilt_homography(width, height, int(rng.integers(4)), rng.uniform(0, config.tilt * max(width, height)))
    rotation = rotation_about_centre(width, height, rng.uniform(-config.max_rotation, config.max_rotation))
    factor = rng.uniform(config.min_size, config.max_size) / max(width, height) if config.scale_image2 else 1.0
    w2, h2 = max(1, round(width * factor)), max(1, round(height * factor))
    return scale_matrix(w2 / width, h2 / height) @ rotation @ tilt, (w2, h2)


def _inside(points: np.ndarray, size) -> np.ndarray:
    return (points[..., 0] >= 0) & (points[..., 1] >= 0) & (points[..., 0] <= size[0] - 1) & (points[..., 1] <= size[1] - 1)


def choose_crops(frame1, frame2, base_size, config: PairConfig, rng: np.random.Generator):
    """Top-left corners (x1, y1), (x2, y2) of the best of ``crop_trials`` candidate crop pairs and
    its valid fraction (on a stride-8 grid of crop 1). A frame is (matrix base -> frame, (w, h))."""
    c, trials = config.crop_size, config.crop_trials
    (m1, (w1, h1)), (m2, (w2, h2)) = frame1, frame2
    h12 = m2 @ np.linalg.inv(m1)

    x1, y1 = window_offsets(w1, c, trials, rng), window_offsets(h1, c, trials, rng)
    centres = np.stack([x1, y1], 1) + (c - 1) / 2
    target, _ = project(h12, centres)
    shift = rng.uniform(-config.crop_offset, config.crop_offset, (trials, 2)) * c
    corner2 = clamp_corners(np.round(target - (c - 1) / 2 + shift), (w2, h2), c)
    grid = np.arange(4, c, 8, dtype=np.float64)
    gv, gu = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([gu.ravel(), gv.ravel()], -1)[None] + np.stack([x1, y1], 1)[:, None]  # (T, G, 2)
    base, w_base = project(np.linalg.inv(m1), points)
    mapped, w = project(h12, points)
    local = mapped - corner2[:, None]
    valid = (w > 0) & (w_base > 0) & _inside(points, (w1, h1)) & _inside(base, base_size) & _inside(mapped, (w2, h2))
    valid &= _inside(local, (c, c))
    fraction = valid.mean(1)
    scale = jacobian_scale(h12, centres)
    in_range = (scale > config.scale_range[0]) & (scale < config.scale_range[1])
    best = int(np.argmax(fraction - (~in_range)))
    return (int(x1[best]), int(y1[best])), (int(corner2[best, 0]), int(corner2[best, 1])), float(fraction[best])


def _render(base: torch.Tensor, matrix: np.ndarray, size, corner, c: int) -> torch.Tensor:
    """The (3, c, c) crop at ``corner`` of the frame ``base`` seen through ``matrix`` (base -> frame),
    black outside the base image and outside the frame; antialiased when the warp shrinks."""
    from kornia.geometry.transform import warp_perspective

    to_crop = translation(-corner[0], -corner[1]) @ matrix
    centre, _ = project(np.linalg.inv(to_crop), np.array([(c - 1) / 2, (c - 1) / 2]))
    shrink = float(min(1.0, jacobian_scale(to_crop, centre)))
    source, to_source = base, np.eye(3)
    if shrink < 0.9:
        h0, w0 = base.shape[-2:]
        sw, sh = max(1, round(w0 * shrink)), max(1, round(h0 * shrink))
        source, to_source = resize(base, sw, sh), scale_matrix(sw / w0, sh / h0)
    warp = torch.from_numpy(to_crop @ np.linalg.inv(to_source)).float()[None]
    crop = warp_perspective(source[None], warp, (c, c), align_corners=True)[0]
    frame = crop_with_padding(torch.ones(1, size[1], size[0]), corner[0], corner[1], c)
    return (crop * frame).clamp(0, 1)


def make_homography_pair(image: torch.Tensor, config: PairConfig, rng: np.random.Generator, gen: torch.Generator) -> dict:
    """One synthetic pair from a (3, H, W) image (see the module docstring)."""
    _, H, W = image.shape
    factor = rng.uniform(config.min_size, config.max_size) / max(H, W)
    w0, h0 = max(1, round(W * factor)), max(1, round(H * factor))
    base = resize(image, w0, h0)
    warp, warped_size = _sample_homography(w0, h0, config, rng)
    frames = [(np.eye(3), (w0, h0)), (warp, warped_size)]
    if jacobian_scale(warp, np.array([(w0 - 1) / 2, (h0 - 1) / 2])) > 1:
        frames.reverse()  # crop 1 from the finer view, so that all of it can land in crop 2
    c = config.crop_size
    corner1, corner2, _ = choose_crops(frames[0], frames[1], (w0, h0), config, rng)
    to1 = translation(-corner1[0], -corner1[1]) @ frames[0][0]
    to2 = translation(-corner2[0], -corner2[1]) @ frames[1][0]
    crop_h = to2 @ np.linalg.inv(to1)  # crop 1 -> crop 2
    crop1 = _render(base, frames[0][0], frames[0][1], corner1, c)
    crop2 = _render(base, frames[1][0], frames[1][1], corner2, c)
    flow, mask = flow_from_homography(crop_h, c)
    # crop-1 pixels must show the photo: inside frame 1 and inside the base image
    v, u = np.mgrid[0:c, 0:c].astype(np.float64)
    pixels = np.stack([u, v], -1)
    base_xy, w_base = project(np.linalg.inv(to1), pixels)
    frame_xy = pixels + np.asarray(corner1, np.float64)
    target_xy = flow.permute(1, 2, 0).double().numpy() + np.asarray(corner2, np.float64)
    shows = (w_base > 0) & _inside(base_xy, (w0, h0)) & _inside(frame_xy, frames[0][1]) & _inside(target_xy, frames[1][1])
    mask &= torch.from_numpy(shows)
    return {
        "image1": crop1.contiguous(),
        "image2": jitter_and_noise(crop2, config, rng, gen).contiguous(),
        "flow": flow,
        "mask": mask,
        "homography": torch.from_numpy(crop_h),
    }
