"""Corner error, homography accuracy and the corner / centre homography conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from delfi.eval.homography import (
    convert_homography,
    corner_error,
    homography_accuracy,
    image_corners,
    translation,
)


def _project(H, p):
    q = np.c_[p, np.ones(len(p))] @ np.asarray(H, dtype=np.float64).T
    return q[:, :2] / q[:, 2:]


P = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, -2.0], [2e-4, -1e-4, 1.0]])


def test_corner_error_hand_cases():
    size = (640, 480)
    assert corner_error(np.eye(3), np.eye(3), size) == 0.0
    assert corner_error(translation(0) @ P, P, size) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]])
    assert corner_error(shift, np.eye(3), size) == pytest.approx(2.0)
    assert corner_error(np.eye(3), shift, size) == pytest.approx(2.0)
    diagonal = np.array([[1, 0, 3.0], [0, 1, 4.0], [0, 0, 1]])
    assert corner_error(diagonal, np.eye(3), size) == pytest.approx(5.0)
    # scale by 2: corners (0,0),(639,0),(639,479),(0,479) move by 0, 639, |(639,479)|, 479
    expected = (0 + 639 + math.hypot(639, 479) + 479) / 4
    assert corner_error(np.diag([2.0, 2.0, 1.0]), np.eye(3), size) == pytest.approx(expected)
    # a homography is defined up to scale; tensors are accepted
    assert corner_error(torch.from_numpy(-3.0 * P), P, size) == pytest.approx(0.0, abs=1e-9)


def test_corner_error_failures_are_inf():
    size = (100, 80)
    assert corner_error(None, np.eye(3), size) == math.inf
    assert corner_error(np.zeros((3, 3)), np.eye(3), size) == math.inf
    assert corner_error(np.array([[1, 2, 3], [2, 4, 6], [0, 0, 1.0]]), np.eye(3), size) == math.inf  # singular
    assert corner_error(np.full((3, 3), np.nan), np.eye(3), size) == math.inf
    at_infinity = np.array([[1, 0, 0], [0, 1, 0], [1, 0, -99.0]])  # w = 0 at the corner x = 99
    assert corner_error(at_infinity, np.eye(3), size) == math.inf
    with pytest.raises(ValueError, match="3, 3"):
        corner_error(np.eye(2), np.eye(3), size)


def test_image_corners():
    np.testing.assert_array_equal(image_corners((4, 3)), [[0, 0], [3, 0], [3, 2], [0, 2]])


def test_homography_accuracy():
    acc = homography_accuracy([0.5, 2.0, 3.0, 4.9, math.inf, float("nan"), None, 100.0])
    assert acc == {1: pytest.approx(1 / 8), 3: pytest.approx(3 / 8), 5: pytest.approx(4 / 8)}
    assert homography_accuracy([1.0], thresholds=(1, 2)) == {1: 1.0, 2: 1.0}
    assert math.isnan(homography_accuracy([])[3])


def test_convert_homography_exact_formula_and_round_trip():
    T = lambda d: np.array([[1, 0, d], [0, 1, d], [0, 0, 1.0]])  # noqa: E731
    centre = convert_homography(P, "corner", "centre")
    np.testing.assert_allclose(centre, T(-0.5) @ P @ T(0.5), rtol=0, atol=1e-15)
    np.testing.assert_allclose(convert_homography(P, "centre", "corner"), T(0.5) @ P @ T(-0.5), rtol=0, atol=1e-15)
    np.testing.assert_allclose(convert_homography(centre, "centre", "corner"), P, atol=1e-12)
    np.testing.assert_array_equal(convert_homography(P, "centre", "center"), P)
    assert convert_homography(torch.from_numpy(P)).dtype == np.float64
    # meaning: a pixel-centre point p is the corner-origin point p + 0.5
    p = np.array([[0.0, 0.0], [10.0, 20.0], [300.5, 7.25]])
    np.testing.assert_allclose(_project(centre, p), _project(P, p + 0.5) - 0.5, atol=1e-9)
    # a pure translation is the same in both conventions; a scale is not
    np.testing.assert_allclose(convert_homography(translation(3.0)), translation(3.0))
    s2 = convert_homography(np.diag([2.0, 2.0, 1.0]))
    np.testing.assert_allclose(_project(s2, np.zeros((1, 2))), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="convention"):
        convert_homography(P, "corner", "middle")


def test_evaluate_sequences_centre_convention(tmp_path):
    from delfi.eval.hpatches import evaluate_sequences, pair_homography
    from delfi.types import Features

    root = tmp_path / "hp"
    (root / "v_scale").mkdir(parents=True)
    H = np.diag([2.0, 2.0, 1.0])
    for k in range(2, 7):
        np.savetxt(root / "v_scale" / f"H_1_{k}", H)
    kp = np.random.default_rng(0).uniform(0, 50, (40, 2))
    desc = torch.eye(40)
    feats = {("v_scale", 1): kp}
    for k in range(2, 7):
        feats[("v_scale", k)] = _project(convert_homography(H), kp)  # exact in pixel-centre coordinates

    def fetch(seq, k):
        return Features(torch.tensor(feats[(seq, k)], dtype=torch.float32), torch.ones(40), desc)

    seen = []
    centre = evaluate_sequences(fetch, root, thresholds=[0.5, 1], homography_convention="centre",
                                on_pair=lambda *args: seen.append(args))  # fmt: skip
    raw = evaluate_sequences(fetch, root, thresholds=[0.5, 1])
    assert centre.mma(0.5) == 1.0 and raw.mma(0.5) == 0.0 and raw.mma(1) == 1.0  # raw is off by 0.707 px
    assert [a[1] for a in seen] == [2, 3, 4, 5, 6] and all(len(a[4]) == 40 for a in seen)
    np.testing.assert_allclose(seen[0][5], pair_homography(root, "v_scale", 2, "centre"))
    np.testing.assert_allclose(pair_homography(root, "v_scale", 2, "raw"), H)
    with pytest.raises(ValueError, match="convention"):
        evaluate_sequences(fetch, root, homography_convention="corner")
