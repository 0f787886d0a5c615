"""``delfi eval``: standard benchmarks (HPatches, EVD) for any preset and weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from delfi.cli.common import ProgressBar, fail, load_model, stderr_console

app = typer.Typer(help="Benchmarks: HPatches (MMA, homography accuracy), EVD, revisited Oxford/Paris, place recognition.", no_args_is_help=True)


def method_name(preset: str, config) -> str:
    """A name that encodes the settings, so cached features never mix configurations."""
    from delfi.config import config_to_dict

    digest = hashlib.sha1(json.dumps(config_to_dict(config), sort_keys=True).encode()).hexdigest()[:8]
    weights = Path(str(config.weights)).stem if config.weights else "random"
    return f"{Path(preset).stem}-{weights}-{digest}"


def _extractor(preset: str, weights: Optional[str], settings: list[str], device: str, method: Optional[str]):
    model, config = load_model(preset, weights, settings, device)
    return model.extract, method or method_name(preset, config)


@app.command("hpatches")
def hpatches(
    root: Path = typer.Option(..., "--root", help="HPatches-sequences folder (<seq>/1.ppm..6.ppm, H_1_k)."),
    preset: str = typer.Option("r2d2", "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (one subfolder per method)."),
    method: Optional[str] = typer.Option(None, "--method", help="Name of this run (default: preset-weights-confighash)."),
    sequences: Optional[List[str]] = typer.Option(None, "--sequence", "-s", help="Only these sequences (repeatable)."),
    image_list: Optional[Path] = typer.Option(None, "--image-list", help="D2-Net image list (the 108-sequence protocol)."),
    convention: str = typer.Option("raw", "--homography-convention", help="raw (as published) | centre (delfi's pixel centres)."),
    threshold: float = typer.Option(3.0, "--ransac-threshold", help="RANSAC threshold for homography accuracy (px)."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Published caches / results.json to tabulate beside."),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """MMA@1..10 (overall / illumination / viewpoint), homography accuracy, features and matches.

    Features are cached per method, so a second run only re-scores. Results: hpatches.npy (the D2-Net
    cache format, comparable with published caches), results.json and mma.png.
    """
    from delfi.datasets.hpatches import HPatchesError
    from delfi.eval.hpatches_run import MissingFeaturesError, compare_table, run_hpatches

    extract, name = _extractor(preset, weights, list(overrides or []), device, method)
    try:
        with ProgressBar(None, "extracting") as bar:
            report = run_hpatches(
                root, extract, out, method=name, sequences=sequences or None, image_list=image_list,
                homography_convention=convention, ransac_threshold=threshold, on_image=bar.advance,
            )  # fmt: skip
    except (HPatchesError, MissingFeaturesError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    console = Console()
    console.print(compare_table([report, *(compare or [])]))
    stderr_console().print(f"results -> {out / name}/ (hpatches.npy, results.json, mma.png)")


@app.command("evd")
def evd(
    root: Path = typer.Option(..., "--root", help="EVD folder (1/, 2/, h/)."),
    preset: str = typer.Option("r2d2", "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Path = typer.Option(Path("results"), "--out", "-o"),
    method: Optional[str] = typer.Option(None, "--method"),
    threshold: float = typer.Option(3.0, "--ransac-threshold"),
    success_px: float = typer.Option(10.0, "--success-px", help="A pair succeeds when the mean corner error is below this."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Write a match picture per pair."),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """The 15 extreme-viewpoint pairs: inliers, corner error and success rate per pair."""
    from delfi.datasets.evd import EVDError
    from delfi.eval.evd import run_evd

    extract, name = _extractor(preset, weights, list(overrides or []), device, method)
    try:
        with ProgressBar(None, "extracting") as bar:
            report = run_evd(
                root, extract, out, method=name, ransac_threshold=threshold, success_px=success_px,
                pictures=pictures, on_image=bar.advance,
            )  # fmt: skip
    except (EVDError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    Console().print(report.table())
    stderr_console().print(f"results -> {out / name}/")


def _register_retrieval() -> None:
    from delfi.cli import eval_retrieval

    app.command("revisitop")(eval_retrieval.revisitop)
    app.command("vpr")(eval_retrieval.vpr)
    app.command("vpr-sweep")(eval_retrieval.vpr_sweep)


_register_retrieval()
