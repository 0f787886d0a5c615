"""``delfi extract``: features of images (files, folders, .txt lists) into an HDF5 feature store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from delfi.cli.common import EXIT_FAILED, EXIT_OK, fail, stderr_console


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
) -> None:
    """Extract local features of images into a resumable, crash-safe HDF5 store.

    Config overrides may also be given as trailing KEY=VALUE words, e.g. `top_k=2000`.
    """
    from delfi.config import ConfigError, config_to_dict
    from delfi.extract.extractor import extract_to_store
    from delfi.io.images import ImageError, collect_images
    from delfi.models import create, resolve_config
    from delfi.models.checkpoints import CheckpointError
    from delfi.models.weights import WeightsError

    paths = [p for p in inputs if "=" not in str(p)]
    settings = list(overrides or []) + [str(p) for p in inputs if "=" in str(p)]
    if weights is not None:
        settings.append(f"weights={weights}")
    try:
        config = resolve_config(preset, settings)
        entries = collect_images(paths)
    except (ConfigError, ImageError) as exc:
        raise fail(str(exc)) from None
    if not entries:
        raise fail("no images found in the given inputs")
    try:
        model = create(preset, device=device, **config_to_dict(config))
    except (WeightsError, CheckpointError, ConfigError) as exc:
        raise fail(str(exc)) from None

    console = stderr_console()
    console.print(f"delfi extract: {len(entries)} images, preset [bold]{preset}[/bold], weights {config.weights} -> {out}")
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("extracting", total=len(entries), rate="")
        done = {"n": 0}

        def on_image(entry, status):
            if status == "done":
                done["n"] += 1
            elapsed = progress.tasks[0].elapsed or 0.0
            rate = f"{done['n'] / elapsed:.2f} img/s" if elapsed > 0 and done["n"] else ""
            progress.update(task, advance=1, rate=rate, description=f"{status}: {entry.name[-40:]}")

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
                on_image=on_image,
            )
        except ValueError as exc:  # e.g. the store was made with other settings
            raise fail(str(exc)) from None
    _print_summary(Console(), report, out)
    raise typer.Exit(EXIT_FAILED if report.failures else EXIT_OK)


def _print_summary(console: Console, report, out: Path) -> None:
    counts = report.features_per_image
    table = Table(title=f"delfi extract -> {out}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("images", f"{report.total} ({report.extracted} extracted, {report.skipped} already done, {report.failed} failed)")
    if counts:
        table.add_row("features / image", f"mean {sum(counts) / len(counts):.0f}, min {min(counts)}, max {max(counts)}")
    table.add_row("time", f"{report.seconds:.1f} s ({report.images_per_second:.2f} images/s)")
    console.print(table)
    if report.failures:
        failures = Table(title="failed images", title_justify="left")
        failures.add_column("image")
        failures.add_column("reason", style="red")
        for name, reason in report.failures:
            failures.add_row(name, reason)
        console.print(failures)
