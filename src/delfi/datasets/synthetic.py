"""Synthetic image pairs related by a known homography (demos, tests, self-supervised training)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def textured_image(width: int = 640, height: int = 480, seed: int = 0) -> Tensor:
    """A random scene with blobs, rectangles and multi-scale texture: (3, H, W) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32) + rng.uniform(0.2, 0.8, 3).astype(np.float32)
    for _ in range(40):  # soft blobs
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 80)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        image = image * (1 - weight) + weight * rng.uniform(0, 1, 3)
    for _ in range(60):  # hard-edged rectangles: corners and edges
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(8, 90), rng.integers(8, 90)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, 3)
    for scale in (4, 16, 64):  # band-limited noise texture
        noise = torch.from_numpy(rng.standard_normal((1, 3, height // scale + 2, width // scale + 2)).astype(np.float32))
        up = F.interpolate(noise, (height, width), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
        image += 0.04 * up
    return torch.from_numpy(np.clip(image, 0, 1).astype(np.float32).transpose(2, 0, 1).copy())


def random_homography(width: int, height: int, seed: int = 0, strength: float = 0.15) -> np.ndarray:
    """A plausible viewpoint change: corners moved by up to ``strength`` of the image size.

    Returns:
        (3, 3) float64 homography mapping pixels of the first image to the second (delfi's convention).
    """
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    moved = corners + rng.uniform(-strength, strength, (4, 2)) * [width, height]
    return homography_from_points(corners, moved)


def homography_from_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The homography (h33 = 1) mapping four (4, 2) source points exactly onto four target points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def warp_image(image: Tensor, homography: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
    """Warp (3, H, W) by ``homography`` (source -> target pixels) into a (3, h, w) target image.

    Pixels that come from outside the source are black.
    """
    _, height, width = image.shape
    out_w, out_h = size or (width, height)
    inverse = torch.from_numpy(np.linalg.inv(homography)).float()
    y, x = torch.meshgrid(torch.arange(out_h, dtype=torch.float32), torch.arange(out_w, dtype=torch.float32), indexing="ij")
    target = torch.stack([x, y, torch.ones_like(x)], dim=-1) @ inverse.T
    source = target[..., :2] / target[..., 2:]
    grid = torch.stack([(source[..., 0] + 0.5) / width * 2 - 1, (source[..., 1] + 0.5) / height * 2 - 1], dim=-1)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]
