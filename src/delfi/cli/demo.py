"""``delfi demo``: retrieval and matching end to end on scikit-image's public-domain / CC0 photos.

Offline and CPU only: the photos come from the installed scikit-image package, the weights from
``--weights`` (a known name already downloaded, or any R2D2-family checkpoint file) or the preset.
Everything goes into ``--out`` (see `delfi.demo.run` for the files); the summary table's numbers
are all measured in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from delfi.config import DEFAULT_PRESET
from delfi.cli.common import EXIT_FAILED, EXIT_USAGE, ProgressBar, fail, load_model

DEMO_SETTINGS = ["top_k=1000"]
"""Preset overrides of the demo (before the user's, which win): 1000 keypoints per image."""


def demo(
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset name or YAML file."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Known weights name or checkpoint path."),
    out: Path = typer.Option(Path("delfi-demo"), "--out", "-o",
                             help="Folder for the demo's files (new, empty, or one made by the demo)."),
    size: int = typer.Option(400, "--size", min=32, help="Longest side of the demo images in pixels."),
    scenes: Optional[int] = typer.Option(None, "--scenes", min=1, help="Scene photos used (default: all 6)."),
    views: int = typer.Option(3, "--views", min=1, help="Synthetic views of each scene in the database."),
    distractors: Optional[int] = typer.Option(None, "--distractors", min=0, help="Distractor photos (default: all 6)."),
    index: str = typer.Option("auto", "--index", help="auto (ASMK when installed, else VLAD), asmk or vlad."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic views (same seed, same run)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """Build a small retrieval set from sample photos, extract, index, search, rerank, evaluate,
    draw matches and score maps, and write a self-contained report.html."""
    from delfi.config import ConfigError, config_to_dict
    from delfi.demo.photos import MissingSkimageError, data_dir
    from delfi.demo.run import (DemoFolderError, DemoOptions, DemoRunError, asmk_available, check_folder, claim_folder,
                                run_demo)
    from delfi.demo.summary import summary_table
    from delfi.models import resolve_config
    from delfi.models.weights import WeightsError, resolve_weights

    if index not in ("auto", "asmk", "vlad"):
        raise fail(f"--index {index!r}: choose auto, asmk or vlad")
    if index == "asmk" and not asmk_available():
        raise fail('--index asmk needs the asmk and faiss packages: pip install "delfi[asmk]" (or use --index vlad)')
    try:
        data_dir()
    except MissingSkimageError as exc:
        raise fail(str(exc)) from None
    try:  # before the model loads; claim_folder below checks again and writes
        check_folder(out)
    except DemoFolderError as exc:
        raise fail(str(exc)) from None
    settings = DEMO_SETTINGS + list(overrides or [])
    try:  # the demo is the first thing a new user runs: say how to get the weights
        resolve_weights(weights or resolve_config(preset, settings).weights)
    except WeightsError as exc:
        raise fail(f"{exc}\nThe demo needs weights: --weights PATH (any R2D2-family checkpoint) or "
                   "`delfi weights download NAME` on a machine with a network.", EXIT_USAGE) from None
    except ConfigError:  # a bad preset or override: load_model below names it
        pass
    model, config = load_model(preset, weights, settings)
    try:
        claim_folder(out)
    except DemoFolderError as exc:
        raise fail(str(exc)) from None
    console = Console()
    options = DemoOptions(size=size, scenes=scenes, views=views, distractors=distractors, seed=seed, index=index)
    try:
        result = run_demo(model, config_to_dict(config), out, options, progress=ProgressBar,
                          log=lambda text: console.print(text, highlight=False))
    except DemoRunError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    console.print(summary_table(result, f"delfi demo ({preset}, seed {seed}) -> {out}/"))
    console.print(f"report: {result.files['report']}", highlight=False, soft_wrap=True)
