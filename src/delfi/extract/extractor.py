"""Extract features of many images into a feature store: resumable, crash-safe, bad images skipped."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from delfi.config import dump_config
from delfi.io.features import FeatureStore
from delfi.io.images import ImageEntry, ImageError
from delfi.io.npz import write_r2d2_npz


@dataclass
class ExtractionReport:
    """What a run did: counts, failures with reasons, features per image, time."""

    total: int = 0
    extracted: int = 0
    skipped: int = 0  # already complete in the store
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    features_per_image: list[int] = field(default_factory=list)
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
    if config.get("pca"):
        from delfi.extract.pca import pca_sha256

        attrs["pca_sha256"] = pca_sha256(config["pca"])
    return attrs


def read_bbox_file(path: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """Query boxes: ``name x0 y0 x1 y1`` per line (pixels; blank lines and # comments skipped)."""
    boxes = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            if len(words) != 5:
                raise ValueError
            boxes[words[0]] = tuple(float(v) for v in words[1:])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'name x0 y0 x1 y1', got {line!r}") from None
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
        on_image: called after each image with its status: "done", "skipped" or "failed".
    """
    from delfi.io.images import read_image as default_reader

    reader = read_image or default_reader
    report = ExtractionReport(total=len(entries))
    started = time.perf_counter()
    mode = "w" if overwrite else "a"
    with FeatureStore(out, mode, attrs=store_attributes(model, config), descriptor_dtype=descriptor_dtype) as store:
        for entry in entries:
            if entry.name in store and not (export_npz and not npz_path_for(entry, npz_dir).exists()):
                report.skipped += 1
                status = "skipped"
            else:
                box = (boxes or {}).get(entry.name)
                status = _extract_one(model, entry, store, reader, report, export_npz, npz_dir, box)
            if on_image is not None:
                on_image(entry, status)
    report.seconds = time.perf_counter() - started
    dump_config(config, Path(f"{out}.config.yaml"))
    return report


def _extract_one(model, entry, store, reader, report, export_npz, npz_dir, box=None) -> str:
    try:
        image = reader(entry.path)
        features = model.extract(image) if box is None else model.extract(image, bbox=box)
    except ImageError as exc:
        report.failures.append((entry.name, exc.reason))
        return "failed"
    except (RuntimeError, ValueError, MemoryError) as exc:
        report.failures.append((entry.name, f"extraction failed: {type(exc).__name__}: {exc}"))
        return "failed"
    store.put(entry.name, features)
    if export_npz:
        write_r2d2_npz(npz_path_for(entry, npz_dir), features)
    report.extracted += 1
    report.features_per_image.append(len(features))
    return "done"
