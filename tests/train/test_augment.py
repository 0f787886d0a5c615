"""DELF / DELG training augmentations: shapes, determinism, the crop geometry measured on ramps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from delfi.train.augment import (gamma_scale_factor, random_flip, random_resized_crop, resize_center_crop,
                                 resize_image, resize_random_crop, scale_batch)


def ramp(height: int, width: int) -> torch.Tensor:
    """(3, H, W): channel 0 = x / W, channel 1 = y / H of each pixel's centre, channel 2 = 0.5."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    return torch.stack([x / width, y / height, torch.full_like(x, 0.5)]).float()


def crop_box(out: torch.Tensor, height: int, width: int) -> tuple[float, float, float, float]:
    """(left, top, w, h) in source pixels of the crop that ``out`` (a resized crop of ``ramp``) shows,
    read off its interior (linear functions survive the antialiased resize away from the border)."""
    size = out.shape[-1]
    x = out[0].double().mean(dim=0) * width  # source x of each output column
    y = out[1].double().mean(dim=1) * height
    a, b = 2, size - 3
    w = (x[b] - x[a]) / (b - a) * size
    h = (y[b] - y[a]) / (b - a) * size
    centre_x, centre_y = x.mean().item(), y.mean().item()
    return centre_x - w.item() / 2, centre_y - h.item() / 2, w.item(), h.item()


def test_random_resized_crop_area_and_aspect_stay_in_their_ranges():
    height, width = 300, 400
    image = ramp(height, width)
    areas, aspects = [], []
    for seed in range(150):
        out = random_resized_crop(image, 32, np.random.default_rng(seed))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        left, top, w, h = crop_box(out, height, width)
        assert -1 <= left and left + w <= width + 1 and -1 <= top and top + h <= height + 1
        areas.append(w * h / (width * height))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1 + 0.01
    assert aspects.min() >= 3 / 4 - 0.03 and aspects.max() <= 4 / 3 + 0.03
    assert areas.min() < 0.2 and areas.max() > 0.8  # the whole range is drawn
    assert aspects.min() < 0.85 and aspects.max() > 1.2


def test_random_resized_crop_follows_given_ranges_and_falls_back_to_the_centre():
    height, width = 200, 300
    image = ramp(height, width)
    left, top, w, h = crop_box(random_resized_crop(image, 40, np.random.default_rng(3), area=(0.5, 0.5),
                                                   aspect=(2.0, 2.0)), height, width)
    assert w * h / (width * height) == pytest.approx(0.5, abs=0.01) and w / h == pytest.approx(2.0, abs=0.03)
    # no attempt fits (area 1 at ratio 3 in a 3:2 image); the fallback: full height, width = 1.25 * 200
    wide = random_resized_crop(image, 40, np.random.default_rng(0), area=(1.0, 1.0), aspect=(1.0, 1.25))
    left, top, w, h = crop_box(wide, height, width)
    assert (left, top, w, h) == pytest.approx((25, 0, 250, 200), abs=0.6)
    centre = random_resized_crop(image, 40, np.random.default_rng(0), attempts=0)  # ratio 1.5 > 4/3
    # w = round(200 * 4/3), left = (300 - 267) // 2
    assert crop_box(centre, height, width) == pytest.approx((16, 0, 267, 200), abs=0.6)


def test_random_resized_crop_is_deterministic_for_a_seed():
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(0))
    a = random_resized_crop(image, 24, np.random.default_rng(7))
    b = random_resized_crop(image, 24, np.random.default_rng(7))
    c = random_resized_crop(image, 24, np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_resize_random_crop_is_a_window_of_the_squashed_image():
    image = torch.rand(3, 50, 80, generator=torch.Generator().manual_seed(1))
    squashed = F.interpolate(image[None], size=(40, 40), mode="bilinear", align_corners=False, antialias=True)[0]
    offsets = set()
    for seed in range(30):
        out = resize_random_crop(image, 40, 32, np.random.default_rng(seed))
        assert out.shape == (3, 32, 32)
        found = [(t, l) for t in range(9) for l in range(9) if torch.equal(out, squashed[:, t : t + 32, l : l + 32])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # the position is random
    assert torch.equal(resize_random_crop(image, 40, 32, np.random.default_rng(5)),
                       resize_random_crop(image, 40, 32, np.random.default_rng(5)))


def test_resize_center_crop_content():
    image = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10) / 300
    assert torch.equal(resize_center_crop(image, 10, 4), image[:, 3:7, 3:7])  # no resize: exact pixels
    assert torch.equal(resize_center_crop(image, 10, 10), image)
    other = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(2))
    expected = F.interpolate(other[None], size=(24, 24), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(resize_center_crop(other, 24, 21), expected[:, 1:22, 1:22])
    assert torch.equal(resize_image(other, 24, 24), expected)


def test_random_flip():
    image = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2)
    assert torch.equal(random_flip(image, np.random.default_rng(0), p=1.0), image.flip(-1))
    assert torch.equal(random_flip(image, np.random.default_rng(0), p=0.0), image)
    flips = sum(not torch.equal(random_flip(image, np.random.default_rng(s)), image) for s in range(400))
    assert 160 < flips < 240
    rng, twin = np.random.default_rng(9), np.random.default_rng(9)
    random_flip(image, rng, p=0.0)
    twin.random()
    assert rng.random() == twin.random()  # one draw whatever p


def test_gamma_scale_factor_range_and_determinism():
    rng = np.random.default_rng(0)
    factors = np.array([gamma_scale_factor(rng) for _ in range(2000)])
    assert factors.min() >= 0.3535 and factors.max() <= 1.0
    assert factors.min() < 0.36 and factors.max() > 0.99 and abs(factors.mean() - (0.3535 + 1) / 2) < 0.02
    assert gamma_scale_factor(np.random.default_rng(4)) == gamma_scale_factor(np.random.default_rng(4))
    assert 0.5 <= gamma_scale_factor(np.random.default_rng(1), 0.5, 0.6) <= 0.6
    with pytest.raises(ValueError):
        gamma_scale_factor(rng, 0.0, 1.0)
    with pytest.raises(ValueError):
        gamma_scale_factor(rng, 0.8, 0.5)


def test_scale_batch_sizes_and_content():
    batch = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    assert scale_batch(batch, 0.5).shape == (2, 3, 32, 24)
    assert scale_batch(batch, 0.3535).shape == (2, 3, 23, 17)  # round(22.6), round(16.97)
    assert scale_batch(batch, 0.37, multiple=8).shape == (2, 3, 24, 16)
    assert scale_batch(batch, 0.01, multiple=4).shape == (2, 3, 4, 4)  # at least one multiple per side
    assert scale_batch(batch, 1.0) is batch
    expected = F.interpolate(batch, size=(32, 24), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(scale_batch(batch, 0.5), expected)
    flat = torch.full((1, 3, 40, 40), 0.25)
    assert torch.allclose(scale_batch(flat, 0.41), torch.full((1, 3, 16, 16), 0.25))
    with pytest.raises(ValueError):
        scale_batch(batch, 0.0)
    with pytest.raises(ValueError):
        scale_batch(batch[0], 0.5)


@pytest.mark.parametrize("call", [
    lambda im, r: random_resized_crop(im, 0, r),
    lambda im, r: random_resized_crop(im, 8, r, area=(0.0, 1.0)),
    lambda im, r: random_resized_crop(im, 8, r, area=(0.5, 1.2)),
    lambda im, r: random_resized_crop(im, 8, r, aspect=(2.0, 1.0)),
    lambda im, r: random_resized_crop(im, 8, r, attempts=-1),
    lambda im, r: resize_random_crop(im, 16, 20, r),
    lambda im, r: resize_random_crop(im, -1, 4, r),
    lambda im, r: resize_center_crop(im, 16, 0),
    lambda im, r: random_flip(im, r, p=1.5),
    lambda im, r: random_resized_crop(im[0], 8, r),
    lambda im, r: random_resized_crop((im * 255).to(torch.uint8), 8, r),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call(torch.rand(3, 20, 20), np.random.default_rng(0))
