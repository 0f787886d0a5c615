"""``delfi extract``: features of images (files, folders, .txt lists) into an HDF5 feature store.

Exit codes: 0 all done (folder items that are not images are listed as skipped), 1 some images
failed (listed with reasons; the rest is stored), 2 usage errors (nothing done), 130 interrupted
(what was done is saved; the same command resumes).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from delfi.config import DEFAULT_PRESET
from delfi.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    ProgressBar,
    fail,
    failure_list_path,
    load_model,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    split_overrides,
    stderr_console,
    summary_table,
)

EXIT_INTERRUPTED = 130
EMPTY_SHOWN = 5  # images with no features named in the warning line
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(nan|inf|true|false|null)$", re.IGNORECASE)


def extract(
    inputs: List[Path] = typer.Argument(..., help="Image files, folders, or .txt lists of image paths."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name (see `delfi presets`) or YAML file."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Known weights name or checkpoint path."),
    out: Path = typer.Option(Path("features.h5"), "--out", "-o", help="Feature store (HDF5) to write or resume."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Config override key=value (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="Torch device."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start a fresh store instead of resuming (and replace existing npz files)."),
    export_npz: bool = typer.Option(False, "--export-npz", help="Also write official-format <image>.r2d2 npz files."),
    npz_dir: Optional[Path] = typer.Option(None, "--npz-dir", help="Folder for the npz files (default: beside each image)."),
    half_descriptors: bool = typer.Option(False, "--float16", help="Store descriptors as float16."),
    bbox_file: Optional[Path] = typer.Option(None, "--bbox-file", help="Crop images to boxes: `name x0 y0 x1 y1` per line."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="PCA file from `delfi pca fit` (DELF / DELG; same as pca=FILE)."),
) -> None:
    """Extract local features of images into a resumable, crash-safe HDF5 store.

    Config overrides may also be given as trailing KEY=VALUE words, e.g. `top_k=2000`. Store names:
    relative to a scanned folder, to a list's folder, or to the working directory; other files
    are named `@abs/<absolute path>`.
    """
    from delfi.config import config_to_dict
    from delfi.extract.extractor import extract_to_store
    from delfi.io.images import ImageError, collect_images

    paths, settings = split_overrides(inputs)
    if pca is not None:
        settings.append(f"pca={pca}")
    _refuse_missing_inputs(paths, preset)
    try:
        collection = collect_images(paths)
    except ImageError as exc:
        raise fail(str(exc)) from None
    console = Console()
    if not collection and not collection.failed:
        skipped = f" ({len(collection.skipped)} items skipped, see above)" if collection.skipped else ""
        _print_skipped(console, collection.skipped, out)
        raise fail(f"no images found in the given inputs{skipped}")
    refuse_output_among_inputs(out, [*paths, *(e.path for e in collection), bbox_file, pca])
    prepare_output_file(out)
    if npz_dir is not None and npz_dir.exists() and not npz_dir.is_dir():
        raise fail(f"--npz-dir {npz_dir} is a file: give a folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, config = load_model(preset, weights, list(overrides or []) + settings, device)
    _print_warnings(caught)
    boxes = _read_boxes(bbox_file, model, config)

    stderr_console().print(
        f"delfi extract: {len(collection)} images, preset [bold]{escape(preset)}[/bold], weights {escape(str(config.weights))} -> {escape(str(out))}",
        highlight=False,
    )
    statuses = {"done": 0, "skipped": 0, "failed": 0}

    def advance(bar: ProgressBar, entry, status: str) -> None:
        statuses[status] += 1
        bar.advance(entry.name, status)

    try:
        with ProgressBar(len(collection), "extracting") as bar:
            report = extract_to_store(
                model,
                collection,
                out,
                config=config_to_dict(config),
                overwrite=overwrite,
                descriptor_dtype="float16" if half_descriptors else "float32",
                export_npz=export_npz,
                npz_dir=npz_dir,
                boxes=boxes,
                on_image=lambda entry, status: advance(bar, entry, status),
            )
    except KeyboardInterrupt:
        _report_interrupt(out, statuses["done"])
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (OSError, ValueError) as exc:  # the store cannot be opened: other settings, not a store...
        if any(statuses.values()):
            raise  # a bug after partial work: the guard reports it (the store is committed)
        raise fail(str(exc)) from None
    report.failures[:0] = collection.failed
    report.total += len(collection.failed)
    _print_summary(console, report, out, collection.skipped)
    raise typer.Exit(EXIT_FAILED if report.failures else EXIT_OK)


def _config_keys(preset: str) -> set[str]:
    """Field names of the preset's config class (empty when the preset cannot be read)."""
    from dataclasses import fields

    from delfi.config import ConfigError, load_preset
    from delfi.models import family_classes

    try:
        return {f.name for f in fields(family_classes(str(load_preset(preset)["model"]))[1])}
    except (ConfigError, KeyError, TypeError):
        return set()


def _refuse_missing_inputs(paths: list, preset: str) -> None:
    """Exit 2 (nothing done) naming every input that does not exist; words that look like a
    config key (a field of the preset's config) or a key followed by a value get the right spelling."""
    words = [str(p) for p in paths]
    missing = [i for i, p in enumerate(paths) if not Path(p).exists() and not Path(p).is_symlink()]
    if not missing:
        return
    keys = _config_keys(preset)
    messages, consumed = [], set()
    for i in missing:
        if i in consumed:
            continue
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) and (i + 1) in missing else None
        is_key = word in keys or word.split(".")[0] in keys
        if is_key or (value is not None and _NUMBER.match(value) and re.match(r"^[A-Za-z_][\w.]*$", word)):
            shown = value if value is not None else "VALUE"
            if value is not None:
                consumed.add(i + 1)
            messages.append(f"{word}: not an image, folder or list; to set a config key write {word}={shown}")
        else:
            messages.append(f"{word}: not found")
    console = stderr_console()
    for message in messages[:-1]:
        console.print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)
    raise fail(messages[-1])


def _print_warnings(caught: list) -> None:
    """Warnings raised while building the model, as yellow lines (random weights above all)."""
    console = stderr_console()
    for warning in caught:
        console.print(f"[yellow]warning: {escape(str(warning.message))}[/yellow]", soft_wrap=True, highlight=False)


def _read_boxes(bbox_file: Path | None, model, config):
    if bbox_file is None:
        return None
    from delfi.extract.extractor import read_bbox_file
    from delfi.models.capabilities import QUERY_BOXES, supports

    if not supports(model, QUERY_BOXES):
        raise fail(f"--bbox-file: the {config.model} extractor does not support query boxes")
    try:
        return read_bbox_file(bbox_file)
    except (OSError, ValueError) as exc:
        raise fail(f"--bbox-file {exc}") from None


def _report_interrupt(out: Path, new: int) -> None:
    """After Ctrl-C: how many images the store holds now, and how to go on."""
    from delfi.io.features import FeatureStore

    try:
        with FeatureStore(out) as store:
            saved = f"{len(store.names())} images are saved in {out}"
    except Exception:  # noqa: BLE001 - the count is a courtesy; the message must still be printed
        saved = f"{new} images of this run are saved in {out}"
    stderr_console().print(
        f"[yellow]interrupted: {escape(saved)} ({new} new in this run); run the same command again to resume[/yellow]",
        soft_wrap=True,
        highlight=False,
    )


def _print_skipped(console: Console, skipped: list[tuple[str, str]], out: Path) -> None:
    report_failures(console, "skipped folder items (not images)", ["item", "reason"],
                    [(str(p), r) for p, r in skipped], list_file=Path(f"{out}.skipped.tsv"))  # fmt: skip


def _print_summary(console: Console, report, out: Path, skipped: list[tuple[str, str]]) -> None:
    counts = report.features_per_image
    rows = [("images", f"{report.total} ({report.extracted} extracted, {report.skipped} already done, {report.failed} failed)")]
    if skipped:
        rows.append(("skipped", f"{len(skipped)} folder items that are not images (listed below)"))
    if counts:
        rows.append(("features / image", f"mean {sum(counts) / len(counts):.0f}, min {min(counts)}, max {max(counts)}"))
    if report.empty:
        rows.append(("no features", f"{len(report.empty)} images"))
    rows.append(("time", f"{report.seconds:.1f} s ({report.images_per_second:.2f} images/s)"))
    console.print(summary_table(f"delfi extract -> {out}", rows))
    if report.empty:
        named = ", ".join(report.empty[:EMPTY_SHOWN]) + (f" and {len(report.empty) - EMPTY_SHOWN} more" if len(report.empty) > EMPTY_SHOWN else "")
        console.print(
            f"[yellow]warning: {len(report.empty)} images gave no features ({escape(named)}): check the settings "
            f"(thresholds, min_size / max_image_size against the image sizes) and the weights[/yellow]",
            soft_wrap=True,
            highlight=False,
        )
    if skipped:
        _print_skipped(console, skipped, out)
    report_failures(console, "failed images", ["image", "reason"], report.failures, list_file=failure_list_path(out))
