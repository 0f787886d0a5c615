"""Labelled image lists for landmark classification (DELF, DELG): class folders or GLDv2 csv files.

Two sources:

- `landmark_folders`: ``root/<class name>/**/<image>`` (one sub-folder per class, images found
  recursively inside it);
- `gldv2_csv`: a Google Landmarks v2 list, either the train list ``id,url,landmark_id`` (one image
  per row) or the clean list ``landmark_id,images`` (space-separated image ids), with the images in
  the GLDv2 layout ``images_root/a/b/c/abc....jpg`` or flat, ``images_root/abc....jpg``.

Listing never decodes an image (a GLDv2 list has millions): files are only found (folders) or
stat-ed (csv). Whatever is left out while listing is reported in ``LandmarkSamples.skipped`` as
``(file or "csv:LINE", reason)``.

`split_samples` holds out validation images per class by the SHA-1 of the file *name* (the rule
of `delfi.train.data.held_out_split`, applied class by class), and `class_balanced_weights` gives
per-sample weights for a class-balanced draw.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["LANDMARK_IMAGE_EXTENSIONS", "LandmarkSamples", "class_balanced_weights", "gldv2_csv",
           "landmark_folders", "split_samples"]

LANDMARK_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_TRAIN_HEADER = ("id", "url", "landmark_id")
_CLEAN_HEADER = ("landmark_id", "images")
_ACCEPTED_HEADERS = "'id,url,landmark_id' (GLDv2 train list) or 'landmark_id,images' (GLDv2 clean list)"


@dataclass
class LandmarkSamples:
    """Image files with a class index each.

    Attributes:
        paths: the N image files.
        labels: (N,) int64 class index in ``[0, K)``; ``classes[labels[i]]`` is image i's class.
        classes: the K class names, sorted (folder names, or GLDv2 landmark ids sorted numerically).
        source: where the list comes from (``"folders under X"``, ``"csv X"``).
        skipped: ``(file or "csv:LINE", reason)`` of what the listing left out.
    """

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) (the class count)")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Iterable[int] | np.ndarray) -> LandmarkSamples:
        """The samples at ``indices`` (ints, or an (N,) boolean mask), in that order.

        The class list is kept whole (labels unchanged, even for classes the subset lacks) and so
        is the listing's ``skipped`` record.
        """
        index = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {index.shape}")
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"subset index out of range for {len(self)} samples")
        return LandmarkSamples([self.paths[i] for i in index], self.labels[index], list(self.classes),
                               self.source, list(self.skipped))

    def class_counts(self) -> np.ndarray:
        """(K,) int64 number of samples of each class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in LANDMARK_IMAGE_EXTENSIONS


def _class_images(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """The image files under ``folder`` (recursive, hidden files and folders ignored), sorted by
    their path relative to ``folder``; folders reached twice through links are scanned once."""
    found: list[tuple[str, Path]] = []
    seen: dict[str, str] = {}

    def unreadable(error: OSError) -> None:
        skipped.append((str(error.filename), f"cannot read folder: {error.strerror or error}"))

    for here, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(here)
        if real in seen:
            skipped.append((here, f"same folder as {seen[real]} (through a symbolic link): scanned once"))
            dirs[:] = []
            continue
        seen[real] = here
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(here, folder)
        for name in files:
            if _is_image_name(name):
                full = os.path.join(here, name)
                if os.path.isfile(full):
                    found.append((Path(rel, name).as_posix(), Path(full)))
                else:
                    skipped.append((full, "not a readable file (broken link?)"))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def _check_min_images(min_images_per_class: int) -> None:
    if isinstance(min_images_per_class, bool) or not isinstance(min_images_per_class, (int, np.integer)) \
            or min_images_per_class < 1:
        raise ValueError(f"min_images_per_class must be an integer >= 1, got {min_images_per_class!r}")


def landmark_folders(root: str | os.PathLike, min_images_per_class: int = 1) -> LandmarkSamples:
    """One class per sub-folder of ``root`` (its name), its images found recursively inside it.

    Images: extensions jpg, jpeg, png, bmp, tif, tiff, webp, ppm, pgm (any case); hidden files and
    folders (name starting with ".") are ignored, other files silently too. Classes and images are
    sorted (by name and relative path) so the listing is the same on every machine. Images directly
    in ``root`` and classes with fewer than ``min_images_per_class`` images are left out and
    reported in ``skipped``.

    Raises:
        ValueError: ``root`` does not exist or is not a folder, or no class folder holds enough
        images (the message names ``root``).
    """
    _check_min_images(min_images_per_class)
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root}: no such folder (expected one sub-folder of images per class)")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected one sub-folder of images per class)")
    skipped: list[tuple[str, str]] = []
    class_folders: list[Path] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_folders.append(Path(entry.path))
        elif _is_image_name(entry.name):
            skipped.append((entry.path, "image directly in the root, not in a class folder: ignored"))
    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for folder in class_folders:
        images = _class_images(folder, skipped)
        if len(images) < min_images_per_class:
            skipped.append((str(folder), f"class {folder.name!r} has {len(images)} image(s), fewer than "
                                         f"min_images_per_class={min_images_per_class}: dropped"))
            continue
        labels += [len(classes)] * len(images)
        classes.append(folder.name)
        paths += images
    if not classes:
        detail = (f"none of its {len(class_folders)} sub-folder(s) holds {min_images_per_class} image(s) or more"
                  if class_folders else "it has no sub-folder")
        raise ValueError(f"{root}: no class folder with images ({detail}); expected root/<class>/<images>")
    return LandmarkSamples(paths, np.asarray(labels, np.int64), classes, f"folders under {root}", skipped)


class _Gldv2Files:
    """Finds image files by id (one stat in the usual case; leaf folders known to be missing are
    remembered, so a partial download costs no stat per missing image of a missing folder)."""

    def __init__(self, images_root: str) -> None:
        self.root = images_root.rstrip(os.sep) or os.sep
        self.leaf_exists: dict[str, bool] = {}

    def expected(self, image_id: str) -> str:
        if len(image_id) >= 3:
            return f"{self.root}{os.sep}{image_id[0]}{os.sep}{image_id[1]}{os.sep}{image_id[2]}{os.sep}{image_id}.jpg"
        return f"{self.root}{os.sep}{image_id}.jpg"

    def find(self, image_id: str) -> str | None:
        """GLDv2 layout (``a/b/c/abc....jpg``) first, then flat; None if neither is a file."""
        if len(image_id) >= 3:
            leaf = f"{self.root}{os.sep}{image_id[0]}{os.sep}{image_id[1]}{os.sep}{image_id[2]}"
            exists = self.leaf_exists.get(leaf)
            if exists is None:
                exists = self.leaf_exists[leaf] = os.path.isdir(leaf)
            if exists:
                nested = f"{leaf}{os.sep}{image_id}.jpg"
                if os.path.isfile(nested):
                    return nested
        flat = f"{self.root}{os.sep}{image_id}.jpg"
        return flat if os.path.isfile(flat) else None


_PLAIN_ID = re.compile(r"[^\s/\\.][^\s/\\]*")


def _bad_id(image_id: str) -> str | None:
    if _PLAIN_ID.fullmatch(image_id):
        return None
    if not image_id:
        return "empty image id"
    return f"image id {image_id!r} is not a plain file name stem"


def _landmark_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def gldv2_csv(csv_path: str | os.PathLike, images_root: str | os.PathLike,
              min_images_per_class: int = 1) -> LandmarkSamples:
    """The images of a Google Landmarks v2 list, labelled by landmark id.

    The header says the format: ``id,url,landmark_id`` (the train list, one image per row; the
    columns may come in any order) or ``landmark_id,images`` (the clean list, ``images`` being
    space-separated image ids). Image ``abcdef...`` is ``images_root/a/b/c/abcdef....jpg`` (GLDv2
    layout) or else ``images_root/abcdef....jpg`` (flat). Files are only stat-ed, never decoded.

    Left out and reported in ``skipped``: malformed rows (``("csv:LINE", reason)``: wrong column
    count, empty or path-like image id, landmark id that is not a non-negative integer), missing
    images (``(expected file, "no such file (csv:LINE, id ...)")``), an image listed again (the
    first listing counts), and classes with fewer than ``min_images_per_class`` usable images.
    Class names are the landmark ids (``str(int)``), sorted numerically.

    Raises:
        ValueError: the csv file is missing or empty, its header is neither format, ``images_root``
        is not a folder, or no row gives a usable image (the message names the csv file).
    """
    _check_min_images(min_images_per_class)
    csv_path, images_root = Path(csv_path), Path(images_root)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: no such csv file (a GLDv2 list: {_ACCEPTED_HEADERS})")
    if not images_root.is_dir():
        raise ValueError(f"{images_root}: the images folder of {csv_path} does not exist or is not a folder")
    finder = _Gldv2Files(str(images_root))
    skipped: list[tuple[str, str]] = []
    by_class: dict[int, list[str]] = {}
    listed: dict[str, int] = {}  # image id -> line where it was first listed

    def add(image_id: str, landmark: int, line: int) -> None:
        problem = _bad_id(image_id)
        if problem:
            skipped.append((f"csv:{line}", problem))
            return
        if image_id in listed:
            skipped.append((f"csv:{line}", f"image id {image_id} listed again (first on line {listed[image_id]})"))
            return
        listed[image_id] = line
        path = finder.find(image_id)
        if path is None:
            skipped.append((finder.expected(image_id), f"no such file (csv:{line}, id {image_id}; "
                                                      f"nor {image_id}.jpg directly in the images folder)"))
            return
        by_class.setdefault(landmark, []).append(path)

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_path}: empty csv file (expected a header: {_ACCEPTED_HEADERS})")
        names = tuple(h.strip().lower() for h in header)
        if sorted(names) == sorted(_TRAIN_HEADER) and len(names) == 3:
            id_col, lm_col = names.index("id"), names.index("landmark_id")
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) != 3:
                    skipped.append((f"csv:{line}", f"expected 3 columns (id,url,landmark_id), got {len(row)}"))
                    continue
                landmark = _landmark_id(row[lm_col])
                if landmark is None:
                    skipped.append((f"csv:{line}", f"landmark_id {row[lm_col]!r} is not a non-negative integer"))
                    continue
                add(row[id_col].strip(), landmark, line)
        elif sorted(names) == sorted(_CLEAN_HEADER) and len(names) == 2:
            lm_col, images_col = names.index("landmark_id"), names.index("images")
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) != 2:
                    skipped.append((f"csv:{line}", f"expected 2 columns (landmark_id,images), got {len(row)}"))
                    continue
                landmark = _landmark_id(row[lm_col])
                if landmark is None:
                    skipped.append((f"csv:{line}", f"landmark_id {row[lm_col]!r} is not a non-negative integer"))
                    continue
                ids = row[images_col].split()
                if not ids:
                    skipped.append((f"csv:{line}", "empty image id list"))
                for image_id in ids:
                    add(image_id, landmark, line)
        else:
            raise ValueError(f"{csv_path}: unknown header {','.join(header)!r}; accepted: {_ACCEPTED_HEADERS}")

    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for landmark in sorted(by_class):
        files = by_class[landmark]
        if len(files) < min_images_per_class:
            skipped.append((f"landmark_id {landmark}", f"{len(files)} usable image(s), fewer than "
                                                      f"min_images_per_class={min_images_per_class}: dropped"))
            continue
        labels += [len(classes)] * len(files)
        classes.append(str(landmark))
        paths += map(Path, files)
    if not classes:
        raise ValueError(f"{csv_path}: no usable image ({len(listed)} listed, {len(skipped)} left out; "
                         f"first: {skipped[:3]}) under {images_root}")
    return LandmarkSamples(paths, np.asarray(labels, np.int64), classes, f"csv {csv_path}", skipped)


def _name_rank(path: Path) -> tuple[str, str]:
    return hashlib.sha1(path.name.encode()).hexdigest(), str(path)


def split_samples(samples: LandmarkSamples, val_fraction: float) -> tuple[LandmarkSamples, LandmarkSamples]:
    """(training, validation) samples: per class of n >= 2 images, ``ceil(val_fraction * n)`` are
    held out (at most n - 1: one always stays in training), those whose file *name* has the
    smallest SHA-1 (ties broken by the full path). The split depends neither on where the images
    are nor on the listing order; classes of one image stay in training. Order is kept in both
    parts and both share ``samples.classes``. ``val_fraction`` 0 gives an empty validation set.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    held = np.zeros(len(samples), bool)
    if val_fraction > 0:
        for label in range(samples.num_classes):
            members = np.flatnonzero(samples.labels == label)
            count = min(len(members) - 1, math.ceil(val_fraction * len(members)))
            if count > 0:
                ranked = sorted(members, key=lambda i: _name_rank(samples.paths[i]))
                held[ranked[:count]] = True
    return samples.subset(np.flatnonzero(~held)), samples.subset(np.flatnonzero(held))


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) float64 per-sample weights ``1 / count(class)``, normalised to sum 1: every class that
    is present gets the same total weight (for a `WeightedRandomSampler`-like draw).

    Raises:
        ValueError: ``labels`` empty, not 1-D integers, or negative.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array, got shape {labels.shape} {labels.dtype}")
    if labels.min() < 0:
        raise ValueError("labels must be non-negative")
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()
