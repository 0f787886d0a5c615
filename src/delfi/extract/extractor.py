"""Extract features of many images into a feature store: resumable, crash-safe, bad images skipped.

Before any network runs, every entry's name is checked (storable, not given to two files): a name
that cannot be stored is that image's failure. Images are handed to the model as paths, so models
decode them at their working size (`delfi.io.images.decode_image`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from delfi.config import dump_config
from delfi.io.features import FeatureStore
from delfi.io.images import ImageEntry, ImageError, name_problem
from delfi.io.npz import write_r2d2_npz


@dataclass
class ExtractionReport:
    """What a run did: counts, failures with reasons, features per image, time."""

    total: int = 0
    extracted: int = 0
    skipped: int = 0  # already complete in the store
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    features_per_image: list[int] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # extracted images with 0 features
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def store_attributes(model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The file attributes that identify what made a feature store (checked when resuming)."""
    import torch

    attrs = {
        "model": getattr(model, "family", type(model).__name__),
        "weights_sha256": getattr(model, "weights_sha256", None) or "none",
        "config": config,
        "torch_version": str(torch.__version__),
    }
    if getattr(model, "untrained", False):
        attrs["untrained"] = True  # random weights: the features mean nothing
    if config.get("pca"):
        from delfi.extract.pca import pca_sha256

        attrs["pca_sha256"] = pca_sha256(config["pca"])
    return attrs


def read_bbox_file(path: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """Query boxes: ``name x0 y0 x1 y1`` per line (pixels; blank lines and # comments skipped).

    Raises:
        ValueError: naming ``file:line`` for a bad line (not 5 words, not finite numbers, an empty
            box, a second box for a name), or the file for one that is not UTF-8 text.
        OSError: (with the file in the message) when it cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot read: {exc.strerror or exc}") from None
    boxes: dict[str, tuple[float, float, float, float]] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            if len(words) != 5:
                raise ValueError
            box = tuple(float(v) for v in words[1:])
        except ValueError:
            raise ValueError(f"{where}: expected 'name x0 y0 x1 y1', got {line!r}") from None
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"{where}: box coordinates must be finite numbers, got {line!r}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{where}: empty box (need x1 > x0 and y1 > y0), got {line!r}")
        if words[0] in boxes:
            raise ValueError(f"{where}: a second box for {words[0]} (first at line {lines[words[0]]})")
        boxes[words[0]], lines[words[0]] = box, number  # type: ignore[assignment]
    return boxes


def npz_path_for(entry: ImageEntry, npz_dir: str | os.PathLike | None, tag: str = "r2d2") -> Path:
    """Where the official-format npz of an image goes: beside the image, or ``npz_dir/<name>.<tag>``."""
    if npz_dir is None:
        return entry.path.with_name(f"{entry.path.name}.{tag}")
    return Path(npz_dir) / f"{entry.name}.{tag}"


def extract_to_store(
    model: Any,
    entries: Sequence[ImageEntry],
    out: str | os.PathLike,
    *,
    config: dict[str, Any],
    overwrite: bool = False,
    descriptor_dtype: str = "float32",
    export_npz: bool = False,
    npz_dir: str | os.PathLike | None = None,
    read_image: Callable[[Path], Any] | None = None,
    boxes: dict[str, tuple[float, float, float, float]] | None = None,
    on_image: Callable[[ImageEntry, str], None] | None = None,
) -> ExtractionReport:
    """Extract ``entries`` with ``model.extract`` into the HDF5 store ``out``.

    Images already complete in the store are skipped (a second identical run does no work). Each
    finished image is journaled at once, so a killed run loses only the image in progress. A bad
    image is recorded with its reason and the run goes on.

    Args:
        model: anything with ``extract(image) -> Features`` (and ``family``, ``weights_sha256``).
        entries: images with their store names (see `delfi.io.images.collect_images`).
        out: the feature store path.
        config: the resolved config, stored in the file and compared when resuming.
        overwrite: start a fresh store instead of resuming.
        boxes: per image name a bounding box (x0, y0, x1, y1): the image is cropped to it before
            extraction (revisited Oxford / Paris queries), keypoints stay in full-image pixels.
        read_image: decodes a path for the model (default: the model gets the path and decodes it
            at its own working size).
        on_image: called after each image with its status: "done", "skipped" or "failed".

    An entry whose name the store cannot hold, or whose name was already given to another file,
    fails with that reason before any network runs. With ``export_npz``, an existing npz file of an
    image that is not in the store was not written for it: the image fails (nothing overwritten)
    unless ``overwrite``. Images giving 0 features are listed in ``report.empty``.
    """
    report = ExtractionReport(total=len(entries))
    started = time.perf_counter()
    mode = "w" if overwrite else "a"
    refused = _refused_names(entries)  # before any network runs
    with FeatureStore(out, mode, attrs=store_attributes(model, config), descriptor_dtype=descriptor_dtype) as store:
        for entry in entries:
            if id(entry) in refused:
                report.failures.append((entry.name, refused[id(entry)]))
                status = "failed"
            elif entry.name in store and not (export_npz and not npz_path_for(entry, npz_dir).exists()):
                report.skipped += 1
                status = "skipped"
            else:
                box = (boxes or {}).get(entry.name)
                npz = npz_path_for(entry, npz_dir) if export_npz else None
                status = _extract_one(model, entry, store, read_image, report, npz, overwrite, box)
            if on_image is not None:
                on_image(entry, status)
    report.seconds = time.perf_counter() - started
    dump_config(config, Path(f"{out}.config.yaml"))
    return report


def _refused_names(entries: Sequence[ImageEntry]) -> dict[int, str]:
    """Reasons, by ``id(entry)``, for entries whose name cannot be stored or names another file."""
    refused: dict[int, str] = {}
    owners: dict[str, ImageEntry] = {}
    for entry in entries:
        problem = name_problem(entry.name) if isinstance(entry.name, str) else f"its store name {entry.name!r} is not a string"
        if problem is None and entry.name in owners and os.path.realpath(owners[entry.name].path) != os.path.realpath(entry.path):
            problem = f"its store name {entry.name!r} is already used by {owners[entry.name].path} in this run"
        if problem is None:
            owners.setdefault(entry.name, entry)
        else:
            refused[id(entry)] = problem
    return refused


def _extract_one(model, entry, store, reader, report, npz, overwrite, box=None) -> str:
    if npz is not None and npz.exists() and not overwrite and entry.name not in store:
        # not written for this store (delfi writes the npz after the store entry): a user's file
        report.failures.append((entry.name, f"{npz} exists and was not written for this store: pass --overwrite to replace it"))
        return "failed"
    try:
        image = entry.path if reader is None else reader(entry.path)
        features = model.extract(image) if box is None else model.extract(image, bbox=box)
    except ImageError as exc:
        report.failures.append((entry.name, exc.reason))
        return "failed"
    except (RuntimeError, ValueError, MemoryError) as exc:
        report.failures.append((entry.name, f"extraction failed: {type(exc).__name__}: {exc}"))
        return "failed"
    store.put(entry.name, features)
    if npz is not None:
        try:
            write_r2d2_npz(npz, features)
        except OSError as exc:
            report.failures.append((entry.name, f"stored, but the npz file {npz} cannot be written: {exc.strerror or exc}"))
            return "failed"
    report.extracted += 1
    report.features_per_image.append(len(features))
    if len(features) == 0:
        report.empty.append(entry.name)
    return "done"
