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
        "@abs" + absolute.as_posix(),
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
    assert [e.name for e in entries] == ["imgs/a.png", "@abs" + outside.as_posix(), "a.png"]
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


# ---------------------------------------------------------------- naming rule: every image can be named


@pytest.mark.parametrize("spelling", ["absolute", "dotdot"])
def test_files_outside_the_working_directory_get_a_storable_reversible_name(tmp_path, monkeypatch, spelling):
    from delfi.io.images import name_problem, name_to_path

    outside = _touch_image(tmp_path / "elsewhere" / "x.jpg")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    given = outside if spelling == "absolute" else Path("../elsewhere/x.jpg")
    (entry,) = collect_images([given])
    assert entry.name == "@abs" + outside.as_posix()
    assert name_problem(entry.name) is None
    assert name_to_path(entry.name) == outside
    assert collect_images([given])[0].name == entry.name  # stable from run to run


def test_list_lines_leaving_the_list_folder_or_absolute(tmp_path):
    from delfi.io.images import name_problem, name_to_path

    up = _touch_image(tmp_path / "b.jpg")
    absolute = _touch_image(tmp_path / "deep" / "abs.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text(f"../b.jpg\n{absolute}\n../../{tmp_path.name}/b.jpg\n")
    entries = collect_images([lists / "l.txt"])
    names = [e.name for e in entries]
    assert names[:2] == ["@up/b.jpg", "@abs" + absolute.as_posix()]
    assert all(name_problem(n) is None for n in names)
    assert name_to_path(names[0], lists).resolve() == up.resolve()
    assert name_to_path(names[1], lists) == absolute
    assert names[2] == f"@up/@up/{tmp_path.name}/b.jpg"  # another spelling of the same file: its own name


def test_two_files_with_one_name_the_later_is_a_failure(tmp_path):
    a = _touch_image(tmp_path / "one" / "a.png")
    b = _touch_image(tmp_path / "two" / "a.png")
    found = collect_images([tmp_path / "one", tmp_path / "two", tmp_path / "one"])
    assert [e.path for e in found] == [a]
    ((label, reason),) = found.failed
    assert label == str(b) and "'a.png'" in reason and "already used" in reason and str(a) in reason


@pytest.mark.parametrize("reserved", ["scores", "keypoints", "descriptors", "scales", "global_descriptor"])
def test_names_the_store_cannot_hold_are_failures_not_entries(tmp_path, reserved):
    _touch_image(tmp_path / "photos" / reserved / "a.png")
    _touch_image(tmp_path / "photos" / "ok.png")
    found = collect_images([tmp_path / "photos"])
    assert [e.name for e in found] == ["ok.png"]
    ((label, reason),) = found.failed
    assert label.endswith("a.png") and repr(reserved) in reason and "reserved" in reason


def test_every_collected_name_is_storable(tmp_path, monkeypatch):
    """The class, not the example: whatever the spelling, the names of entries pass the store's check."""
    from delfi.io.features import _check_name

    _touch_image(tmp_path / "in" / "sub" / "a.png")
    _touch_image(tmp_path / "up.png")
    monkeypatch.chdir(tmp_path / "in")
    (tmp_path / "in" / "l.txt").write_text(f"./sub//a.png\n../up.png\n{tmp_path / 'up.png'}\n")
    inputs = ["sub/a.png", "./sub/../sub/a.png", "../up.png", tmp_path / "up.png", "sub", ".", "l.txt", "..//in/sub/a.png"]
    found = collect_images(inputs)
    assert [e.name for e in found] == ["sub/a.png", "@abs" + (tmp_path / "up.png").as_posix(), "a.png", "@up/up.png"]
    assert not found.failed
    for entry in found:
        assert _check_name(entry.name) == entry.name


# ---------------------------------------------------------------- folder scans say what they skip


def test_folder_scan_lists_what_it_skips(tmp_path):
    root = tmp_path / "photos"
    _touch_image(root / "good.png")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "folder.jpg").mkdir()
    (root / "again").symlink_to(root)
    found = collect_images([root])
    assert [e.name for e in found] == ["good.png"]
    reasons = {Path(path).name: reason for path, reason in found.skipped}
    assert "dangling symbolic link" in reasons["dangling.jpg"]
    assert reasons["loop.jpg"] == "symbolic link loop"
    assert "same folder as" in reasons["again"]
    flat = collect_images([root], recursive=False)
    assert "folder named like an image" in {Path(p).name: r for p, r in flat.skipped}["folder.jpg"]


def test_a_broken_link_named_explicitly_is_an_entry_that_fails_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gone.jpg").symlink_to("missing.jpg")
    (entry,) = collect_images(["gone.jpg"])
    with pytest.raises(ImageError, match="dangling symbolic link"):
        read_image(entry.path)


# ---------------------------------------------------------------- decoding at a working size


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_image_reduces_large_images_to_the_size_asked(tmp_path, fmt):
    from delfi.io.images import decode_image

    path = _save(_gradient(640, 480), tmp_path / f"g.{fmt.lower()}", format=fmt)
    decoded = decode_image(path, lambda w, h: (w // 5, h // 5))
    assert decoded.original_size == (640, 480)
    _assert_rgb(decoded.image, 96, 128)
    full = read_image(path)  # same picture: the reduced one is the full one resampled (pixel centres)
    resized = torch.nn.functional.interpolate(full[None], (96, 128), mode="bilinear", antialias=True)[0]
    assert float((decoded.image - resized).abs().mean()) < 0.02


def test_decode_image_keeps_images_under_twice_the_working_size_unchanged(tmp_path):
    from delfi.io.images import decode_image

    path = _save(Image.fromarray(_noise(60, 80)), tmp_path / "n.png", format="PNG")
    for target in (None, lambda w, h: (w // 2 + 1, h // 2 + 1), lambda w, h: (w, h), lambda w, h: None):
        decoded = decode_image(path, target)
        assert torch.equal(decoded.image, read_image(path)) and decoded.original_size == (80, 60)


def test_decode_image_reduced_geometry_is_exact_in_pixel_centres(tmp_path):
    """A bright column at original x maps to reduced (x + 0.5) * w / W - 0.5, also for JPEG drafts."""
    from delfi.io.images import decode_image

    for fmt in ("PNG", "JPEG"):
        array = np.zeros((400, 1000, 3), np.uint8)
        array[:, 703:713] = 255  # centre 707.5 ... choose a 10 px bar: centre x = 707.5
        path = _save(Image.fromarray(array), tmp_path / f"bar.{fmt.lower()}", format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        decoded = decode_image(path, lambda w, h: (100, 40))
        profile = decoded.image[0].mean(0).double()
        centre = float((profile * torch.arange(100)).sum() / profile.sum())
        assert abs(centre - ((707.5 + 0.5) * 100 / 1000 - 0.5)) < 0.1, fmt


def test_decode_image_orientation_and_modes(tmp_path):
    from delfi.io.images import decode_image

    img = _gradient(400, 200)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate: displayed 200 x 400
    path = _save(img, tmp_path / "r.jpg", format="JPEG", exif=exif.tobytes())
    decoded = decode_image(path, lambda w, h: (w // 4, h // 4))
    assert decoded.original_size == (200, 400) and decoded.image.shape == (3, 100, 50)
    for mode in ("L", "P", "RGBA", "I;16"):
        source = Image.fromarray(_noise(200, 300)).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            source = Image.fromarray((np.asarray(source).astype(np.uint16) * 257))
        p = _save(source, tmp_path / f"m{mode.replace(';', '')}.png", format="PNG")
        out = decode_image(p, lambda w, h: (30, 20))
        _assert_rgb(out.image, 20, 30)
        assert out.original_size == (300, 200)
