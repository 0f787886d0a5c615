"""Tests for delfi.io.images: decoding rules, error reasons, header-only sizes, input collection."""

from __future__ import annotations

import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from delfi.io import images
from delfi.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageEntry,
    ImageError,
    collect_images,
    image_size,
    pil_to_rgb_float,
    read_image,
)

RNG = np.random.default_rng(0)


def _noise(h: int, w: int, c: int | None = 3) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid header claiming ``width x height`` and almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _assert_rgb(t: torch.Tensor, h: int, w: int) -> None:
    assert t.dtype == torch.float32 and t.shape == (3, h, w) and t.is_contiguous()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


# ---------------------------------------------------------------- colour modes


def test_constants():
    assert DEFAULT_MAX_PIXELS == 150_000_000
    expected = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
    assert expected == IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_rgb_exact(tmp_path):
    arr = _noise(7, 11)
    arr[0, 0] = (0, 128, 255)
    t = read_image(_save(Image.fromarray(arr), tmp_path / "rgb.png"))
    _assert_rgb(t, 7, 11)
    expected = np.asarray(arr) / np.float32(255)
    assert expected.dtype == np.float32
    assert np.array_equal(t.permute(1, 2, 0).numpy(), expected)  # bit-identical
    assert t[:, 0, 0].tolist() == [0.0, np.float32(128) / np.float32(255), 1.0]


def test_grey_replicated(tmp_path):
    arr = _noise(5, 6, None)
    t = read_image(_save(Image.fromarray(arr, "L"), tmp_path / "grey.png"))
    _assert_rgb(t, 5, 6)
    for c in range(3):
        assert np.array_equal(t[c].numpy(), arr / np.float32(255))


def test_rgba_alpha_dropped(tmp_path):
    arr = _noise(4, 5, 4)
    arr[..., 3] = 0  # fully transparent: RGB must survive untouched (no compositing)
    t = read_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "rgba.png"))
    _assert_rgb(t, 4, 5)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), arr[..., :3] / np.float32(255))


def test_la_and_bilevel(tmp_path):
    la = np.stack([_noise(3, 4, None), np.zeros((3, 4), np.uint8)], axis=-1)
    t = read_image(_save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    assert np.array_equal(t[1].numpy(), la[..., 0] / np.float32(255))
    bw = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    t = read_image(_save(bw, tmp_path / "bw.pbm"))
    assert t.shape == (3, 1, 3) and t[:, 0].tolist() == [[0.0, 1.0, 0.0]] * 3


def test_palette(tmp_path):
    rgb = Image.fromarray(_noise(6, 6))
    pal = rgb.quantize(colors=16)
    assert pal.mode == "P"
    t = read_image(_save(pal, tmp_path / "pal.png"))
    expected = np.asarray(pal.convert("RGB")) / np.float32(255)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), expected)


def test_palette_with_transparency_no_warning(tmp_path):
    pal = Image.fromarray(_noise(6, 6)).quantize(colors=8)
    path = _save(pal, tmp_path / "pal.gif", transparency=0)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
        expected = np.asarray(im.convert("RGBA").convert("RGB")) / np.float32(255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = read_image(path)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), expected)


def test_cmyk(tmp_path):
    cmyk = Image.fromarray(_noise(5, 4, 4), "CMYK")
    path = _save(cmyk, tmp_path / "cmyk.tif")
    t = read_image(path)
    _assert_rgb(t, 5, 4)
    expected = np.asarray(cmyk.convert("RGB")) / np.float32(255)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), expected)


def test_16bit_png_keeps_precision(tmp_path):
    arr = np.array([[0, 257, 1000], [65535, 12345, 1]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    t = read_image(path)
    _assert_rgb(t, 2, 3)
    expected = arr.astype(np.float32) / np.float32(65535)
    for c in range(3):
        assert np.array_equal(t[c].numpy(), expected)
    assert t[0, 0, 1].item() == np.float32(257) / np.float32(65535)
    assert t[0, 0, 2].item() != round(1000 / 257) * 257 / 65535  # not via 8 bits


def test_int32_and_float_modes():
    small = Image.fromarray(np.array([[0, 300, 65535]], dtype=np.int32), "I")
    assert torch.allclose(pil_to_rgb_float(small)[0, 0], torch.tensor([0, 300 / 65535, 1.0]))
    big = Image.fromarray(np.array([[0, 50_000, 100_000]], dtype=np.int32), "I")
    assert torch.allclose(pil_to_rgb_float(big)[2, 0], torch.tensor([0, 0.5, 1.0]))
    flt = Image.fromarray(np.array([[-0.5, 0.25, 2.0, np.nan]], dtype=np.float32), "F")
    t = pil_to_rgb_float(flt)
    assert t.shape == (3, 1, 4) and t[1, 0].tolist() == [0.0, 0.25, 1.0, 0.0]


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "PA", "RGBX"])
def test_other_modes_convert(mode):
    img = Image.new(mode, (3, 2))
    t = pil_to_rgb_float(img)
    _assert_rgb(t, 2, 3)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), np.asarray(img.convert("RGB")) / np.float32(255))


def test_unsupported_mode():
    with pytest.raises(ImageError, match="unsupported colour mode RGBa"):
        pil_to_rgb_float(Image.new("RGBa", (2, 2)))


# ---------------------------------------------------------------- orientation, extensions


def _oriented_image() -> Image.Image:
    """40 wide, 20 high, black with a red 5x5 mark in the top-left corner, EXIF Orientation=6."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:5, :5] = (255, 0, 0)
    return Image.fromarray(arr)


def _exif6(img: Image.Image) -> Image.Exif:
    exif = img.getexif()
    exif[0x0112] = 6
    return exif


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_exif_orientation(tmp_path, fmt):
    img = _oriented_image()
    extra = {"quality": 95} if fmt == "jpg" else {}
    path = _save(img, tmp_path / f"rot.{fmt}", exif=_exif6(img), **extra)
    t = read_image(path)
    _assert_rgb(t, 40, 20)  # W and H swapped
    # Orientation 6: displayed rotated 90 degrees clockwise, so top-left goes to top-right.
    assert t[0, :4, -4:].min() > 0.8 and t[1:, :4, -4:].max() < 0.2
    assert t[0, :4, :4].max() < 0.2 and t[0, -4:, -4:].max() < 0.2
    raw = read_image(path, exif_orientation=False)
    _assert_rgb(raw, 20, 40)
    assert raw[0, :4, :4].min() > 0.8
    assert image_size(path) == (20, 40)


def test_wrong_extension_decodes(tmp_path):
    arr = _noise(3, 3)
    png = tmp_path / "really_a_png.jpg"
    Image.fromarray(arr).save(png, format="PNG")
    t = read_image(png)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), arr / np.float32(255))


# ---------------------------------------------------------------- errors


def _reason(path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        read_image(path, **kwargs)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value.reason


def test_error_missing_directory_empty(tmp_path):
    assert _reason(tmp_path / "nope.png") == "not found"
    assert _reason(tmp_path) == "is a directory"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "empty file (0 bytes)"


def test_error_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello, I am text\n")
    assert _reason(tmp_path / "notes.png") == "not an image (Pillow cannot identify it)"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_error_truncated(tmp_path, fmt):
    full = tmp_path / "full.img"
    Image.fromarray(_noise(64, 64)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut).startswith("truncated or corrupt: ")
    assert image_size(cut) == (64, 64)  # the header is still fine
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_error_too_large_small_limit(tmp_path):
    path = _save(Image.new("RGB", (30, 20)), tmp_path / "small.png")
    assert _reason(path, max_pixels=599) == "too large: 30x20 = 600 px exceeds the limit of 599 px"
    assert read_image(path, max_pixels=600).shape == (3, 20, 30)


def test_error_too_large_from_header_only(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning leaks out
        reason = _reason(path)
    assert reason == "too large: 20000x20000 = 400.0 Mpx exceeds the limit of 150.0 Mpx"
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert image_size(path) == (20000, 20000)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_error_zero_size(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "zero.png")  # Pillow refuses 0 in headers
    monkeypatch.setattr(images, "_open_unguarded", lambda p: Image.new("RGB", (0, 4)))
    assert _reason(path) == "zero-size image (0x4)"


def test_error_cannot_read(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)
    assert _reason(path) == "cannot read: Permission denied"


def test_image_error_attributes_and_pickle():
    err = ImageError(Path("a/b.jpg"), "not found")
    assert (err.path, err.reason, str(err)) == ("a/b.jpg", "not found", "a/b.jpg: not found")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageError) and (back.path, back.reason) == (err.path, err.reason)


# ---------------------------------------------------------------- image_size


def test_image_size_reads_header_only(tmp_path, monkeypatch):
    img = _oriented_image()
    jpg = _save(img, tmp_path / "rot.jpg", exif=_exif6(img))
    png = _save(img, tmp_path / "rot.png", exif=_exif6(img))
    plain = _save(Image.new("L", (13, 7)), tmp_path / "plain.bmp")

    def no_decode(self):
        raise AssertionError("image_size decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert image_size(jpg) == (20, 40)
    assert image_size(png) == (20, 40)
    assert image_size(plain) == (13, 7)
    with pytest.raises(ImageError, match="not found"):
        image_size(tmp_path / "missing.png")


# ---------------------------------------------------------------- collect_images


def _touch_image(path: Path) -> Path:
    return _save(Image.new("RGB", (2, 2)), path, format="PNG")


def test_collect_folder_recursive_sorted(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.jpg", "a.JPG", "sub/c.png", "sub/deeper/d.webp", "z.tiff"]:
        _touch_image(root / rel)
    (root / "readme.md").write_text("x")
    (root / "sub" / "notes.txt").write_text("x")
    entries = collect_images([root])
    assert [e.name for e in entries] == ["a.JPG", "b.jpg", "sub/c.png", "sub/deeper/d.webp", "z.tiff"]
    assert all(isinstance(e, ImageEntry) and e.path == root / e.name for e in entries)
    flat = collect_images([root], recursive=False)
    assert [e.name for e in flat] == ["a.JPG", "b.jpg", "z.tiff"]


def test_collect_txt_list(tmp_path):
    data = tmp_path / "hpatches"
    _touch_image(data / "i_ajuntament" / "1.ppm")
    _touch_image(data / "i_ajuntament" / "2.ppm")
    absolute = _touch_image(tmp_path / "elsewhere" / "abs.png")
    lst = data / "list.txt"
    lst.write_text(
        "# a comment\n\ni_ajuntament/1.ppm\n  ./i_ajuntament//2.ppm  \n"
        f"{absolute}\nmissing/gone.png\n# i_ajuntament/3.ppm\n"
    )
    entries = collect_images([lst])
    assert [e.name for e in entries] == [
        "i_ajuntament/1.ppm",
        "i_ajuntament/2.ppm",
        absolute.as_posix(),
        "missing/gone.png",
    ]
    assert entries[0].path == data / "i_ajuntament/1.ppm" and entries[0].path.is_file()
    assert entries[1].path.is_file() and entries[2].path == absolute
    assert entries[3].path == data / "missing/gone.png" and not entries[3].path.exists()


def test_collect_direct_files_and_duplicates(tmp_path, monkeypatch):
    work = tmp_path / "work"
    a = _touch_image(work / "imgs" / "a.png")
    outside = _touch_image(tmp_path / "outside" / "o.png")
    monkeypatch.chdir(work)
    entries = collect_images(["imgs/a.png", outside, "./imgs/a.png", work / "imgs", str(a)])
    assert [e.name for e in entries] == ["imgs/a.png", outside.as_posix(), "a.png"]
    assert entries[0].path == Path("imgs/a.png") and entries[1].path == outside
    assert collect_images("imgs/a.png") == [ImageEntry(Path("imgs/a.png"), "imgs/a.png")]


def test_collect_missing_input(tmp_path):
    with pytest.raises(ImageError) as info:
        collect_images([tmp_path / "no_such_dir"])
    assert info.value.reason == "not found" and info.value.path == str(tmp_path / "no_such_dir")


def test_collect_then_read_reports_per_image(tmp_path):
    _touch_image(tmp_path / "ok.png")
    (tmp_path / "list.txt").write_text("ok.png\ngone.png\n")
    results = {}
    for entry in collect_images([tmp_path / "list.txt"]):
        try:
            results[entry.name] = tuple(read_image(entry.path).shape)
        except ImageError as e:
            results[entry.name] = e.reason
    assert results == {"ok.png": (3, 2, 2), "gone.png": "not found"}


# ---------------------------------------------------------------- real data


def test_real_r2d2_images(shared_data):
    folder = shared_data / "r2d2" / "imgs"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    boat = read_image(folder / "boat.png")
    assert boat.shape == (3, 512, 512)
    assert torch.equal(boat[0], boat[1]) and torch.equal(boat[1], boat[2])
    path = folder / "brooklyn.png"
    brooklyn = read_image(path)
    assert brooklyn.shape == (3, 820, 1280)
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        expected = np.asarray(im.convert("RGB")) / np.float32(255)
    assert np.array_equal(brooklyn.permute(1, 2, 0).numpy(), expected)
    assert image_size(path) == (1280, 820)
    names = [e.name for e in collect_images([folder])]
    assert "boat.png" in names and names == sorted(names)
