"""Image decoding and image-list collection.

`read_image` turns any image file Pillow understands into a ``(3, H, W)`` float32 RGB tensor in
``[0, 1]``, with EXIF orientation applied, a decompression-bomb guard checked from the header
before any pixel is decoded, and every failure reported as an `ImageError` naming the file.
`collect_images` expands files, folders and ``.txt`` lists into `ImageEntry` items whose ``name``
is the key used in feature stores.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageEntry",
    "ImageError",
    "collect_images",
    "image_size",
    "pil_to_rgb_float",
    "read_image",
]

DEFAULT_MAX_PIXELS: int = 150_000_000
"""Largest ``width * height`` that `read_image` decodes unless told otherwise."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
"""File suffixes (lower-case, with the dot) that `collect_images` picks up inside folders."""

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transpose, rotate 90/270: width <-> height
_CONVERTIBLE_MODES = frozenset({"L", "P", "PA", "LA", "RGBA", "RGBX", "CMYK", "YCbCr", "1", "LAB", "HSV"})
_UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_BOMB_LOCK = threading.Lock()  # guards the brief, restored change of Image.MAX_IMAGE_PIXELS


class ImageError(Exception):
    """A bad image file. ``.path`` is the file (str), ``.reason`` a short description;
    ``str(error) == f"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (worker processes)
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageEntry:
    """One image to process: ``path`` is where the file is, ``name`` its key in feature stores
    (a posix path relative to the folder, list or working directory it came from)."""

    path: Path
    name: str


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx" if pixels >= 100_000 else f"{pixels} px"


def _open_unguarded(path: Path) -> Image.Image:
    """`Image.open` with Pillow's own bomb check silenced; our `max_pixels` check replaces it.
    Pillow's limit is a module global: it is lifted only when Pillow refuses the header, and
    restored straight after (the header is read lazily, no pixel is decoded here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            pass
        with _BOMB_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _open(path: Path) -> Image.Image:
    """Open (header only) or raise an `ImageError` saying why not. Use as a context manager."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(path, "not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a directory")
    if st.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        return _open_unguarded(path)
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (Pillow cannot identify it)") from None
    except FileNotFoundError:
        raise ImageError(path, "not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error... on bad headers
        raise ImageError(path, f"truncated or corrupt: {_detail(e)}") from None


def _detail(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _orientation(img: Image.Image, *, header_only: bool) -> int:
    """The EXIF orientation (1 = upright). With ``header_only`` never triggers a pixel decode
    (Pillow loads a PNG to look for an eXIf chunk after the image data; we skip that case)."""
    if header_only and img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # a broken EXIF block is not worth failing the image for
        return 1


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_orientation: bool = True,
) -> torch.Tensor:
    """Decode an image file into a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]``.

    ``H, W`` are the displayed size: EXIF orientation is applied unless ``exif_orientation`` is
    False. Images with more than ``max_pixels`` pixels are refused from the header, before any
    decoding. Colour handling is that of `pil_to_rgb_float`. Multi-frame files give frame 0.

    Raises:
        ImageError: not found, a directory, empty, not an image, truncated or corrupt, too large,
            zero-size, unsupported colour mode, or unreadable (permissions, I/O errors).
    """
    p = Path(os.fspath(path))
    with _open(p) as img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(p, f"zero-size image ({width}x{height})")
        if width * height > max_pixels:
            sizes = f"{width}x{height} = {_mpx(width * height)}"
            raise ImageError(p, f"too large: {sizes} exceeds the limit of {_mpx(max_pixels)}")
        try:
            img.load()  # forces the full decode, so truncation is caught here
        except Exception as e:
            raise ImageError(p, f"truncated or corrupt: {_detail(e)}") from None
        if exif_orientation and _orientation(img, header_only=False) != 1:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as e:
                raise ImageError(p, f"truncated or corrupt: {_detail(e)}") from None
        return _to_rgb_float(img, p)


def pil_to_rgb_float(image: Image.Image) -> torch.Tensor:
    """Convert a Pillow image into a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]``.

    - ``RGB``: ``uint8 / 255`` in float32, bit-identical to torchvision's ``ToTensor``.
    - ``L``, ``1``, ``P``, ``PA``, ``LA``, ``RGBA``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``,
      ``HSV``: Pillow's ``convert("RGB")``; alpha is dropped, not composited; grey is replicated.
    - 16-bit ``I;16*``: ``value / 65535`` at full precision, replicated to 3 channels.
    - ``I`` (int32): ``/ 65535`` when the maximum fits in 16 bits, else ``/ max``; ``F``: clipped
      to ``[0, 1]`` (NaN becomes 0). Both replicated to 3 channels.

    No EXIF orientation is applied here. Raises `ImageError` for any other mode.
    """
    return _to_rgb_float(image, getattr(image, "filename", "") or "<image>")


def _to_rgb_float(img: Image.Image, name: str | os.PathLike) -> torch.Tensor:
    mode = img.mode
    if mode in _CONVERTIBLE_MODES:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # the direct P -> RGB path warns about the transparency
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        rgb = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W, 3), a writable copy
        return rgb.permute(2, 0, 1).contiguous().float() / 255
    if mode in _UINT16_MODES:
        grey = np.asarray(img).astype(np.float32) / np.float32(65535)
    elif mode == "I":
        values = np.asarray(img, dtype=np.int32).astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        grey = np.clip(values / (65535.0 if peak <= 65535 else peak), 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
    else:
        raise ImageError(name, f"unsupported colour mode {mode}")
    grey_t = torch.from_numpy(np.ascontiguousarray(grey))  # (H, W)
    return grey_t.unsqueeze(0).expand(3, -1, -1).contiguous()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (after EXIF orientation), from the header only.

    No pixel is decoded, so a truncated file still reports its size and no `max_pixels` applies.
    (A PNG whose eXIf chunk comes after the pixel data is reported unrotated.)
    Raises `ImageError` like `read_image` for missing, empty, unreadable or non-image files.
    """
    p = Path(os.fspath(path))
    with _open(p) as img:
        width, height = img.size
        if _orientation(img, header_only=True) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return width, height


def _norm_posix(text: str) -> str:
    """Normalised posix form of a path written in a list: no ``./``, no duplicate slashes."""
    return posixpath.normpath(PurePath(text).as_posix())


def _scan_folder(folder: Path, recursive: bool) -> list[tuple[Path, str]]:
    """Image files under ``folder`` as ``(path, name relative to folder)``, sorted by name.
    Symlinked folders are followed once (cycles are cut)."""
    found: list[tuple[Path, str]] = []
    seen_dirs: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        if not recursive:
            dirs[:] = []
        rel_root = Path(root).relative_to(folder)
        for f in files:
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(root, f)):
                found.append((Path(root) / f, (rel_root / f).as_posix()))
    found.sort(key=lambda item: item[1])
    return found


def _read_list(list_file: Path) -> list[tuple[Path, str]]:
    """Entries of a ``.txt`` list: one path a line, ``#`` comments and blank lines skipped,
    relative paths taken from the list's folder. Missing files are kept (reported later)."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ImageError(list_file, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ImageError(list_file, "cannot read: not a UTF-8 text list") from None
    entries: list[tuple[Path, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = _norm_posix(line)
        path = Path(line) if os.path.isabs(line) else list_file.parent / line
        entries.append((path, name))
    return entries


def _direct_name(path: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.getcwd()).as_posix()
    except ValueError:
        return absolute.as_posix()


def collect_images(inputs: Sequence[str | os.PathLike], *, recursive: bool = True) -> list[ImageEntry]:
    """Expand image files, folders and ``.txt`` lists into `ImageEntry` items, in input order.

    - folder: its files with an `IMAGE_EXTENSIONS` suffix (any case), recursively unless
      ``recursive`` is False, sorted by name; names are relative to the folder.
    - ``.txt`` file: one path a line (blank and ``#`` lines skipped, relative paths from the
      list's folder); the name is the line as written, normalised. Missing entries are kept.
    - any other file: named relative to the working directory when under it, else absolute.

    Names are posix paths; a name seen before is dropped (first wins). A single str or path is
    accepted as one input. Raises ``ImageError(input, "not found")`` for a missing input.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: list[ImageEntry] = []
    seen: set[str] = set()

    def add(path: Path, name: str) -> None:
        if name not in seen:
            seen.add(name)
            entries.append(ImageEntry(path=path, name=name))

    for item in inputs:
        p = Path(os.fspath(item))
        if p.is_dir():
            for path, name in _scan_folder(p, recursive):
                add(path, name)
        elif not p.exists():
            raise ImageError(p, "not found")
        elif p.suffix.lower() == ".txt":
            for path, name in _read_list(p):
                add(path, name)
        else:
            add(p, _direct_name(p))
    return entries


def image_to_tensor(image: object) -> torch.Tensor:
    """Any image a model accepts, as a (3, H, W) float32 RGB tensor in [0, 1].

    Accepts a path, a PIL image, an HxWx3 (or HxW) uint8 / float array, or a (3, H, W) tensor.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb_float(image)
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        return image.float()
    raise TypeError(f"unsupported image type {type(image).__name__}")
