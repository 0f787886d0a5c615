"""Relative-pose metrics: hand-computed errors and AUCs, epipolar distances, intrinsics under resizing
and np.rot90, the pairs-file reader and its error messages, an OpenCV cross-check."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from delfi.datasets.synthetic_two_view import make_two_view_scene
from delfi.eval.pose import (
    PoseError,
    PosePair,
    epipolar_precision,
    essential_from_pose,
    format_pose_pair,
    inplane_rotation,
    normalise_points,
    pose_auc,
    pose_error,
    pose_errors,
    read_pose_pairs,
    rescale_intrinsics,
    rotate_intrinsics,
    rotate_points,
    rotate_pose,
    rotated_size,
    rotation_error_deg,
    summarise_pose_errors,
    symmetric_epipolar_distance,
    translation_error_deg,
)
from delfi.types import rescale_keypoints

INF = math.inf


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = np.asarray(X, float) @ K.T
    return x[:, :2] / x[:, 2:]


def pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# --- rotation / translation / pose errors ---------------------------------------------------------


def test_rotation_error_of_known_angles():
    assert rotation_error_deg(rot_z(10), np.eye(3)) == pytest.approx(10.0, abs=1e-9)
    assert rotation_error_deg(np.eye(3), rot_x(-25)) == pytest.approx(25.0, abs=1e-9)
    # the angle of R_est^T R_gt: 30 then -10 about the same axis is 40 apart
    assert rotation_error_deg(rot_z(30), rot_z(-10)) == pytest.approx(40.0, abs=1e-9)
    assert rotation_error_deg(rot_z(180), np.eye(3)) == pytest.approx(180.0, abs=1e-9)


def test_rotation_error_is_clipped_against_rounding():
    # trace slightly above 3 (cos > 1) and slightly below -1: no nan
    assert rotation_error_deg(np.eye(3) * (1 + 1e-12), np.eye(3)) == 0.0
    flip = np.diag([-1.0, -1.0, 1.0]) * (1 + 1e-12)  # 180 degrees about z, cos a hair below -1
    assert rotation_error_deg(flip, np.eye(3)) == pytest.approx(180.0)
    assert rotation_error_deg(np.full((3, 3), np.nan), np.eye(3)) == INF
    with pytest.raises(ValueError, match=r"R_est must have shape \(3, 3\)"):
        rotation_error_deg(np.eye(4), np.eye(3))


def test_translation_error_direction_up_to_sign():
    gt = np.array([1.0, 0.0, 0.0])
    assert translation_error_deg([3.0, 0, 0], gt) == 0.0  # scale does not matter
    assert translation_error_deg([-1.0, 0, 0], gt) == 0.0  # flipped sign: 180 -> min(180, 0) = 0
    assert translation_error_deg([0, 1.0, 0], gt) == pytest.approx(90.0)
    assert translation_error_deg([1.0, 1.0, 0], gt) == pytest.approx(45.0)
    assert translation_error_deg([-1.0, 1.0, 0], gt) == pytest.approx(45.0)  # 135 -> min(135, 45)
    assert translation_error_deg(np.array([[0.0], [0.0], [2.0]]), gt) == pytest.approx(90.0)  # (3, 1) is fine


def test_translation_error_degenerate_cases():
    gt = np.array([0.0, 0.0, 0.05])
    assert translation_error_deg([0, 0, 0], gt) == INF  # no direction estimated: a failure
    assert translation_error_deg([np.nan, 0, 0], gt) == INF
    assert translation_error_deg([1.0, 0, 0], gt, ignore_gt_t_below=0.1) == 0.0  # LoFTR's option
    assert translation_error_deg([0, 0, 0], gt, ignore_gt_t_below=0.1) == 0.0  # ignored before the estimate
    assert translation_error_deg([1.0, 0, 0], gt, ignore_gt_t_below=0.05) == pytest.approx(90.0)  # not below
    assert math.isnan(translation_error_deg([1.0, 0, 0], [0, 0, 0]))  # undefined ground truth


def test_pose_errors_and_pose_error():
    T = pose(rot_z(10), [1.0, 0, 0])
    e = pose_errors(np.eye(3), [0, -2.0, 0], T)
    assert isinstance(e, PoseError) and isinstance(e, tuple)
    assert e.rotation == pytest.approx(10.0) and e.translation == pytest.approx(90.0)
    assert e.max == pytest.approx(90.0)
    assert pose_error(rot_z(10), [-5.0, 0, 0], T) == pytest.approx(0.0, abs=1e-6)
    assert pose_error(rot_z(13), [1.0, 0, 0], T[:3]) == pytest.approx(3.0)  # (3, 4) poses too
    assert pose_errors(None, None, T) == (INF, INF)
    assert pose_errors(np.eye(3), None, T) == (INF, INF)
    assert pose_error(None, None, T) == INF
    assert math.isnan(PoseError(5.0, math.nan).max) and math.isnan(PoseError(math.nan, 5.0).max)


# --- AUC -----------------------------------------------------------------------------------------


def test_pose_auc_hand_example():
    # errors sorted 1, 3, 6, inf; recalls 1/4, 2/4, 3/4, 1. Curve from (0, 0).
    # @5: errors below 5 are 1, 3: points (0,0) (1,.25) (3,.5), then flat at .5 to 5.
    #     area = 1*(0+.25)/2 + 2*(.25+.5)/2 + 2*.5 = .125 + .75 + 1 = 1.875 -> /5 = 0.375
    # @10: + (6,.75): .125 + .75 + 3*(.5+.75)/2 + 4*.75 = .125 + .75 + 1.875 + 3 = 5.75 -> /10 = 0.575
    # @20: .125 + .75 + 1.875 + 14*.75 = 13.25 -> /20 = 0.6625
    assert pose_auc([1, 3, 6, INF]) == pytest.approx([0.375, 0.575, 0.6625], abs=1e-12)
    assert pose_auc([6, INF, 1, 3]) == pytest.approx([0.375, 0.575, 0.6625], abs=1e-12)  # order-free
    assert pose_auc([1, 3, 6, math.nan]) == pytest.approx([0.375, 0.575, 0.6625], abs=1e-12)  # nan fails
    assert pose_auc([1, 3, 6, None], thresholds=[5]) == pytest.approx([0.375])


def test_pose_auc_ties_and_threshold_boundaries():
    # ties 2, 2: (0,0) (2,.5) (2,1) then flat: 2*.25 + 0 + 3*1 = 3.5 -> /5 = 0.7
    assert pose_auc([2, 2], [5]) == pytest.approx([0.7])
    # an error exactly at the threshold counts as above it: [5] @5 -> (0,0) flat at 0 to 5 -> 0
    assert pose_auc([5], [5]) == [0.0]
    # [1, 5] @5: (0,0) (1,.5), flat .5 to 5: .25 + 4*.5 = 2.25 -> /5 = 0.45
    # [1, 5] @10: (0,0) (1,.5) (5,1), flat to 10: .25 + 4*.75 + 5*1 = 8.25 -> /10 = 0.825
    assert pose_auc([1, 5], [5, 10]) == pytest.approx([0.45, 0.825])
    # the curve does not rise toward the first error above the threshold: [1, 6] @5 is
    # .25 + 4*.5 = 2.25 -> 0.45 (not the interpolation toward (6, 1))
    assert pose_auc([1, 6], [5]) == pytest.approx([0.45])
    # all errors 0: the curve jumps to 1 at 0 -> 1.0
    assert pose_auc([0, 0, 0]) == pytest.approx([1.0, 1.0, 1.0])


def test_pose_auc_failures_and_empty():
    assert pose_auc([INF, INF, INF]) == [0.0, 0.0, 0.0]
    assert all(math.isnan(a) for a in pose_auc([]))
    assert len(pose_auc([1.0], [1, 2, 3, 4])) == 4
    with pytest.raises(ValueError, match="errors must be >= 0"):
        pose_auc([1, -0.5])
    for bad in (0, -5, INF, math.nan):
        with pytest.raises(ValueError, match="thresholds must be positive"):
            pose_auc([1.0], [bad])


def test_summarise_pose_errors():
    errors = [PoseError(1.0, 2.0), (0.5, 3.0), None, (6.0, 1.0)]
    s = summarise_pose_errors(errors)
    # pose errors (max) 2, 3, inf, 6; @5: (0,0) (2,.25) (3,.5) flat to 5:
    # 2*.125 + 1*.375 + 2*.5 = .25 + .375 + 1 = 1.625 -> /5 = 0.325
    assert s["pairs"] == 4 and s["failures"] == 1
    assert s["auc@5"] == pytest.approx(0.325)
    assert s["mAA"] == pytest.approx(np.mean([s["auc@5"], s["auc@10"], s["auc@20"]]))
    assert s["median_pose_error"] == pytest.approx(4.5)  # 2 3 | 6 inf
    assert s["median_rotation_error"] == pytest.approx(3.5)  # .5 1 | 6 inf
    assert s["median_translation_error"] == pytest.approx(2.5)  # 1 2 | 3 inf
    assert set(summarise_pose_errors(errors, [7.5])) >= {"auc@7.5"}
    empty = summarise_pose_errors([])
    assert empty["pairs"] == 0 and empty["failures"] == 0
    assert math.isnan(empty["auc@5"]) and math.isnan(empty["mAA"]) and math.isnan(empty["median_pose_error"])
    assert summarise_pose_errors([(1.0, math.nan)])["failures"] == 1  # undefined counts as failed


# --- epipolar geometry ---------------------------------------------------------------------------


def test_essential_matrix_and_symmetric_epipolar_distance_by_hand():
    # pure x translation, no rotation: E = [t]x = [[0,0,0],[0,0,-1],[0,1,0]]; epipolar lines are the
    # rows y = y0; E y0 = (0, -1, y0), E^T y1 = (0, 1, -y1): both line normals have norm 1, and
    # y1^T E y0 = y0 - y1. Squared distance 2 (y0 - y1)^2, plain (glue-factory) |y0 - y1|.
    E = essential_from_pose(pose(np.eye(3), [1.0, 0, 0]))
    np.testing.assert_array_equal(E, [[0, 0, 0], [0, 0, -1], [0, 1, 0]])
    p0 = np.array([[0.2, 0.1], [-0.3, 0.5]])
    p1 = np.array([[0.7, 0.13], [0.1, 0.5]])
    np.testing.assert_allclose(symmetric_epipolar_distance(p0, p1, E), [2 * 0.03 ** 2, 0.0], atol=1e-15)
    np.testing.assert_allclose(symmetric_epipolar_distance(p0, p1, E, squared=False), [0.03, 0.0], atol=1e-15)
    np.testing.assert_allclose(symmetric_epipolar_distance(p0, p1, 7 * E), symmetric_epipolar_distance(p0, p1, E))
    assert symmetric_epipolar_distance(np.zeros((0, 2)), np.zeros((0, 2)), E).shape == (0,)
    with pytest.raises(ValueError, match="E is zero"):
        symmetric_epipolar_distance(p0, p1, essential_from_pose(np.eye(4)))
    with pytest.raises(ValueError, match="same length"):
        symmetric_epipolar_distance(p0, p1[:1], E)


def test_epipolar_distance_at_the_epipole_is_zero():
    # forward motion: the epipole of both images is the origin; its line is undefined
    E = essential_from_pose(pose(np.eye(3), [0, 0, 1.0]))
    d = symmetric_epipolar_distance([[0.0, 0.0], [0.1, 0.0]], [[0.3, 0.2], [0.2, 0.0]], E)
    np.testing.assert_array_equal(d, [0.0, 0.0])


def test_epipolar_precision_threshold_is_strict():
    E = essential_from_pose(pose(np.eye(3), [1.0, 0, 0]))
    # plain distances |y0 - y1| exactly 0.5, 0.25, 0.75, 0 (binary fractions)
    p0 = np.array([[0, 0.25], [0, 0.5], [0, 0.0], [0, 0.125]])
    p1 = np.array([[0, 0.75], [0, 0.25], [0, 0.75], [0, 0.125]])
    np.testing.assert_array_equal(symmetric_epipolar_distance(p0, p1, E, squared=False), [0.5, 0.25, 0.75, 0])
    assert epipolar_precision(p0, p1, E, 0.5, squared=False) == 0.5  # 0.25 and 0 are below; 0.5 is not
    assert epipolar_precision(p0, p1, E, 0.5000001, squared=False) == 0.75
    assert epipolar_precision(np.zeros((0, 2)), np.zeros((0, 2)), E) == 0.0  # no matches: 0, as the references


def test_epipolar_constraint_and_precision_on_the_synthetic_scene():
    s = make_two_view_scene(300, noise_px=0.0, outlier_ratio=0.25, seed=1)
    E = essential_from_pose(s.T_0to1)
    y0 = normalise_points(s.keypoints0[s.matches[:, 0]], s.K0)
    y1 = normalise_points(s.keypoints1[s.matches[:, 1]], s.K1)
    d = symmetric_epipolar_distance(y0, y1, E)
    assert d[~s.is_outlier].max() < 1e-18
    assert epipolar_precision(y0[~s.is_outlier], y1[~s.is_outlier], E) == 1.0
    # random pairings: almost all far from their epipolar lines
    assert np.mean(d[s.is_outlier] < 5e-4) < 0.1
    assert epipolar_precision(y0, y1, E) == pytest.approx(np.mean(d < 5e-4))


def test_normalise_points():
    K = np.array([[500.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])
    np.testing.assert_allclose(normalise_points([[320.0, 240.0], [820.0, 640.0]], K), [[0, 0], [1, 1]])


# --- intrinsics under resizing and np.rot90 ---------------------------------------------------------


K_TEST = np.array([[500.0, 0.0, 310.25], [0.0, 520.0, 243.5], [0.0, 0.0, 1.0]])
X_TEST = np.array([[0.3, -0.2, 2.0], [-1.0, 0.7, 5.0], [0.0, 0.0, 1.0], [2.0, 1.5, 3.0]])


@pytest.mark.parametrize("scale", [0.5, 2.0, (0.5, 0.75), (1.6, 1.2)])
def test_rescaled_intrinsics_project_to_rescaled_pixels(scale):
    expected = rescale_keypoints(project(K_TEST, X_TEST), scale)  # delfi's one resize formula
    np.testing.assert_allclose(project(rescale_intrinsics(K_TEST, scale), X_TEST), expected, atol=1e-9)


def test_rescale_intrinsics_values():
    # fx' = s fx, cx' = (cx + 0.5) s - 0.5: the centre (w-1)/2 of a 640-wide image goes to (320-1)/2
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    np.testing.assert_allclose(rescale_intrinsics(K, 0.5), [[250, 0, 159.5], [0, 250, 119.5], [0, 0, 1]])
    with pytest.raises(ValueError, match="scale must be"):
        rescale_intrinsics(K, 0)


@pytest.mark.parametrize("k", [0, 1, 2, 3, -1, 5])
def test_rotate_points_follows_np_rot90(k):
    width, height = 7, 5
    image = np.zeros((height, width))
    for x, y in [(1, 2), (6, 0), (0, 4)]:
        image[y, x] = 1 + x + 10 * y  # distinct marks
        turned = np.rot90(image, k)
        assert turned.shape[::-1] == rotated_size((width, height), k)
        (y_new, x_new), = np.argwhere(turned == image[y, x])
        np.testing.assert_array_equal(rotate_points([[x, y]], (width, height), k), [[x_new, y_new]])


def test_np_rot90_k1_turns_counter_clockwise():
    # the top-right corner of the picture becomes its top-left corner: counter-clockwise as shown
    np.testing.assert_array_equal(rotate_points([[6.0, 0.0]], (7, 5), 1), [[0.0, 0.0]])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotated_intrinsics_project_to_rotated_pixels(k):
    size = (640, 480)
    Rz = inplane_rotation(k)
    np.testing.assert_allclose(Rz.T @ Rz, np.eye(3), atol=1e-15)
    assert np.linalg.det(Rz) == pytest.approx(1.0)
    expected = rotate_points(project(K_TEST, X_TEST), size, k)
    np.testing.assert_allclose(project(rotate_intrinsics(K_TEST, size, k), X_TEST @ Rz.T), expected, atol=1e-9)


def test_rotate_intrinsics_values_by_hand():
    fx, fy, cx, cy, w, h = 500.0, 520.0, 310.25, 243.5, 640, 480
    np.testing.assert_allclose(rotate_intrinsics(K_TEST, (w, h), 1), [[fy, 0, cy], [0, fx, w - 1 - cx], [0, 0, 1]])
    np.testing.assert_allclose(rotate_intrinsics(K_TEST, (w, h), 2),
                               [[fx, 0, w - 1 - cx], [0, fy, h - 1 - cy], [0, 0, 1]])
    np.testing.assert_allclose(rotate_intrinsics(K_TEST, (w, h), 3), [[fy, 0, h - 1 - cy], [0, fx, cx], [0, 0, 1]])


@pytest.mark.parametrize("rot0,rot1", [(0, 1), (2, 0), (3, 1), (1, 1)])
def test_rotated_scene_keeps_its_epipolar_geometry(rot0, rot1):
    s = make_two_view_scene(80, noise_px=0.0, outlier_ratio=0.0, seed=2)
    T = rotate_pose(s.T_0to1, rot0, rot1)
    X0, X1 = s.points3d, s.points3d @ s.R.T + s.t
    np.testing.assert_allclose((X0 @ inplane_rotation(rot0).T) @ T[:3, :3].T + T[:3, 3],
                               X1 @ inplane_rotation(rot1).T, atol=1e-12)
    kp0 = rotate_points(s.keypoints0[s.matches[:, 0]], s.image_size, rot0)
    kp1 = rotate_points(s.keypoints1[s.matches[:, 1]], s.image_size, rot1)
    y0 = normalise_points(kp0, rotate_intrinsics(s.K0, s.image_size, rot0))
    y1 = normalise_points(kp1, rotate_intrinsics(s.K1, s.image_size, rot1))
    residual = np.sum(np.c_[y1, np.ones(len(y1))] * (np.c_[y0, np.ones(len(y0))] @ essential_from_pose(T).T), 1)
    assert np.abs(residual).max() < 1e-9


# --- pairs files ---------------------------------------------------------------------------------


K0_FILE = "500 0 319.5 0 500 239.5 0 0 1"
K1_FILE = "600.5 0 320 0 601 240.25 0 0 1"
T_FILE = "1 0 0 0.5 0 1 0 -0.25 0 0 1 1.5 0 0 0 1"


def write(tmp_path, text: str | bytes, name: str = "pairs.txt"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def test_read_both_pair_forms_with_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, f"# name0 name1 ...\n\n  a/0.jpg b/1.jpg 1 3 {K0_FILE} {K1_FILE} {T_FILE}\r\n"
                           f"   # indented comment\nc.png d.png {K0_FILE} {K1_FILE} {T_FILE}\n")
    p, q = read_pose_pairs(path)
    assert (p.name0, p.name1, p.rot0, p.rot1) == ("a/0.jpg", "b/1.jpg", 1, 3)
    assert (q.name0, q.name1, q.rot0, q.rot1) == ("c.png", "d.png", 0, 0)  # 36 fields: no rotations
    np.testing.assert_array_equal(p.K0, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    np.testing.assert_array_equal(p.K1, [[600.5, 0, 320], [0, 601, 240.25], [0, 0, 1]])
    np.testing.assert_array_equal(p.R, np.eye(3))
    np.testing.assert_array_equal(p.t, [0.5, -0.25, 1.5])
    assert p.T_0to1.dtype == np.float64 and not p.T_0to1.flags.writeable


def test_pairs_round_trip(tmp_path):
    s = make_two_view_scene(10, seed=4, focal1=612.3)
    pairs = [PosePair("scene/a.jpg", "scene/b.jpg", 2, 1, s.K0, s.K1, s.T_0to1),
             PosePair("x.jpg", "y.jpg", 0, 0, rescale_intrinsics(s.K0, 0.37), s.K1, rotate_pose(s.T_0to1, 1, 3))]
    path = write(tmp_path, "".join(format_pose_pair(p) + "\n" for p in pairs))
    assert all(len(line.split()) == 38 for line in path.read_text().splitlines())
    back = read_pose_pairs(path)
    assert len(back) == 2
    for a, b in zip(pairs, back):
        assert (a.name0, a.name1, a.rot0, a.rot1) == (b.name0, b.name1, b.rot0, b.rot1)
        for field in ("K0", "K1", "T_0to1"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))  # exact: repr floats
    with pytest.raises(ValueError, match="read as a comment"):
        format_pose_pair(PosePair("#a", "b", 0, 0, s.K0, s.K1, s.T_0to1))
    with pytest.raises(ValueError, match="whitespace"):
        format_pose_pair(PosePair("a b", "c", 0, 0, s.K0, s.K1, s.T_0to1))


def test_bom_and_old_mac_line_ends(tmp_path):
    line = f"a b 0 0 {K0_FILE} {K1_FILE} {T_FILE}"
    path = write(tmp_path, b"\xef\xbb\xbf" + (line + "\r" + line + "\r").encode())
    assert [p.name0 for p in read_pose_pairs(path)] == ["a", "a"]


def replace_number(line: str, index: int, token: str) -> str:
    """``line`` (38 fields) with field ``index`` (0-based) replaced."""
    fields = line.split()
    fields[index] = token
    return " ".join(fields)


GOOD = f"a.jpg b.jpg 0 0 {K0_FILE} {K1_FILE} {T_FILE}"
T_START = 4 + 18  # 0-based index of T_0to1[0,0] in a 38-field line


@pytest.mark.parametrize("bad,reason", [
    (GOOD + " 7", "expected 38 fields .* or 36 .*got 39"),
    (" ".join(GOOD.split()[:-1]), "expected 38 .*got 37"),
    ("a.jpg b.jpg", "expected 38 .*got 2 \\(pair a.jpg b.jpg\\)$"),
    (replace_number(GOOD, 2, "4"), r"field 3 \(rot0\) '4' must be 0, 1, 2 or 3"),
    (replace_number(GOOD, 3, "1.0"), r"field 4 \(rot1\) '1.0' must be 0, 1, 2 or 3"),
    (replace_number(GOOD, 3, "-1"), r"field 4 \(rot1\)"),
    (replace_number(GOOD, 6, "abc"), r"field 7 \(K0\[0,2\]\) 'abc' is not a number"),
    (replace_number(GOOD, 13, "nan"), r"field 14 \(K1\[0,0\]\) 'nan' is not finite"),
    (replace_number(GOOD, T_START + 3, "inf"), r"field 26 \(T_0to1\[0,3\]\) 'inf' is not finite"),
    (replace_number(replace_number(GOOD, 4, "0"), 8, "0"), r"K0 is singular"),
    (replace_number(GOOD, 21, "2"), r"the last row of K1 must be 0 0 1, got 0 0 2"),
    (replace_number(GOOD, T_START + 1, "0.01"),
     r"the top-left 3x3 of T_0to1 is not a rotation \(max \|R\^T R - I\| = 0.01 > 0.001\)"),
    (replace_number(GOOD, T_START, "-1"), r"the top-left 3x3 of T_0to1 is a reflection, not a rotation \(det -1\)"),
    (replace_number(GOOD, T_START + 14, "0.5"), r"the last row of T_0to1 must be 0 0 0 1, got 0 0 0.5 1"),
])
def test_bad_lines_name_file_line_and_reason(tmp_path, bad, reason):
    path = write(tmp_path, f"# header\n{GOOD}\n\n{bad}\n{GOOD}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: ") + reason):
        read_pose_pairs(path)


def test_slightly_non_orthonormal_rotation_is_accepted(tmp_path):
    # printed poses carry ~1e-6 rounding: within the 1e-3 tolerance
    path = write(tmp_path, replace_number(GOOD, T_START + 1, "0.0005") + "\n")
    assert read_pose_pairs(path)[0].R[0, 1] == 0.0005


def test_not_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, (GOOD + "\n").encode() + b"caf\xe9.jpg b.jpg\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8 text (byte 0xe9 at column 4)")):
        read_pose_pairs(path)


def test_pose_pair_validates_its_fields():
    K, T = np.eye(3), np.eye(4)
    with pytest.raises(ValueError, match="rot0 must be 0, 1, 2 or 3"):
        PosePair("a", "b", 4, 0, K, K, T)
    with pytest.raises(ValueError, match=r"K1 must have shape \(3, 3\)"):
        PosePair("a", "b", 0, 0, K, np.eye(4), T)
    with pytest.raises(ValueError, match="not a rotation"):
        PosePair("a", "b", 0, 0, K, K, np.diag([2.0, 1, 1, 1]))
    with pytest.raises(TypeError, match="name1 must be str"):
        PosePair("a", 3, 0, 0, K, K, T)
    source = np.eye(3)
    pair = PosePair("a", "b", np.int64(1), 0, source, K, T)
    source[0, 0] = 9  # the pair holds a copy
    assert pair.K0[0, 0] == 1 and pair.rot0 == 1 and type(pair.rot0) is int


# --- OpenCV cross-check --------------------------------------------------------------------------


def _opencv_pose(scene):
    cv2 = pytest.importorskip("cv2")
    y0 = normalise_points(scene.keypoints0[scene.matches[:, 0]], scene.K0)
    y1 = normalise_points(scene.keypoints1[scene.matches[:, 1]], scene.K1)
    E, mask = cv2.findEssentialMat(y0, y1, np.eye(3), method=cv2.RANSAC, prob=0.99999, threshold=1.0 / 500)
    best = None
    for candidate in np.split(E, len(E) // 3):  # findEssentialMat may return several stacked
        n, R, t, _ = cv2.recoverPose(candidate, y0, y1, np.eye(3), mask=mask.copy())
        if best is None or n > best[0]:
            best = (n, R, t[:, 0])
    return best[1], best[2]


def test_opencv_recovers_the_noise_free_pose():
    s = make_two_view_scene(noise_px=0.0, outlier_ratio=0.2, seed=0)
    R, t = _opencv_pose(s)
    e = pose_errors(R, t, s.T_0to1)
    assert e.rotation < 0.1 and e.translation < 0.1
    assert pose_error(R, t, s.T_0to1) < 0.1


def test_opencv_pose_with_pixel_noise_is_close():
    s = make_two_view_scene(noise_px=0.5, outlier_ratio=0.2, seed=0)
    assert pose_error(*_opencv_pose(s), s.T_0to1) < 3.0  # measured 0.99 degrees
