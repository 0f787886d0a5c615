"""CosPlace-style classes and groups for training visual place recognition (Berton et al., CVPR 2022).

The map is cut into square UTM cells of side ``cell_size`` metres (M) and heading bins of
``heading_bin`` degrees (alpha). A *class* is ``(cell_e, cell_n, heading_bin)`` with

    cell_e = floor(east / M),  cell_n = floor(north / M),  bin = floor((heading mod 360) / alpha)

Classes are divided into *groups* whose members are never adjacent: the group key of a class is
``(cell_e mod N, cell_n mod N, bin mod L)`` with ``N = cells_apart`` and ``L = bins_apart``, so two
classes of one group are at least N cells (or L bins) apart; there are at most ``N * N * L`` groups.
One classifier is trained per group, in turn.

Choices made here (CosPlace itself differs where noted):

* Images are read from sf-xs / CosPlace file names: splitting the stem on ``'@'`` gives ``['',
  utm_east, utm_north, utm_zone_number, utm_zone_letter, latitude, longitude, pano_id, tile_num,
  heading, pitch, roll, height, timestamp, note, ...]``. An image whose name has no heading field
  (too few fields, or an empty one) gets heading 0; a heading that is present but not a number
  makes the image skipped. Headings are taken modulo 360 (so -10 is 350). When 360 / alpha is
  not a multiple of L, the last and first bins (adjacent across north) can share a group, as in
  CosPlace; the defaults (12 bins, L = 2) do not have this.
* Classes with fewer than ``min_images_per_class`` images are dropped (their files are listed in
  ``skipped``, one entry per file).
* Which groups are used: the candidate groups are sorted by number of images (most first, ties by
  key) and the first ``groups`` are kept. CosPlace keeps the first ``groups_num`` in its own order;
  on a city-sized map every group is full and the difference does not matter, but on a small map
  this prefers the populated groups. Fewer groups than asked is not an error: ``len(groups)`` says
  how many there are, and ``unused`` lists the groups left out.
* Deterministic: the same paths in any order give the same groups, labels and class order (classes
  sorted by key, the files of a class sorted).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from delfi.datasets.vpr import parse_utm

__all__ = [
    "HEADING_FIELD",
    "IMAGE_SUFFIXES",
    "parse_heading",
    "GroupSettings",
    "PlaceGroup",
    "PlaceGroups",
    "list_train_images",
    "class_key",
    "group_key",
    "place_groups",
]

HEADING_FIELD = 9
"""Index of the heading in the ``'@'``-split file stem of sf-xs / CosPlace names."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

ClassKey = tuple[int, int, int]


def parse_heading(name: str | os.PathLike) -> float | None:
    """The heading (degrees) of an sf-xs / CosPlace file name, field 9 of the ``'@'``-split stem.

    Returns ``None`` when the name has no heading field (fewer than 10 fields, or field 9 empty);
    raises ValueError when the field is there but is not a finite number.
    """
    fields = Path(name).stem.split("@")
    if len(fields) <= HEADING_FIELD or fields[HEADING_FIELD].strip() == "":
        return None
    text = fields[HEADING_FIELD]
    try:
        heading = float(text)
    except ValueError:
        raise ValueError(f"malformed VPR file name {str(name)!r}: heading field {text!r} is not a number") from None
    if not math.isfinite(heading):
        raise ValueError(f"malformed VPR file name {str(name)!r}: non-finite heading {text!r}")
    return heading


@dataclass(frozen=True)
class GroupSettings:
    """CosPlace's cell, bin and group parameters (the paper's defaults)."""

    cell_size: float = 10.0  # M metres
    heading_bin: float = 30.0  # alpha degrees
    cells_apart: int = 5  # N
    bins_apart: int = 2  # L
    groups: int = 8
    min_images_per_class: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cell_size) and self.cell_size > 0):
            raise ValueError(f"cell_size must be a positive number of metres, got {self.cell_size}")
        if not (math.isfinite(self.heading_bin) and 0 < self.heading_bin <= 360):
            raise ValueError(f"heading_bin must be in (0, 360] degrees, got {self.heading_bin}")
        for name in ("cells_apart", "bins_apart", "groups", "min_images_per_class"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class PlaceGroup:
    """One group: its files, each file's class index within the group, and the classes."""

    key: tuple[int, int, int]  # (cell_e mod N, cell_n mod N, bin mod L)
    paths: list[Path]
    labels: np.ndarray  # (n,) int64 class index within this group, in [0, num_classes)
    classes: list[tuple[int, int, int]]  # (cell_e, cell_n, heading_bin) of each class, sorted

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class PlaceGroups:
    """The groups used for training, what was left out and why, and the settings."""

    groups: list[PlaceGroup]
    skipped: list[tuple[str, str]]  # (file, reason), sorted by file
    settings: GroupSettings
    unused: list[tuple[tuple[int, int, int], int]] = field(default_factory=list)  # (group key, images) beyond `groups`

    @property
    def num_classes(self) -> int:
        """Classes over all used groups."""
        return sum(g.num_classes for g in self.groups)

    @property
    def num_images(self) -> int:
        """Images over all used groups."""
        return sum(len(g) for g in self.groups)


def list_train_images(folder: str | os.PathLike) -> list[Path]:
    """Every ``*.jpg`` / ``*.jpeg`` / ``*.png`` file under ``folder`` (recursive, any case), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"training image folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def class_key(east: float, north: float, heading: float, settings: GroupSettings) -> ClassKey:
    """``(cell_e, cell_n, heading_bin)`` of a position and heading."""
    bins = math.ceil(360.0 / settings.heading_bin - 1e-9)
    heading_bin = min(int(math.floor((heading % 360.0) / settings.heading_bin)), bins - 1)
    return (int(math.floor(east / settings.cell_size)), int(math.floor(north / settings.cell_size)), heading_bin)


def group_key(cls: ClassKey, settings: GroupSettings) -> tuple[int, int, int]:
    """``(cell_e mod N, cell_n mod N, bin mod L)``: classes sharing it are never adjacent."""
    n, bins = settings.cells_apart, settings.bins_apart
    return (cls[0] % n, cls[1] % n, cls[2] % bins)


def place_groups(paths: Iterable[str | os.PathLike], settings: GroupSettings | None = None) -> PlaceGroups:
    """Assign images to CosPlace classes and groups (see the module docstring for the rules).

    Raises ValueError when no class is left, saying how many images were read, how many were
    skipped and why.
    """
    settings = settings or GroupSettings()
    all_paths = sorted(Path(p) for p in paths)
    skipped: list[tuple[str, str]] = []
    members: dict[ClassKey, list[Path]] = defaultdict(list)
    previous: Path | None = None
    for path in all_paths:
        if path == previous:
            skipped.append((str(path), "duplicate path"))
            continue
        previous = path
        try:
            east, north = parse_utm(path)
            heading = parse_heading(path)
        except ValueError as exc:
            skipped.append((str(path), f"malformed name: {exc}"))
            continue
        members[class_key(east, north, 0.0 if heading is None else heading, settings)].append(path)

    kept: dict[tuple[int, int, int], list[ClassKey]] = defaultdict(list)
    for cls in sorted(members):
        files = members[cls]
        if len(files) < settings.min_images_per_class:
            reason = (f"class {cls} has {len(files)} image(s), fewer than "
                      f"min_images_per_class={settings.min_images_per_class}")
            skipped.extend((str(p), reason) for p in files)
        else:
            kept[group_key(cls, settings)].append(cls)
    skipped.sort()

    if not kept:
        reasons: dict[str, int] = defaultdict(int)
        for _, why in skipped:
            reasons["duplicate path" if why == "duplicate path" else
                    "malformed name" if why.startswith("malformed") else "class too small"] += 1
        detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "none"
        raise ValueError(
            f"no CosPlace class left: read {len(all_paths)} image(s), skipped {len(skipped)} ({detail}); "
            f"every class needs at least min_images_per_class={settings.min_images_per_class} images "
            f"(cells of {settings.cell_size:g} m, heading bins of {settings.heading_bin:g} degrees)"
        )

    def size(key: tuple[int, int, int]) -> int:
        return sum(len(members[c]) for c in kept[key])

    order = sorted(kept, key=lambda key: (-size(key), key))
    groups = []
    for key in order[: settings.groups]:
        classes = kept[key]
        group_paths: list[Path] = []
        labels: list[int] = []
        for index, cls in enumerate(classes):
            group_paths.extend(members[cls])
            labels.extend([index] * len(members[cls]))
        groups.append(PlaceGroup(key=key, paths=group_paths, labels=np.asarray(labels, dtype=np.int64),
                                 classes=list(classes)))
    unused = [(key, size(key)) for key in order[settings.groups:]]
    return PlaceGroups(groups=groups, skipped=skipped, settings=settings, unused=unused)
