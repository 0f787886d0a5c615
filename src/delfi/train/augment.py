"""Image augmentations of the DELF / DELG training recipes, deterministic for a numpy Generator.

Every random choice is drawn from the ``numpy.random.Generator`` passed in, so an item's
augmentation depends only on how that generator was seeded (e.g. ``SeedSequence([seed, epoch,
index])``), not on worker processes or torch's global state. Images are float32 ``(3, H, W)``
tensors in ``[0, 1]`` (any channel count works); resizing is bilinear with antialiasing
(``align_corners=False``), so downscaling does not alias.

- `random_resized_crop`: the Inception-style crop of TF's ``sample_distorted_bounding_box`` /
  torchvision's ``RandomResizedCrop`` (DELG, DELF's TF recipe).
- `resize_random_crop` / `resize_center_crop`: DeLF-pytorch's training / validation transforms.
- `random_flip`: horizontal flip.
- `gamma_scale_factor` + `scale_batch`: DELF's keypoint-stage scaling: the whole batch rescaled by
  one factor uniform in ``[0.3535, 1]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gamma_scale_factor", "random_flip", "random_resized_crop", "resize_center_crop", "resize_image",
           "resize_random_crop", "scale_batch"]


def _image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or not image.is_floating_point():
        raise ValueError(f"expected a float (3, H, W) image tensor, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")
    return image.float()


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _range(bounds: tuple[float, float], name: str, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair, got {bounds!r}") from None
    if not (low < a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} < min <= max <= {high}, got {bounds!r}")
    return a, b


def resize_image(image: Tensor, height: int, width: int) -> Tensor:
    """(C, H, W) -> (C, height, width), bilinear with antialiasing; the input itself (as float32)
    when it already has that size."""
    image = _image(image)
    if image.shape[1:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def random_resized_crop(image: Tensor, size: int, rng: np.random.Generator,
                        area: tuple[float, float] = (0.08, 1.0), aspect: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> Tensor:
    """A random crop of random area and aspect ratio, resized to ``size x size``.

    Up to ``attempts`` times: an area fraction uniform in ``area`` (of the image's ``H * W``) and an
    aspect ratio (width / height) log-uniform in ``aspect``; the first box that fits in the image is
    taken, at a uniform position. If none fits, the whole-height or whole-width central crop with
    the image's aspect ratio clamped to ``aspect``.

    Args:
        image: (3, H, W) float32.
        size: output side in pixels.
        rng: the generator of every random draw (``2 * attempts`` draws at most plus 2 for the position).
        area: (min, max) area fraction, ``0 < min <= max <= 1``.
        aspect: (min, max) width / height ratio, ``0 < min <= max``.
        attempts: tries before the central fallback (0: always the fallback).

    Returns:
        (3, size, size) float32.
    """
    image = _image(image)
    size = _positive(size, "size")
    area_low, area_high = _range(area, "area", 0.0, 1.0)
    aspect_low, aspect_high = _range(aspect, "aspect", 0.0, math.inf)
    if isinstance(attempts, bool) or not isinstance(attempts, (int, np.integer)) or attempts < 0:
        raise ValueError(f"attempts must be an integer >= 0, got {attempts!r}")
    _, height, width = image.shape
    log_low, log_high = math.log(aspect_low), math.log(aspect_high)
    for _ in range(int(attempts)):
        target = height * width * rng.uniform(area_low, area_high)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return resize_image(image[:, top : top + h, left : left + w], size, size)
    ratio = width / height
    if ratio < aspect_low:
        w, h = width, max(1, min(height, int(round(width / aspect_low))))
    elif ratio > aspect_high:
        w, h = max(1, min(width, int(round(height * aspect_high)))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return resize_image(image[:, top : top + h, left : left + w], size, size)


def resize_random_crop(image: Tensor, resize: int, crop: int, rng: np.random.Generator) -> Tensor:
    """DeLF-pytorch's training transform: the image resized to ``resize x resize`` (both sides, so
    the aspect ratio is *not* kept), then a uniformly placed ``crop x crop`` crop.

    Args:
        image: (3, H, W) float32.
        resize: side of the resized square image.
        crop: side of the crop, ``crop <= resize``.
        rng: draws the crop's position (2 draws).

    Returns:
        (3, crop, crop) float32.
    """
    side, crop = _positive(resize, "resize"), _positive(crop, "crop")
    if crop > side:
        raise ValueError(f"crop ({crop}) must not exceed resize ({side})")
    square = _resize_square(image, side)
    top = int(rng.integers(0, side - crop + 1))
    left = int(rng.integers(0, side - crop + 1))
    return square[:, top : top + crop, left : left + crop]


def resize_center_crop(image: Tensor, resize: int, crop: int) -> Tensor:
    """Validation transform: resized to ``resize x resize`` (both sides), then the central
    ``crop x crop`` crop (top-left corner at ``(resize - crop) // 2``).

    Args:
        image: (3, H, W) float32.

    Returns:
        (3, crop, crop) float32.
    """
    side, crop = _positive(resize, "resize"), _positive(crop, "crop")
    if crop > side:
        raise ValueError(f"crop ({crop}) must not exceed resize ({side})")
    square = _resize_square(image, side)
    start = (side - crop) // 2
    return square[:, start : start + crop, start : start + crop]


def _resize_square(image: Tensor, side: int) -> Tensor:
    return resize_image(image, side, side)


def random_flip(image: Tensor, rng: np.random.Generator, p: float = 0.5) -> Tensor:
    """(3, H, W) flipped left-right with probability ``p`` (one draw from ``rng`` whatever ``p``)."""
    image = _image(image)
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return image.flip(-1) if rng.random() < p else image


def gamma_scale_factor(rng: np.random.Generator, low: float = 0.3535, high: float = 1.0) -> float:
    """DELF's random image scale for a keypoint-stage batch: uniform in ``[low, high]``
    (``0.3535 ~ 1 / (2 sqrt 2)``). One draw."""
    low, high = _range((low, high), "(low, high)", 0.0, math.inf)
    return float(rng.uniform(low, high))


def scale_batch(images: Tensor, factor: float, multiple: int = 1) -> Tensor:
    """A batch rescaled by ``factor`` (bilinear, antialiased).

    The new side is ``round(side * factor)`` rounded to the nearest multiple of ``multiple`` and at
    least ``multiple``: ``h = max(multiple, multiple * round(H * factor / multiple))``, likewise w.

    Args:
        images: (B, 3, H, W) float.
        factor: scale, > 0.
        multiple: the sides are multiples of it (a network's stride), >= 1.

    Returns:
        (B, 3, h, w) float32; ``images`` itself (as float32) when the size does not change.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected a float (B, 3, H, W) batch, got {getattr(images, 'shape', type(images).__name__)}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
    multiple = _positive(multiple, "multiple")
    height, width = images.shape[-2:]
    h = max(multiple, multiple * round(height * factor / multiple))
    w = max(multiple, multiple * round(width * factor / multiple))
    images = images.float()
    if (h, w) == (height, width):
        return images
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
