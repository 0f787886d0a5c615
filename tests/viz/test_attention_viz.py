"""delfi.viz.plot_attention: attention overlays checked by their pixels (layout, brightness, keypoints)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from delfi.types import Features  # noqa: E402
from delfi.viz import plot_attention  # noqa: E402
from delfi.viz.attention import _keypoints_title, _marker_sizes, _panel_title, _shared_norm  # noqa: E402

GREY = 128
H, W = 24, 32  # the synthetic image
MH, MW = 4, 4  # the attention maps


def _grey(h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def _hot(i: int, j: int, value: float = 10.0, shape=(MH, MW)) -> np.ndarray:
    """A map of zeros with one bright cell."""
    m = np.zeros(shape)
    m[i, j] = value
    return m


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def _panels(arr: np.ndarray, colour_mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the image panels of one row: the blocks where ``colour_mask``
    fills at least 90 % of the fullest row / column (titles, ticks and colorbars never do)."""
    rows = colour_mask.sum(axis=1)
    row_runs = _runs(rows >= 0.9 * rows.max())
    assert len(row_runs) == 1, row_runs
    (top, bottom), = row_runs
    cols = colour_mask[top:bottom].sum(axis=0)
    return [(top, bottom, left, right) for left, right in _runs(cols >= 0.9 * (bottom - top))]


def _not_white(arr: np.ndarray) -> np.ndarray:
    return (arr < 235).any(axis=-1)


def _cell(arr: np.ndarray, panel, i: int, j: int, shape=(MH, MW), margin: int = 2) -> np.ndarray:
    """The rendered pixels under map cell (i, j) of a panel (the map stretched over the panel)."""
    top, bottom, left, right = panel
    ch, cw = (bottom - top) / shape[0], (right - left) / shape[1]
    y0, y1 = int(top + i * ch) + margin, int(top + (i + 1) * ch) - margin
    x0, x1 = int(left + j * cw) + margin, int(left + (j + 1) * cw) - margin
    return arr[y0:y1, x0:x1].astype(float)


def _brightness(pixels: np.ndarray) -> float:
    return float(pixels.mean())


# ----------------------------------------------------------------------------- overlay geometry


@pytest.mark.parametrize("corner", [(0, 0), (MH - 1, MW - 1), (0, MW - 1)])
def test_overlay_is_bright_under_the_hot_cell(corner):
    i, j = corner
    arr = plot_attention(_grey(), [(1.0, _hot(i, j))])
    (panel,) = _panels(arr, _not_white(arr))
    hot = _brightness(_cell(arr, panel, i, j))
    far = _brightness(_cell(arr, panel, MH - 1 - i, MW - 1 - j))  # the opposite corner
    assert hot > far + 60, (hot, far)
    # the cold part is the image darkened by the blend with the colormap's black (alpha 0.5)
    assert abs(far - GREY / 2) < 12, far


def test_alpha_zero_shows_the_plain_image():
    arr = plot_attention(_grey(), [(1.0, _hot(0, 0))], alpha=0.0)
    (panel,) = _panels(arr, _not_white(arr))
    for i, j in [(0, 0), (MH - 1, MW - 1)]:
        assert abs(_brightness(_cell(arr, panel, i, j)) - GREY) < 2


def test_colour_scale_is_shared_by_all_panels():
    """A map peaking at 1 next to one peaking at 10 stays dim (with its own scale both would match)."""
    arr = plot_attention(_grey(), [(1.0, _hot(0, 0, 10.0)), (0.5, _hot(0, 0, 1.0))], columns=2)
    strong, weak = _panels(arr, _not_white(arr))
    hot_strong, hot_weak = _brightness(_cell(arr, strong, 0, 0)), _brightness(_cell(arr, weak, 0, 0))
    cold_weak = _brightness(_cell(arr, weak, MH - 1, MW - 1))
    assert hot_strong > hot_weak + 50, (hot_strong, hot_weak)
    assert hot_weak - cold_weak < 30, (hot_weak, cold_weak)


def test_shared_norm():
    norm = _shared_norm([_hot(0, 0, 3.0), np.array([[1.0, np.nan], [2.0, 312.4]])])
    assert (norm.vmin, norm.vmax) == (0.0, 312.4)
    flat = _shared_norm([np.zeros((2, 2))])
    assert flat.vmax > flat.vmin


def test_maps_of_any_resolution_and_type_and_nan_render():
    maps = [(1.0, torch.rand(1, 7, 9)), (0.707, np.random.default_rng(0).random((5, 6))), (0.5, _hot(0, 0))]
    maps[2][1][1, 1] = np.nan
    arr = plot_attention(_grey(), maps)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


# ----------------------------------------------------------------------------- layout


def test_width_grows_with_levels_at_fixed_columns():
    shapes = [plot_attention(_grey(), [(1.0, _hot(0, 0))] * n, columns=4).shape for n in (1, 2, 3)]
    widths, heights = [s[1] for s in shapes], [s[0] for s in shapes]
    assert widths[0] < widths[1] < widths[2], widths
    assert len(set(heights)) == 1, heights


def test_panels_wrap_onto_rows():
    levels = [(1.0, _hot(0, 0))] * 3
    wide = plot_attention(_grey(), levels, columns=3)
    wrapped = plot_attention(_grey(), levels, columns=2)
    column = plot_attention(_grey(), levels, columns=1)
    assert wrapped.shape[1] < wide.shape[1] and wrapped.shape[0] > wide.shape[0]
    assert column.shape[1] < wrapped.shape[1] and column.shape[0] > wrapped.shape[0]
    assert len(_panels(wide, _not_white(wide))) == 3


def test_large_image_is_shrunk_to_fit():
    img = np.random.default_rng(0).integers(0, 255, (1500, 3000, 3), dtype=np.uint8)
    arr = plot_attention(img, [(1.0, _hot(0, 0)), (0.5, _hot(1, 1))])
    assert arr.shape[1] <= 1600
    # at dpi=200 the same layout, twice as large
    big = plot_attention(img, [(1.0, _hot(0, 0)), (0.5, _hot(1, 1))], dpi=200)
    assert abs(big.shape[1] - 2 * arr.shape[1]) <= 2 and abs(big.shape[0] - 2 * arr.shape[0]) <= 2


def test_saves_png_and_image_inputs_agree(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    src = tmp_path / "img.png"
    Image.fromarray(img).save(src)
    levels = [(1.0, torch.tensor(_hot(0, 0))), (0.707, _hot(2, 3, shape=(3, 4)))]
    out = plot_attention(src, levels, out=tmp_path / "sub" / "att.png", title="two scales")
    assert out == tmp_path / "sub" / "att.png" and out.is_file()
    saved = np.asarray(Image.open(out).convert("RGB"))
    from_path = plot_attention(src, levels, title="two scales")
    from_tensor = plot_attention(torch.from_numpy(img).permute(2, 0, 1).float() / 255, levels, title="two scales")
    assert saved.shape == from_path.shape
    assert np.abs(saved.astype(int) - from_path).max() <= 1
    assert np.array_equal(from_path, plot_attention(img, levels, title="two scales"))
    assert np.abs(from_tensor.astype(int) - from_path).mean() < 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        plot_attention(_grey(), [(1.0, np.zeros((2, 3, 4)))])
    with pytest.raises(ValueError, match="pair"):
        plot_attention(_grey(), [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="at least one"):
        plot_attention(_grey(), [])
    with pytest.raises(ValueError, match="columns"):
        plot_attention(_grey(), [(1.0, _hot(0, 0))], columns=0)
    with pytest.raises(ValueError, match="alpha"):
        plot_attention(_grey(), [(1.0, _hot(0, 0))], alpha=1.5)


# ----------------------------------------------------------------------------- keypoints panel


def _features(points, scores, scales=None, image_size=(W, H)) -> Features:
    n = len(points)
    return Features(
        keypoints=torch.tensor(points, dtype=torch.float32),
        scores=torch.tensor(scores, dtype=torch.float32),
        descriptors=torch.zeros(n, 4),
        scales=None if scales is None else torch.tensor(scales, dtype=torch.float32),
        image_size=image_size,
    )


def _plain_panel(arr: np.ndarray):
    """The keypoints panel: the only place the grey image is shown without an overlay."""
    plain = (np.abs(arr.astype(int) - GREY) <= 3).all(axis=-1)
    (panel,) = _panels(arr, plain)
    return panel


def _marked(arr: np.ndarray, panel, x: float, y: float, radius: int = 3) -> bool:
    """Whether something other than the grey image is drawn around image pixel (x, y)."""
    top, bottom, left, right = panel
    cx = left + (x + 0.5) / W * (right - left)
    cy = top + (y + 0.5) / H * (bottom - top)
    patch = arr[int(cy) - radius : int(cy) + radius + 1, int(cx) - radius : int(cx) + radius + 1].astype(int)
    return bool((np.abs(patch - GREY) > 40).any())


def test_keypoints_panel_is_added_and_marks_the_keypoints():
    levels = [(1.0, _hot(0, 0))]
    without = plot_attention(_grey(), levels)
    plain = (np.abs(without.astype(int) - GREY) <= 3).all(axis=-1)
    assert max((b - a for a, b in _runs(plain.ravel())), default=0) < 20  # no plain image anywhere
    feats = _features([[4.0, 4.0], [26.0, 18.0]], [1.0, 2.0], scales=[8.0, 32.0])
    arr = plot_attention(_grey(), levels, feats)
    assert arr.shape[1] > without.shape[1] and arr.shape[0] == without.shape[0]
    panel = _plain_panel(arr)
    assert _marked(arr, panel, 4, 4) and _marked(arr, panel, 26, 18)
    assert not _marked(arr, panel, 26, 4) and not _marked(arr, panel, 4, 18)


def test_max_points_keeps_the_best():
    feats = _features([[4.0, 4.0], [26.0, 18.0]], [0.2, 0.9])
    arr = plot_attention(_grey(), [(1.0, _hot(0, 0))], feats, max_points=1)
    panel = _plain_panel(arr)
    assert _marked(arr, panel, 26, 18) and not _marked(arr, panel, 4, 4)


def test_keypoints_of_the_original_size_are_rescaled_to_the_image_shown():
    feats = _features([[52.5, 36.5]], [1.0], image_size=(2 * W, 2 * H))  # -> (26, 18) at (W, H)
    arr = plot_attention(_grey(), [], feats)  # keypoints only
    panel = _plain_panel(arr)
    assert _marked(arr, panel, 26, 18) and not _marked(arr, panel, 12, 8)


def test_empty_features_render():
    arr = plot_attention(_grey(), [(1.0, _hot(0, 0))], _features(np.zeros((0, 2)), []))
    assert arr.ndim == 3


# ----------------------------------------------------------------------------- text and sizes


def test_titles():
    assert _panel_title(0.7071, _hot(1, 2, 312.4)) == "scale 0.707 (max 312.4)"
    assert _panel_title(1.0, _hot(0, 0, 0.0123)) == "scale 1 (max 0.0123)"
    assert _keypoints_title(12, 12) == "selected keypoints (12)"
    assert _keypoints_title(5000, 1000) == "selected keypoints (5000 \u00b7 top 1000 drawn)"


def test_marker_sizes_grow_with_log_scale():
    sizes = _marker_sizes(np.array([4.0, 16.0, 64.0]), 3)
    diameters = np.sqrt(sizes)
    assert diameters[0] < diameters[1] < diameters[2]
    assert np.isclose(diameters[1] - diameters[0], diameters[2] - diameters[1])  # even steps in log(scale)
    plain = _marker_sizes(None, 3)
    assert np.all(plain == plain[0]) and diameters[0] < np.sqrt(plain[0]) < diameters[2]
    assert np.sqrt(_marker_sizes(None, 5000)[0]) < np.sqrt(plain[0])  # dense sets get smaller markers


# ----------------------------------------------------------------------------- no pyplot


def test_rendering_never_imports_pyplot(tmp_path):
    code = (
        "import sys, numpy as np, torch\n"
        "from delfi.types import Features\n"
        "from delfi.viz import plot_attention\n"
        "f = Features(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0]), torch.zeros(1, 4), torch.tensor([8.0]))\n"
        "plot_attention(np.zeros((24, 32, 3), np.uint8), [(1.0, np.eye(4))], f)\n"
        f"plot_attention(np.zeros((24, 32, 3), np.uint8), [(1.0, np.eye(4))], out={str(tmp_path / 'a.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.png").is_file()


def _red(arr: np.ndarray) -> np.ndarray:
    """Pixels of the stamp colour (strong red, little green / blue)."""
    a = arr.astype(int)
    return (a[..., 0] > 150) & (a[..., 1] < 110) & (a[..., 2] < 110)


def test_untrained_models_get_a_red_caption_and_stamp():
    levels = [(1.0, _hot(1, 1, 0.0)), (0.5, _hot(0, 0, 0.0))]  # zero maps: the overlay is black, never red
    plain = plot_attention(_grey(), levels)
    stamped = plot_attention(_grey(), levels, untrained=True)
    above_colorbar = slice(0, int(0.85 * plain.shape[0]))  # the inferno colorbar has reds of its own
    plain, stamped = plain[above_colorbar], stamped[above_colorbar]
    assert _red(plain).sum() == 0
    assert _red(stamped).sum() > 200
    top_half = stamped[: stamped.shape[0] // 4]  # the caption under the title
    assert _red(top_half).sum() > 20
