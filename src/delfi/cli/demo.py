"""``delfi demo``: extract, match and score a synthetic image pair with a known homography."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from delfi.cli.common import EXIT_FAILED, fail, load_model


def demo(
    preset: str = typer.Option("r2d2", "--preset", "-p", help="Preset name or YAML file."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Known weights name or checkpoint path."),
    out: Path = typer.Option(Path("delfi-demo"), "--out", "-o", help="Folder for the demo images and features."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """Make a synthetic photo pair, extract features, match them, and report how many are correct."""
    import torch
    from PIL import Image

    from delfi.datasets.synthetic import random_homography, textured_image, warp_image
    from delfi.eval.hpatches import pair_errors
    from delfi.io.features import FeatureStore
    from delfi.match import mutual_nn
    from delfi.models import resolve_config
    from delfi.models.weights import WeightsError, resolve_weights

    try:  # the demo is the first thing a new user runs: say how to get the weights
        resolve_weights(weights or resolve_config(preset).weights)
    except WeightsError as exc:
        raise fail(f"{exc}\nThe demo needs weights: `delfi weights download r2d2-wasf-n16` or --weights PATH.", EXIT_FAILED) from None
    model, _ = load_model(preset, weights, list(overrides or []))
    out.mkdir(parents=True, exist_ok=True)
    first = textured_image(640, 480, seed=1)
    homography = random_homography(640, 480, seed=2)
    second = warp_image(first, homography)
    images = {"first.png": first, "second.png": second}
    console = Console()
    with FeatureStore(out / "features.h5", "w", attrs={"model": model.family, "weights_sha256": model.weights_sha256 or "none", "config": {}}) as store:
        for name, image in images.items():
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(out / name)
            store.put(name, model.extract(image))
    with FeatureStore(out / "features.h5") as store:
        f0, f1 = store["first.png"], store["second.png"]
    matches = mutual_nn(f0.descriptors, f1.descriptors)
    errors = torch.as_tensor(pair_errors(f0.keypoints, f1.keypoints, matches.indices, homography))
    table = Table(title=f"delfi demo ({preset}) -> {out}/", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("features", f"{len(f0)} / {len(f1)}")
    table.add_row("mutual nearest-neighbour matches", str(len(matches)))
    for threshold in (1, 3, 5):
        correct = (errors <= threshold).float().mean().item() if len(matches) else 0.0
        table.add_row(f"correct within {threshold} px", f"{correct:.1%}")
    console.print(table)
