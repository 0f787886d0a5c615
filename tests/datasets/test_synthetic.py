"""Synthetic homography pairs: the homography is exact and the warp follows delfi's convention."""

from __future__ import annotations

import numpy as np
import torch

from delfi.datasets.synthetic import homography_from_points, random_homography, textured_image, warp_image


def test_homography_from_points_maps_the_four_points():
    source = np.array([[0, 0], [99, 0], [99, 49], [0, 49]], float)
    target = np.array([[3, 1], [90, -4], [101, 55], [-2, 47]], float)
    h = homography_from_points(source, target)
    projected = np.c_[source, np.ones(4)] @ h.T
    np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], target, atol=1e-9)


def test_warp_moves_pixels_where_the_homography_says():
    image = textured_image(120, 90, seed=3)
    assert image.shape == (3, 90, 120) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    shift = np.array([[1, 0, 7], [0, 1, -4], [0, 0, 1]], float)  # integer translation: exact resampling
    warped = warp_image(image, shift)
    torch.testing.assert_close(warped[:, 10:80, 7:110], image[:, 14:84, 0:103])
    assert warped[:, 87:, :].abs().sum() == 0  # rows that come from outside the source are black


def test_random_homography_is_deterministic_and_moderate():
    a, b = random_homography(640, 480, seed=5), random_homography(640, 480, seed=5)
    np.testing.assert_array_equal(a, b)
    corners = np.array([[0, 0, 1], [639, 479, 1]], float) @ a.T
    moved = corners[:, :2] / corners[:, 2:] - [[0, 0], [639, 479]]
    assert np.abs(moved).max() <= 0.15 * 640 + 1e-6
