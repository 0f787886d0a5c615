"""Image pyramids: the R2D2 level rule and how levels are resized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delfi.extract import pyramid
from delfi.extract.pyramid import PyramidLevel, iterate_levels, level_factors, r2d2_levels, resize_bilinear

SCALE_F = 2**0.25


def official_levels(W, H, scale_f=SCALE_F, min_scale=0.0, max_scale=1.0, min_size=256, max_size=1024):
    """The loop of the official ``extract_multiscale``, transcribed literally.

    Returns [(s, (width, height) of the image at that iteration, processed)].
    """
    out = []
    s = 1.0
    nh, nw = H, W
    while s + 0.001 >= max(min_scale, min_size / max(H, W)):
        out.append((s, (nw, nh), s - 0.001 <= min(max_scale, max_size / max(W, H))))
        s /= scale_f
        nh, nw = round(H * s), round(W * s)
        if min(nh, nw) < 1:  # the official code would crash in F.interpolate here
            break
    return out


def as_tuples(levels):
    return [(lv.scale, lv.size, lv.process) for lv in levels]


# --------------------------------------------------------------------------------------------------
# r2d2_levels
# --------------------------------------------------------------------------------------------------


def test_1024x768_defaults_processes_nine_quarter_octaves():
    levels = r2d2_levels(1024, 768)
    assert len(levels) == 9
    assert all(lv.process for lv in levels)
    for k, lv in enumerate(levels):
        s = 2 ** (-k / 4)
        assert lv.scale == pytest.approx(s, rel=1e-12)
        assert lv.size == (round(1024 * s), round(768 * s))
    # a few by hand
    assert levels[0].size == (1024, 768)
    assert levels[1].size == (861, 646)
    assert levels[4].size == (512, 384)
    assert levels[8].size == (256, 192)
    assert as_tuples(levels) == official_levels(1024, 768)


def test_1280x820_first_two_levels_exist_but_are_not_processed():
    levels = r2d2_levels(1280, 820)
    assert [lv.process for lv in levels] == [False, False] + [True] * 8
    assert levels[0].size == (1280, 820)
    assert levels[1].size == (1076, 690)
    assert levels[2].size == (905, 580)  # 0.7071 * 1280 = 905.1 <= 1024: the first processed
    assert levels[-1].size == (269, 172)  # s = 2^(-9/4) = 0.2102 >= 256 / 1280 = 0.2
    assert as_tuples(levels) == official_levels(1280, 820)


def test_min_and_max_scale_limits():
    levels = r2d2_levels(200, 150, min_size=0, max_size=9999, min_scale=0.3, max_scale=0.6)
    scales = [lv.scale for lv in levels]
    # exists while s >= 0.3 (0.2973 + 0.001 < 0.3 stops), processed when s <= 0.6 (+0.001 tolerance)
    assert scales == pytest.approx([2 ** (-k / 4) for k in range(7)])
    assert [lv.process for lv in levels] == [False, False, False, True, True, True, True]
    assert as_tuples(levels) == official_levels(200, 150, min_size=0, max_size=9999, min_scale=0.3, max_scale=0.6)


def test_tolerance_of_one_thousandth():
    # max_scale slightly below a level's scale still processes it (s - 0.001 <= max_scale)
    levels = r2d2_levels(400, 300, min_size=0, max_size=9999, min_scale=0.5, max_scale=0.5 - 0.0009)
    assert [round(lv.scale, 4) for lv in levels if lv.process] == [0.5]
    levels = r2d2_levels(400, 300, min_size=0, max_size=9999, min_scale=0.5, max_scale=0.5 - 0.0011)
    assert not any(lv.process for lv in levels)
    # min_scale slightly above a level's scale still keeps it (s + 0.001 >= min_scale)
    assert r2d2_levels(400, 300, min_size=0, max_size=9999, min_scale=0.5009)[-1].scale == pytest.approx(0.5)


def test_tiny_images_give_no_processed_level():
    assert r2d2_levels(200, 150) == []
    assert r2d2_levels(64, 80) == []
    assert r2d2_levels(255, 100) == []
    assert not any(lv.process for lv in r2d2_levels(255, 100))
    # exactly min_size: one level, the original
    assert as_tuples(r2d2_levels(256, 100)) == [(1.0, (256, 100), True)]


def test_no_minimum_stops_before_empty_levels():
    levels = r2d2_levels(40, 10, min_size=0, max_size=9999)
    assert levels and all(min(lv.size) >= 1 for lv in levels)
    assert as_tuples(levels) == official_levels(40, 10, min_size=0, max_size=9999)


@pytest.mark.parametrize(
    "size, kwargs",
    [
        ((640, 480), {}),
        ((480, 640), {}),
        ((1600, 1200), {}),
        ((2000, 300), {}),
        ((333, 777), dict(scale_f=2.0)),
        ((900, 700), dict(min_size=0, max_size=9999, min_scale=0.3)),
        ((1500, 1000), dict(max_scale=0.5, min_scale=0.2)),
    ],
)
def test_matches_the_official_loop(size, kwargs):
    assert as_tuples(r2d2_levels(*size, **kwargs)) == official_levels(*size, **kwargs)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scale_f"):
        r2d2_levels(640, 480, scale_f=1.0)
    with pytest.raises(ValueError, match="max_scale"):
        r2d2_levels(640, 480, max_scale=1.5)


# --------------------------------------------------------------------------------------------------
# resizing
# --------------------------------------------------------------------------------------------------


def test_resize_bilinear_takes_width_height():
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    out = resize_bilinear(image, (5, 3))
    assert out.shape == (1, 3, 3, 5)
    torch.testing.assert_close(out, F.interpolate(image, (3, 5), mode="bilinear", align_corners=False))
    # 2x upsampling of a 1x2 ramp with align_corners=False (half-pixel centres)
    ramp = torch.tensor([[[[0.0, 4.0]]]])
    torch.testing.assert_close(resize_bilinear(ramp, (4, 1)), torch.tensor([[[[0.0, 1.0, 3.0, 4.0]]]]))


def test_level_factors():
    assert level_factors((1024, 768), (512, 384)) == (2.0, 2.0)
    sx, sy = level_factors((1280, 820), (905, 580))
    assert sx == pytest.approx(1280 / 905) and sy == pytest.approx(820 / 580)


@pytest.fixture
def image():
    return torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def levels():
    # 80x64 with min_size 32, max_size 60: lowest 0.4, highest 0.75 -> 2 unprocessed then 4 processed
    levels = r2d2_levels(80, 64, min_size=32, max_size=60)
    assert [lv.process for lv in levels] == [False, False, True, True, True, True]
    return levels


def test_iterate_chained_matches_manual_chain(image, levels):
    out = list(iterate_levels(image, levels, "chained"))
    assert [lv for lv, _ in out] == [lv for lv in levels if lv.process]
    expected, current = {}, image
    for index, lv in enumerate(levels):
        if index > 0:
            current = F.interpolate(current, (lv.size[1], lv.size[0]), mode="bilinear", align_corners=False)
        expected[lv.size] = current
    for lv, level_image in out:
        assert level_image.shape == (1, 3, lv.size[1], lv.size[0])
        torch.testing.assert_close(level_image, expected[lv.size], rtol=0, atol=0)


def test_iterate_from_original_matches_direct_resizes(image, levels):
    out = list(iterate_levels(image, levels, "from_original"))
    assert [lv for lv, _ in out] == [lv for lv in levels if lv.process]
    for lv, level_image in out:
        direct = F.interpolate(image, (lv.size[1], lv.size[0]), mode="bilinear", align_corners=False)
        torch.testing.assert_close(level_image, direct, rtol=0, atol=0)


def test_chained_and_from_original_differ(image, levels):
    chained = dict((lv.size, im) for lv, im in iterate_levels(image, levels, "chained"))
    direct = dict((lv.size, im) for lv, im in iterate_levels(image, levels, "from_original"))
    assert chained.keys() == direct.keys()
    # level 2 (the first processed one) is resized from level 1 when chained, from the original otherwise
    size = levels[2].size
    level1 = F.interpolate(image, (levels[1].size[1], levels[1].size[0]), mode="bilinear", align_corners=False)
    from_level1 = F.interpolate(level1, (size[1], size[0]), mode="bilinear", align_corners=False)
    torch.testing.assert_close(chained[size], from_level1, rtol=0, atol=0)
    assert (chained[size] - direct[size]).abs().max() > 1e-3


def test_level_zero_is_the_original_image(image):
    levels = r2d2_levels(80, 64, min_size=32, max_size=80)
    for mode in ("chained", "from_original"):
        first_level, first_image = next(iterate_levels(image, levels, mode))
        assert first_level.scale == 1.0
        assert first_image is image


def test_which_levels_are_resized(image, monkeypatch):
    calls = []
    original = pyramid.resize_bilinear

    def counting(img, size):
        calls.append(size)
        return original(img, size)

    monkeypatch.setattr(pyramid, "resize_bilinear", counting)
    levels = [
        PyramidLevel(1.0, (80, 64), False),
        PyramidLevel(0.75, (60, 48), False),
        PyramidLevel(0.5, (40, 32), True),
        PyramidLevel(0.375, (30, 24), False),
        PyramidLevel(0.25, (20, 16), True),
    ]
    sizes = [lv.size for lv, _ in iterate_levels(image, levels, "from_original")]
    assert sizes == [(40, 32), (20, 16)]
    assert calls == [(40, 32), (20, 16)]  # only processed levels are resized
    calls.clear()
    sizes = [lv.size for lv, _ in iterate_levels(image, levels, "chained")]
    assert sizes == [(40, 32), (20, 16)]
    assert calls == [(60, 48), (40, 32), (30, 24), (20, 16)]  # every level after the first


def test_iterate_levels_empty_and_invalid(image):
    assert list(iterate_levels(image, [], "chained")) == []
    with pytest.raises(ValueError, match="resize"):
        list(iterate_levels(image, r2d2_levels(80, 64, min_size=0), "nearest"))


def test_iterate_levels_from_a_reduced_copy_keeps_the_levels_of_the_original():
    levels = r2d2_levels(1000, 800, min_size=100, max_size=300)
    first = next(lv for lv in levels if lv.process)
    original = torch.rand(1, 3, 800, 1000)
    copy = torch.rand(1, 3, first.size[1], first.size[0])
    for mode in ("chained", "from_original"):
        full = [(lv, im.shape) for lv, im in iterate_levels(original, levels, mode)]
        reduced = list(iterate_levels(copy, levels, mode))
        assert [(lv, im.shape) for lv, im in reduced] == full
        assert reduced[0][1] is copy  # the copy is the first processed level itself
    too_small = torch.rand(1, 3, first.size[1] - 10, first.size[0] - 10)
    with pytest.raises(ValueError, match="smaller than a processed pyramid level"):
        list(iterate_levels(too_small, levels))
