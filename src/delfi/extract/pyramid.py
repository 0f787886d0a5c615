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
        image: (1, C, H, W) the original image (already normalised).
        levels: from e.g. `r2d2_levels`; levels[0] must be the original size.
        resize: ``"chained"`` resizes each level from the previous one (as the official R2D2 code
            does), ``"from_original"`` resizes every level from the original image.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    current = image
    for index, level in enumerate(levels):
        if index > 0:
            source = current if resize == "chained" else image
            if resize == "chained" or level.process:
                current = resize_bilinear(source, level.size)
        if level.process:
            yield level, current


def level_factors(original_size: tuple[int, int], level_size: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) mapping level pixels to original pixels: original / level size per axis."""
    return original_size[0] / level_size[0], original_size[1] / level_size[1]
