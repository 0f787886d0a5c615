"""``delfi extract``: features of images (files, folders, .txt lists) into an HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from delfi.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    ProgressBar,
    fail,
    failures_table,
    load_model,
    split_overrides,
    stderr_console,
    summary_table,
)


def extract(
    inputs: List[Path] = typer.Argument(..., help="Image files, folders, or .txt lists of image paths."),
    preset: str = typer.Option("r2d2", "--preset", "-p", help="Preset name (see `delfi presets`) or YAML file."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Known weights name or checkpoint path."),
    out: Path = typer.Option(Path("features.h5"), "--out", "-o", help="Feature store (HDF5) to write or resume."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Config override key=value (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="Torch device."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start a fresh store instead of resuming."),
    export_npz: bool = typer.Option(False, "--export-npz", help="Also write official-format <image>.r2d2 npz files."),
    npz_dir: Optional[Path] = typer.Option(None, "--npz-dir", help="Folder for the npz files (default: beside each image)."),
    half_descriptors: bool = typer.Option(False, "--float16", help="Store descriptors as float16."),
    bbox_file: Optional[Path] = typer.Option(None, "--bbox-file", help="Crop images to boxes: `name x0 y0 x1 y1` per line."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="PCA file from `delfi pca fit` (DELF / DELG; same as pca=FILE)."),
) -> None:
    """Extract local features of images into a resumable, crash-safe HDF5 store.

    Config overrides may also be given as trailing KEY=VALUE words, e.g. `top_k=2000`.
    """
    from delfi.config import config_to_dict
    from delfi.extract.extractor import extract_to_store
    from delfi.io.images import ImageError, collect_images

    paths, settings = split_overrides(inputs)
    if pca is not None:
        settings.append(f"pca={pca}")
    try:
        entries = collect_images(paths)
    except ImageError as exc:
        raise fail(str(exc)) from None
    if not entries:
        raise fail("no images found in the given inputs")
    model, config = load_model(preset, weights, list(overrides or []) + settings, device)
    boxes = None
    if bbox_file is not None:
        import inspect

        from delfi.extract.extractor import read_bbox_file

        if "bbox" not in inspect.signature(model.extract).parameters:
            raise fail(f"--bbox-file: the {config.model} extractor does not support query boxes")
        try:
            boxes = read_bbox_file(bbox_file)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None

    stderr_console().print(f"delfi extract: {len(entries)} images, preset [bold]{preset}[/bold], weights {config.weights} -> {out}")
    with ProgressBar(len(entries), "extracting") as bar:
        try:
            report = extract_to_store(
                model,
                entries,
                out,
                config=config_to_dict(config),
                overwrite=overwrite,
                descriptor_dtype="float16" if half_descriptors else "float32",
                export_npz=export_npz,
                npz_dir=npz_dir,
                boxes=boxes,
                on_image=lambda entry, status: bar.advance(entry.name, status),
            )
        except ValueError as exc:  # e.g. the store was made with other settings
            raise fail(str(exc)) from None
    _print_summary(Console(), report, out)
    raise typer.Exit(EXIT_FAILED if report.failures else EXIT_OK)


def _print_summary(console: Console, report, out: Path) -> None:
    counts = report.features_per_image
    rows = [("images", f"{report.total} ({report.extracted} extracted, {report.skipped} already done, {report.failed} failed)")]
    if counts:
        rows.append(("features / image", f"mean {sum(counts) / len(counts):.0f}, min {min(counts)}, max {max(counts)}"))
    rows.append(("time", f"{report.seconds:.1f} s ({report.images_per_second:.2f} images/s)"))
    console.print(summary_table(f"delfi extract -> {out}", rows))
    if report.failures:
        console.print(failures_table("failed images", ["image", "reason"], report.failures))
