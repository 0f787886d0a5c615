"""Image decoding and image-list collection.

`read_image` turns any image file Pillow understands into a ``(3, H, W)`` float32 RGB tensor in
``[0, 1]``, with EXIF orientation applied, a decompression-bomb guard checked from the header
before any pixel is decoded, and every failure reported as an `ImageError` naming the file.
`decode_image` does the same at a working size: a caller that needs the image smaller (a model
whose pyramid starts below the file's size) gets it decoded and reduced in 8 bits, so peak memory
follows the working size (JPEG) or the file's 8-bit pixels (other formats), never a full-size float
copy. `collect_images` expands files, folders and ``.txt`` lists into `ImageEntry` items whose
``name`` is the key used in feature stores.

Naming rule (stable: the same input spelling gives the same name on every run, so runs resume):

- a file in a scanned folder: its path relative to that folder (``photos/sub/a.jpg`` -> ``sub/a.jpg``);
- a line of a ``.txt`` list: the line as written, normalised (no ``./``, no ``//``), relative paths
  being relative to the list's folder; each leading ``..`` is written ``@up``
  (``../b.jpg`` -> ``@up/b.jpg``);
- a file named on the command line: its path relative to the working directory when it lies under
  it, else its absolute path;
- an absolute path (a list line, or a file outside the working directory) is written ``@abs/`` plus
  the path without its leading ``/`` (``/data/x.jpg`` -> ``@abs/data/x.jpg``).

`name_to_path` reverses the rule. Two different files never share a name in one collection: the
later one is reported in `ImageCollection.failed` with the reason. A name the feature store cannot
hold (a part named like a stored array, e.g. ``scores/a.jpg``) is reported there too. Folder items
that are not images one can read (dangling symbolic links, link loops, folders named like images
when not recursing, unreadable folders, a folder reached twice through links) are listed in
`ImageCollection.skipped` with the reason.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ABSOLUTE_PREFIX",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UP_PART",
    "DecodedImage",
    "ImageCollection",
    "ImageEntry",
    "ImageError",
    "TargetSize",
    "collect_images",
    "decode_image",
    "image_size",
    "load_for_model",
    "name_problem",
    "name_to_path",
    "pil_to_rgb_float",
    "read_image",
]

ABSOLUTE_PREFIX = "@abs"
"""First part of the store name of an absolute path: ``/data/x.jpg`` -> ``@abs/data/x.jpg``."""

UP_PART = "@up"
"""Store-name part standing for a leading ``..`` of a list line: ``../x.jpg`` -> ``@up/x.jpg``."""

REDUCE_FROM = 2
"""`decode_image` reduces an image only when it is at least this many times the size asked for;
smaller images are decoded as they are (the caller's own resizing applies, bit for bit)."""

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
    (a posix path relative to the folder, list or working directory it came from; see the
    naming rule in the module docstring)."""

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
    except OSError as e:
        raise ImageError(path, _stat_failure(path, e)) from None
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


def _stat_failure(path: str | os.PathLike, error: OSError) -> str:
    """Why ``os.stat(path)`` failed, in words (dangling links and link loops named as such)."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(error, FileNotFoundError):
        if os.path.islink(path):
            try:
                return f"dangling symbolic link (to {os.readlink(path)}, which does not exist)"
            except OSError:
                return "dangling symbolic link"
        return "not found"
    return f"cannot read: {error.strerror or error}"


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


class DecodedImage(NamedTuple):
    """An image decoded at a working size.

    Attributes:
        image: (3, h, w) float32 RGB in [0, 1]; ``(w, h)`` may be smaller than the file's size.
        original_size: (W, H) the displayed size of the file (after EXIF orientation).

    Pixel ``(x, y)`` of ``image`` (delfi's pixel-centre convention) is the original point
    ``((x + 0.5) * W / w - 0.5, (y + 0.5) * H / h - 0.5)``: the reduction keeps this geometry
    exactly (see `decode_image`).
    """

    image: torch.Tensor
    original_size: tuple[int, int]


TargetSize = Callable[[int, int], "tuple[int, int] | None"]
"""``(W, H) -> (w, h)``: the size a caller wants of an image of displayed size (W, H), or None."""


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
    return decode_image(path, max_pixels=max_pixels, exif_orientation=exif_orientation).image


def decode_image(
    path: str | os.PathLike,
    target_size: TargetSize | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_orientation: bool = True,
) -> DecodedImage:
    """Decode an image file, reduced to ``target_size(W, H)`` when that is much smaller.

    ``target_size`` gets the displayed size (W, H) and returns the size (w, h) the caller works at
    (or None). The image is reduced only when ``W >= REDUCE_FROM * w`` and ``H >= REDUCE_FROM * h``;
    otherwise it is returned at full size, exactly as `read_image` decodes it. Reduction happens
    before any float conversion: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the decoder itself
    (``Image.draft``, the largest scale still >= (w, h)), then Pillow's antialiased ``BILINEAR``
    resize brings the 8-bit image to exactly (w, h) with the box of the whole original, so pixel
    centres map as ``x -> (x + 0.5) * W / w - 0.5``. Peak memory: the drafted JPEG or the file's
    8-bit pixels (PNG, TIFF... are decoded whole by Pillow), plus the small float result.

    Returns:
        `DecodedImage` (image (3, h, w) or (3, H, W), original size (W, H)).

    Raises:
        ImageError: as `read_image`.
    """
    p = Path(os.fspath(path))
    with _open(p) as img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(p, f"zero-size image ({width}x{height})")
        if width * height > max_pixels:
            sizes = f"{width}x{height} = {_mpx(width * height)}"
            raise ImageError(p, f"too large: {sizes} exceeds the limit of {_mpx(max_pixels)}")
        swapped = exif_orientation and _orientation(img, header_only=True) in _SWAPPING_ORIENTATIONS
        target = _wanted_size(target_size, (height, width) if swapped else (width, height))
        stored_target = None if target is None else ((target[1], target[0]) if swapped else target)
        box = (0.0, 0.0, float(width), float(height))
        if stored_target is not None and img.format == "JPEG":
            drafted = img.draft(img.mode, stored_target)  # DCT scaling: size ceil(W / d), d in 1, 2, 4, 8
            if drafted is not None:
                box = tuple(float(v) for v in drafted[1])  # the whole original, in drafted pixels (W / d)
        try:
            img.load()  # forces the full decode, so truncation is caught here
        except Exception as e:
            raise ImageError(p, f"truncated or corrupt: {_detail(e)}") from None
        orientation = _orientation(img, header_only=False) if exif_orientation else 1
        if orientation in _SWAPPING_ORIENTATIONS and not swapped and target is not None:
            target = None  # the orientation was only known after decoding (PNG eXIf after the data)
            stored_target = None
        if stored_target is not None:
            img = _reduce(img, stored_target, box, p)
        if orientation != 1:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as e:
                raise ImageError(p, f"truncated or corrupt: {_detail(e)}") from None
        displayed = (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
        return DecodedImage(_to_rgb_float(img, p), displayed)


def _wanted_size(target_size: TargetSize | None, displayed: tuple[int, int]) -> tuple[int, int] | None:
    """The caller's size when it is worth reducing to (at least `REDUCE_FROM` times smaller)."""
    if target_size is None:
        return None
    wanted = target_size(*displayed)
    if wanted is None:
        return None
    w, h = int(wanted[0]), int(wanted[1])
    if w < 1 or h < 1 or displayed[0] < REDUCE_FROM * w or displayed[1] < REDUCE_FROM * h:
        return None
    return w, h


def _reduce(img: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float], name: Path) -> Image.Image:
    """Antialiased bilinear resize to ``size`` in 8 bits (16-bit grey in 32-bit ints), over ``box``.
    Palette, bilevel and alpha images are first converted as `pil_to_rgb_float` would convert them
    (alpha dropped, not composited)."""
    mode = img.mode
    if mode in _CONVERTIBLE_MODES and mode not in ("L", "RGB"):
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    elif mode in _UINT16_MODES:
        img = img.convert("I")
    try:
        return img.resize(size, Image.Resampling.BILINEAR, box=box)
    except (ValueError, OSError) as e:
        raise ImageError(name, f"cannot reduce a {mode} image: {_detail(e)}") from None


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


def _absolute_name(path: str | os.PathLike) -> str:
    """``/data/x.jpg`` -> ``@abs/data/x.jpg`` (the absolute path, normalised, symlinks kept)."""
    posix = PurePath(os.path.abspath(path)).as_posix()
    return f"{ABSOLUTE_PREFIX}/{posix.lstrip('/')}"


def _relative_name(posix: str) -> str:
    """A normalised relative posix path with each leading ``..`` written `UP_PART`."""
    parts = posix.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return "/".join([UP_PART] * ups + parts[ups:])


def name_to_path(name: str, base: str | os.PathLike = ".") -> Path:
    """The file a store name stands for (the naming rule reversed): ``@abs/...`` names are
    absolute, ``@up`` parts are ``..``, other names are relative to ``base`` (the folder, list
    folder or working directory the names were made from)."""
    parts = name.split("/")
    if parts[0] == ABSOLUTE_PREFIX:
        return Path("/" + "/".join(parts[1:]))
    return Path(base, *[".." if part == UP_PART else part for part in parts])


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a feature-store entry name (None when it can)."""
    from delfi.io.features import _check_name  # the store's own rule, so both can never disagree

    try:
        _check_name(name)
        return None
    except ValueError:
        pass
    for part in name.split("/"):
        if part not in ("", ".", ".."):
            try:
                _check_name(part)
            except ValueError:
                return f"its store name {name!r} cannot be stored: {part!r} is a reserved name in feature stores (rename it)"
    return f"its store name {name!r} cannot be stored (empty, '.' or '..' parts)"


def _not_a_file(path: str) -> str:
    """Why a folder item named like an image is not a regular file."""
    try:
        os.stat(path)
    except OSError as e:
        return _stat_failure(path, e)
    if os.path.isdir(path):
        return "a folder named like an image (folders are not scanned without recursion)"
    return "not a regular file (device, pipe or socket)"


def _scan_folder(folder: Path, recursive: bool, skipped: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    """Image files under ``folder`` as ``(path, name relative to folder)``, sorted by name.

    Symlinked folders are followed once; what is not scanned is appended to ``skipped`` as
    ``(path, reason)``: items named like images that are not regular files, folders reached again
    through links, folders that cannot be read, and (without ``recursive``) folders named like images.
    """
    found: list[tuple[Path, str]] = []
    seen_dirs: dict[str, str] = {}

    def unreadable(error: OSError) -> None:
        skipped.append((str(error.filename), f"cannot read folder: {error.strerror or error}"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(root)
        if real in seen_dirs:
            skipped.append((root, f"same folder as {seen_dirs[real]} (through a symbolic link): scanned once"))
            dirs[:] = []
            continue
        seen_dirs[real] = root
        if not recursive:
            for d in sorted(dirs):
                if os.path.splitext(d)[1].lower() in IMAGE_EXTENSIONS:
                    skipped.append((os.path.join(root, d), _not_a_file(os.path.join(root, d))))
            dirs[:] = []
        dirs.sort()
        rel_root = Path(root).relative_to(folder)
        for f in sorted(files):
            if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(root, f)
            if os.path.isfile(full):
                found.append((Path(root) / f, (rel_root / f).as_posix()))
            else:
                skipped.append((full, _not_a_file(full)))
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
        if os.path.isabs(line):
            entries.append((Path(line), _absolute_name(line)))
        else:
            entries.append((list_file.parent / line, _relative_name(_norm_posix(line))))
    return entries


def _direct_name(path: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.getcwd()).as_posix()
    except ValueError:
        return _absolute_name(absolute)


class ImageCollection(list):
    """The `ImageEntry` items of `collect_images` (a list), with what could not be used.

    Attributes:
        skipped: ``(path, reason)`` of folder items that are not readable images (dangling links,
            link loops, folders named like images...): not named by the user one by one.
        failed: ``(input, reason)`` of images that cannot go into a feature store under their
            name (reserved parts, or a name already taken by another file in this collection).
    """

    def __init__(self, entries=(), skipped=(), failed=()) -> None:
        super().__init__(entries)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.failed: list[tuple[str, str]] = list(failed)


def collect_images(inputs: Sequence[str | os.PathLike], *, recursive: bool = True) -> ImageCollection:
    """Expand image files, folders and ``.txt`` lists into `ImageEntry` items, in input order.

    - folder: its files with an `IMAGE_EXTENSIONS` suffix (any case), recursively unless
      ``recursive`` is False, sorted by name; names are relative to the folder.
    - ``.txt`` file: one path a line (blank and ``#`` lines skipped, relative paths from the
      list's folder); the name is the line as written, normalised. Missing entries are kept.
    - any other file (also a dangling link: it fails when read): named relative to the working
      directory when under it, else ``@abs/<absolute path>``.

    See the module docstring for the whole naming rule. The same file under the same name again is
    dropped (first wins); another file under a name already given, or a name a feature store cannot
    hold, goes to ``.failed`` with the reason. A single str or path is accepted as one input.
    Raises ``ImageError(input, "not found")`` for a missing input.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    collection = ImageCollection()
    seen: dict[str, tuple[str, Path]] = {}  # name -> (real path, path)

    def add(path: Path, name: str) -> None:
        problem = name_problem(name)
        if problem is not None:
            collection.failed.append((str(path), problem))
            return
        real = os.path.realpath(path)
        if name in seen:
            if seen[name][0] != real:
                collection.failed.append((str(path), f"its store name {name!r} is already used by {seen[name][1]} in this run"))
            return
        seen[name] = (real, path)
        collection.append(ImageEntry(path=path, name=name))

    for item in inputs:
        p = Path(os.fspath(item))
        if p.is_dir():
            for path, name in _scan_folder(p, recursive, collection.skipped):
                add(path, name)
        elif not p.exists() and not p.is_symlink():
            raise ImageError(p, "not found")
        elif p.suffix.lower() == ".txt" and p.exists():
            for path, name in _read_list(p):
                add(path, name)
        else:
            add(p, _direct_name(p))
    return collection


def load_for_model(image: object, target_size: TargetSize | None = None) -> DecodedImage:
    """Any image a model accepts, decoded for a model working at ``target_size`` (see
    `decode_image`): paths are decoded (and reduced when much larger), a `DecodedImage` is kept,
    anything else goes through `image_to_tensor` at full size."""
    if isinstance(image, DecodedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        return decode_image(image, target_size)
    rgb = image_to_tensor(image)
    return DecodedImage(rgb, (int(rgb.shape[-1]), int(rgb.shape[-2])))


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
