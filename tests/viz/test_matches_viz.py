"""delfi.viz: rendered pictures checked by their pixels (colours, positions, determinism)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from delfi.types import Features, Matches  # noqa: E402
from delfi.viz import plot_keypoints, plot_match_grid, plot_matches  # noqa: E402
from delfi.viz.matches import _as_matches, _match_summary, _subset  # noqa: E402

BLUE = (70, 70, 170)  # image0 of the hand-built pair
GREY = (170, 170, 170)  # image1
W0, H0, W1, H1 = 40, 30, 50, 24  # heights differ on purpose


def _solid(h: int, w: int, rgb) -> torch.Tensor:
    """A (3, H, W) float tensor in [0, 1] of one colour."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255).view(3, 1, 1).expand(3, h, w).contiguous()


def _mask(arr: np.ndarray, rgb, tol: int = 6) -> np.ndarray:
    return (np.abs(arr.astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the solid block of ``mask``: rows and columns holding at
    least a third of the fullest one, so stray anti-aliased text pixels do not count."""
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    assert rows.max() > 0, "colour not found in the rendering"
    ys, xs = np.nonzero(rows >= rows.max() / 3)[0], np.nonzero(cols >= cols.max() / 3)[0]
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _green(arr: np.ndarray) -> np.ndarray:
    r, g, b = (arr[..., i].astype(int) for i in range(3))
    return (g > 180) & (g - np.maximum(r, b) > 100)


def _red(arr: np.ndarray) -> np.ndarray:
    r, g, b = (arr[..., i].astype(int) for i in range(3))
    return (r > 150) & (r - g > 90) & (r - b > 50)


# Keypoint 0 of each image make one horizontal inlier at y = 4, far from every other line.
KP0 = torch.tensor([[5.0, 4.0], [5.0, 15.0], [30.0, 25.0], [35.0, 6.0], [20.0, 28.0]])
KP1 = torch.tensor([[10.0, 4.0], [40.0, 20.0], [5.0, 10.0], [45.0, 22.0], [25.0, 2.0]])


def _pair_matches(**kw) -> Matches:
    return Matches(
        indices=torch.arange(5).repeat(2, 1).T.contiguous(),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2]),
        inliers=torch.tensor([True, True, True, False, False]),
        **kw,
    )


def _random_pair(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kp0 = torch.rand(k, 2, generator=g) * torch.tensor([W0 - 1, H0 - 1])
    kp1 = torch.rand(k, 2, generator=g) * torch.tensor([W1 - 1, H1 - 1])
    m = Matches(torch.arange(k).repeat(2, 1).T.contiguous(), torch.rand(k, generator=g),
                inliers=torch.rand(k, generator=g) < 0.5)
    return kp0, kp1, m


def test_plot_matches_png_has_green_inliers_red_outliers_and_aligned_images(tmp_path):
    out = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1,
                       _pair_matches(kind="homography"), out=tmp_path / "pair.png")
    assert out == tmp_path / "pair.png" and out.is_file()
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert 400 <= arr.shape[1] <= 1700 and 100 <= arr.shape[0] <= 1200
    assert _green(arr).sum() > 300  # three inlier lines
    assert _red(arr).sum() > 100  # two outlier lines
    l0, t0, r0, b0 = _bbox(_mask(arr, BLUE))
    l1, t1, r1, b1 = _bbox(_mask(arr, GREY))
    assert abs(t0 - t1) <= 1  # aligned at the top
    assert l1 > r0  # side by side
    s0, s1 = (r0 - l0 + 1) / W0, (r1 - l1 + 1) / W1
    assert s0 == pytest.approx(s1, rel=0.03)  # one scale for both
    assert (b0 - t0 + 1) / H0 == pytest.approx(s0, rel=0.03) and (b1 - t1 + 1) / H1 == pytest.approx(s0, rel=0.03)


def test_plot_matches_keypoints_land_on_their_pixel_centres():
    # dpi 300: one image pixel is ~20 rendered pixels, so a half-pixel error would be ~10 px.
    arr = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, _pair_matches(), dpi=300)
    l0, t0, r0, _ = _bbox(_mask(arr, BLUE))
    l1, _, r1, _ = _bbox(_mask(arr, GREY))
    s = (r0 - l0 + 1) / W0
    ex0, ey = l0 + (KP0[0, 0].item() + 0.5) * s, t0 + (KP0[0, 1].item() + 0.5) * s
    ex1 = l1 + (KP1[0, 0].item() + 0.5) * s
    assert _green(arr)[round(ey), round(ex0)] and _green(arr)[round(ey), round(ex1)]
    band = _green(arr)[round(ey - s) : round(ey + s) + 1]  # the horizontal inlier, +- one image pixel
    rows, cols = np.nonzero(band)
    assert rows.mean() + round(ey - s) == pytest.approx(ey - 0.5, abs=1.0)  # pixel centres at +0.5
    # The line with its two end dots is symmetric about the keypoints' midpoint.
    assert (cols.min() + cols.max()) / 2 == pytest.approx((ex0 + ex1) / 2 - 0.5, abs=1.5)


def test_plot_matches_accepts_paths_arrays_and_features(tmp_path):
    path0, path1 = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.full((H0, W0, 3), BLUE, np.uint8)).save(path0)
    Image.fromarray(np.full((H1, W1, 3), GREY, np.uint8)).save(path1)
    feats0 = Features(KP0, torch.ones(5), torch.zeros(5, 4), image_size=(W0, H0))
    reference = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, _pair_matches(),
                             names=("a.png", "b.png"))
    from_files = plot_matches(path0, path1, feats0, KP1.numpy(), _pair_matches())  # names from files
    hwc = plot_matches(np.full((H0, W0, 3), BLUE, np.uint8), np.full((H1, W1, 3), GREY, float) / 255,
                       KP0, KP1, _pair_matches(), names=("a.png", "b.png"))
    assert reference.dtype == np.uint8 and reference.ndim == 3 and reference.shape[2] == 3
    np.testing.assert_array_equal(reference, from_files)
    np.testing.assert_array_equal(reference, hwc)


def test_plot_matches_without_inliers_colours_by_score():
    m = Matches(torch.arange(5).repeat(2, 1).T.contiguous(), torch.linspace(0, 1, 5))
    arr = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, m)
    assert _green(arr).sum() == 0 and _red(arr).sum() == 0
    cyan = (arr[..., 0] < 80) & (arr[..., 1] > 200) & (arr[..., 2] > 200)  # low score end of "cool"
    magenta = (arr[..., 0] > 200) & (arr[..., 1] < 80) & (arr[..., 2] > 200)  # high score end
    assert cyan.sum() > 50 and magenta.sum() > 50


def test_zero_matches_render_both_images(tmp_path):
    m = Matches(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0), inliers=torch.zeros(0, dtype=torch.bool),
                kind="homography", meta={"status": "not enough matches", "required": 4})
    out = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, m, out=tmp_path / "zero.png")
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert _mask(arr, BLUE).sum() > 1000 and _mask(arr, GREY).sum() > 1000
    assert _green(arr).sum() == 0 and _red(arr).sum() == 0
    summary = _match_summary(_as_matches(m, 5, 5), drawn=0)
    assert summary.startswith("0 matches") and "homography" in summary and "not enough matches" in summary
    empty = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), torch.zeros(0, 2), np.zeros((0, 2)),
                         Matches(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)))
    assert empty.shape[0] > 100


def test_title_summary_counts():
    m = _as_matches(_pair_matches(kind="homography", meta={"status": "ok"}), 5, 5)
    assert _match_summary(m, drawn=5) == "3 inliers / 5 matches (60.0%) \u00b7 homography \u00b7 ok"
    bare = _as_matches(Matches(torch.tensor([[0, 0]]), torch.ones(1)), 1, 1)
    assert _match_summary(bare, drawn=1) == "1 match"


def test_title_says_how_many_inliers_a_verified_pair_needs():
    meta = {"status": "too few inliers", "min_inliers": 15, "chance_inliers": 21}
    m = _as_matches(_pair_matches(kind="fundamental", meta=meta), 5, 5)
    assert _match_summary(m, drawn=5).endswith("too few inliers (needs 22)")
    m = _as_matches(_pair_matches(kind="homography", meta={**meta, "chance_inliers": 11}), 5, 5)
    assert _match_summary(m, drawn=5).endswith("too few inliers (needs 15)")


def test_picture_formats_are_what_matplotlib_writes():
    from delfi.viz.matches import picture_formats

    formats = picture_formats()
    assert {"png", "pdf", "svg", "jpg"} <= formats and "txt" not in formats and "h5" not in formats


def test_subsampling_is_seeded_and_reports_true_counts():
    kp0, kp1, m = _random_pair(1000)
    args = (_solid(H0, W0, BLUE), _solid(H1, W1, GREY), kp0, kp1, m)
    a = plot_matches(*args, max_lines=40, seed=3)
    b = plot_matches(*args, max_lines=40, seed=3)
    c = plot_matches(*args, max_lines=40, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    picked = _subset(1000, 40, seed=3)
    assert len(np.unique(picked)) == 40 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(picked, _subset(1000, 40, seed=3))
    summary = _match_summary(_as_matches(m, 1000, 1000), drawn=40)
    assert "/ 1000 matches" in summary and "40 drawn" in summary
    assert len(_subset(30, 40, seed=0)) == 30 and len(_subset(1000, None, seed=0)) == 1000


def test_large_images_fit_the_width_and_dpi_scales():
    big0, big1 = np.zeros((1500, 2000, 3), np.uint8), np.full((1000, 1800, 3), 200, np.uint8)
    none = torch.zeros(0, 2)
    m = Matches(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))
    arr = plot_matches(big0, big1, none, none, m)
    assert 1200 <= arr.shape[1] <= 1610
    small = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, _pair_matches())
    double = plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, _pair_matches(), dpi=200)
    assert abs(double.shape[0] - 2 * small.shape[0]) <= 2 and abs(double.shape[1] - 2 * small.shape[1]) <= 2


def test_bad_match_indices_are_refused():
    m = Matches(torch.tensor([[0, 7]]), torch.ones(1))
    with pytest.raises(ValueError, match="keypoints1"):
        plot_matches(_solid(H0, W0, BLUE), _solid(H1, W1, GREY), KP0, KP1, m)


def _features(points, scales=None) -> Features:
    pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    n = len(pts)
    return Features(pts, torch.linspace(0, 1, n), torch.zeros(n, 4),
                    scales=None if scales is None else torch.as_tensor(scales, dtype=torch.float32),
                    image_size=(20, 15))


def test_plot_keypoints_marker_centred_on_its_pixel():
    image = np.full((15, 20, 3), GREY, np.uint8)
    image[5, 7] = (250, 220, 0)  # the pixel whose centre is the keypoint (7, 5)
    without = plot_keypoints(image, _features([]), color_by=None, dpi=200)
    with_kp = plot_keypoints(image, _features([[7.0, 5.0]]), color_by=None, dpi=200)
    assert without.shape == with_kp.shape
    l, t, r, b = _bbox(_mask(without, GREY, tol=3) | _mask(without, (250, 220, 0), tol=3))
    s = (r - l + 1) / 20
    block = _bbox(_mask(without, (250, 220, 0), tol=3))
    centre = ((block[0] + block[2]) / 2, (block[1] + block[3]) / 2)
    assert centre == pytest.approx((l + 7.5 * s - 0.5, t + 5.5 * s - 0.5), abs=1.0)
    diff = (np.abs(with_kp.astype(int) - without.astype(int)).sum(-1) > 30)[t : b + 1, l : r + 1]
    ys, xs = np.nonzero(diff)
    assert len(xs) > 10
    assert (xs.mean() + l, ys.mean() + t) == pytest.approx(centre, abs=1.0)


def test_plot_keypoints_png_colour_by_score_and_scale_with_circles(tmp_path):
    image = torch.full((3, 150, 200), 0.5)
    pts = [[40.0, 40.0], [150.0, 100.0], [100.0, 75.0]]
    out = plot_keypoints(image, _features(pts, scales=[40.0, 30.0, 20.0]), out=tmp_path / "kp.png", title="kp")
    png = np.asarray(Image.open(out).convert("RGB"))
    assert out.is_file() and 300 <= png.shape[1] <= 1700 and png.shape[0] > 100
    by_scale = plot_keypoints(image, _features(pts, scales=[40.0, 30.0, 20.0]), color_by="scale")
    plain = plot_keypoints(image, _features(pts), color_by=None)
    circles = plot_keypoints(image, _features(pts, scales=[40.0, 30.0, 20.0]), color_by=None)
    assert plain.shape == circles.shape and not np.array_equal(by_scale[: plain.shape[0]], plain)
    # A circle of radius scale / 2 = 20 around (40, 40): its rightmost point is at x = 60.
    l, t, r, _ = _bbox(_mask(plain, (128, 128, 128), tol=2))
    s = (r - l + 1) / 200
    x, y = round(l + 60.5 * s - 0.5), round(t + 40.5 * s - 0.5)
    window = (slice(y - 3, y + 4), slice(x - 3, x + 4))
    assert _mask(plain[window], (128, 128, 128), tol=2).all()
    assert not _mask(circles[window], (128, 128, 128), tol=2).all()
    with pytest.raises(ValueError, match="no scales"):
        plot_keypoints(image, _features(pts), color_by="scale")


def test_plot_keypoints_max_points_keeps_the_best():
    g = torch.Generator().manual_seed(0)
    n = 400
    feats = Features(torch.rand(n, 2, generator=g) * 99, torch.rand(n, generator=g), torch.zeros(n, 4),
                     image_size=(100, 100))
    image = np.zeros((100, 100, 3), np.uint8)
    top = plot_keypoints(image, feats.top_k(50), color_by=None, title="x")
    capped = plot_keypoints(image, feats, max_points=50, color_by=None, title="x")
    full = plot_keypoints(image, feats, color_by=None, title="x")
    assert top.shape == capped.shape
    body = slice(60, None)  # below the titles, which differ in counts
    np.testing.assert_array_equal(top[body], capped[body])
    assert not np.array_equal(capped[body], full[body])


def test_plot_match_grid_renders_every_panel(tmp_path):
    colours = [(200, 40, 200), (40, 200, 200), (230, 150, 30)]
    items = []
    for i, colour in enumerate(colours):
        item = dict(image0=_solid(H0, W0, colour), image1=_solid(H1, W1, GREY), keypoints0=KP0, keypoints1=KP1,
                    matches=_pair_matches(kind="homography"), title=f"pair {i}")
        items.append(item)
    items[2]["matches"] = Matches(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))
    out = plot_match_grid(items, out=tmp_path / "grid.png", columns=2, title="three pairs")
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert out.is_file() and arr.shape[1] <= 1700
    boxes = [_bbox(_mask(arr, c)) for c in colours]
    assert abs(boxes[0][1] - boxes[1][1]) <= 1 and boxes[1][0] > boxes[0][2]  # one row, two columns
    assert boxes[2][1] > boxes[0][3] and abs(boxes[2][0] - boxes[0][0]) <= 1  # second row, first column
    assert _green(arr).sum() > 300 and _red(arr).sum() > 100
    one_col = plot_match_grid(items, columns=1)
    assert one_col.shape[0] > arr.shape[0]
    with pytest.raises(ValueError):
        plot_match_grid([])
    with pytest.raises(TypeError, match="unexpected"):
        plot_match_grid([{**items[0], "colour": "red"}])


def test_import_leaves_matplotlib_global_state_alone():
    code = (
        "import sys, matplotlib, delfi.viz, numpy as np, torch\n"
        "from delfi.types import Matches\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')  # raw: no backend resolution\n"
        "delfi.viz.plot_matches(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.zeros((1, 2)), np.zeros((1, 2)),\n"
        "                       Matches(torch.zeros(1, 2, dtype=torch.long), torch.ones(1)))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
