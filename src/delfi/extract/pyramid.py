"""Image pyramids: which scales a method processes and how each level is resized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("chained", "from_original")


@dataclass(frozen=True)
class PyramidLevel:
    """One level of an image pyramid.

    Attributes:
        scale: the nominal scale factor s (level size ~ s * original size).
        size: (width, height) of the level in pixels.
        process: whether features are extracted at this level (levels outside the size / scale
            range are still computed when resizing is chained, but not processed).
    """

    scale: float
    size: tuple[int, int]
    process: bool


def r2d2_levels(
    width: int,
    height: int,
    *,
    scale_f: float = 2**0.25,
    min_scale: float = 0.0,
    max_scale: float = 1.0,
    min_size: int = 256,
    max_size: int = 1024,
) -> list[PyramidLevel]:
    """The R2D2 multi-scale rule (official ``extract_multiscale``).

    Starting at s = 1 and dividing by ``scale_f`` each step, a level exists while
    ``s + 0.001 >= max(min_scale, min_size / max(W, H))`` and is processed when also
    ``s - 0.001 <= min(max_scale, max_size / max(W, H))``. Level k > 0 has size
    ``(round(W * s), round(H * s))``; level 0 is the original image.
    """
    if scale_f <= 1.0:
        raise ValueError(f"scale_f must be > 1, got {scale_f}")
    if max_scale > 1.0:
        raise ValueError(f"max_scale must be <= 1 (no upsampling in R2D2), got {max_scale}")
    longest = max(width, height)
    lowest = max(min_scale, min_size / longest)
    highest = min(max_scale, max_size / longest)
    levels, s, size = [], 1.0, (width, height)
    while s + 0.001 >= lowest:
        levels.append(PyramidLevel(s, size, s - 0.001 <= highest))
        s /= scale_f
        size = (round(width * s), round(height * s))
        if min(size) < 1:
            break
    return levels


def resize_bilinear(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False, no antialiasing) of (B, C, H, W) to (width, height)."""
    return F.interpolate(image, (size[1], size[0]), mode="bilinear", align_corners=False)


def iterate_levels(image: Tensor, levels: list[PyramidLevel], resize: str = "chained") -> Iterator[tuple[PyramidLevel, Tensor]]:
    """Yield ``(level, resized image)`` for the processed levels of ``levels``.

    Args:
        image: (1, C, H, W) the original image (already normalised), or a reduced copy of it (see
            `delfi.io.images.decode_image`) at least as large as the first processed level. Levels
            larger than a reduced copy are not computed (they must not be processed); the first
            level that fits is resized from the copy, and the rest follow ``resize``.
        levels: from e.g. `r2d2_levels`; levels[0] must be the original size.
        resize: ``"chained"`` resizes each level from the previous one (as the official R2D2 code
            does), ``"from_original"`` resizes every level from the original image (or its copy).

    Raises:
        ValueError: an unknown ``resize`` or a processed level larger than a reduced ``image``.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    source_size = (image.shape[-1], image.shape[-2])
    start = 0
    if levels and source_size != levels[0].size:  # a reduced copy: start at the first level that fits
        start = next((i for i, lv in enumerate(levels) if lv.size[0] <= source_size[0] and lv.size[1] <= source_size[1]), len(levels))
        if any(level.process for level in levels[:start]):
            raise ValueError(f"image {source_size} is smaller than a processed pyramid level")
    current = image
    for index, level in enumerate(levels[start:], start=start):
        if index > 0:
            source = current if resize == "chained" else image
            if (resize == "chained" or level.process) and not (index == start and level.size == source_size):
                current = resize_bilinear(source, level.size)
        if level.process:
            yield level, current


def level_factors(original_size: tuple[int, int], level_size: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) mapping level pixels to original pixels: original / level size per axis."""
    return original_size[0] / level_size[0], original_size[1] / level_size[1]
