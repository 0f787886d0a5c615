"""``delfi viz``: pictures of stored features and matches."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from delfi.cli.common import fail, stderr_console

app = typer.Typer(help="Pictures: matches of a stored pair, keypoints of a stored image, attention maps.", no_args_is_help=True)


def _image_path(images: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else images / path


@app.command("matches")
def matches(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store."),
    matches_path: Path = typer.Option(..., "--matches", "-m", help="Match store."),
    pair: str = typer.Option(..., "--pair", help='The pair, as in the pairs file: "name0 name1".'),
    images: Path = typer.Option(Path("."), "--images", "-i", help="Folder the store names are relative to."),
    out: Path = typer.Option(Path("matches.png"), "--out", "-o"),
) -> None:
    """Draw the matches of one stored pair (inliers green, outliers red)."""
    from delfi.io.features import FeatureStore
    from delfi.io.images import ImageError, read_image
    from delfi.io.matches import MatchStore
    from delfi.viz.matches import plot_matches

    names = pair.split()
    if len(names) != 2:
        raise fail(f'--pair must be two names separated by a space, got "{pair}"')
    try:
        with FeatureStore(features) as store:
            f0, f1 = store[names[0]], store[names[1]]
        with MatchStore(matches_path) as store:
            found = store.get(names[0], names[1], allow_reversed=True)
        pictures = [read_image(_image_path(images, name)) for name in names]
    except (KeyError, OSError, ValueError, ImageError) as exc:
        raise fail(str(exc).strip('"')) from None
    plot_matches(pictures[0], pictures[1], f0, f1, found, out=out, names=tuple(names))
    stderr_console().print(f"{len(found)} matches -> {out}")


@app.command("keypoints")
def keypoints(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store."),
    name: str = typer.Option(..., "--name", "-n", help="Image name in the store."),
    images: Path = typer.Option(Path("."), "--images", "-i", help="Folder the store names are relative to."),
    color_by: str = typer.Option("score", "--color-by", help="score | scale."),
    out: Path = typer.Option(Path("keypoints.png"), "--out", "-o"),
) -> None:
    """Draw the keypoints of one stored image, coloured by score or scale."""
    from delfi.io.features import FeatureStore
    from delfi.io.images import ImageError, read_image
    from delfi.viz.matches import plot_keypoints

    try:
        with FeatureStore(features) as store:
            found = store[name]
        picture = read_image(_image_path(images, name))
    except (KeyError, OSError, ValueError, ImageError) as exc:
        raise fail(str(exc).strip('"')) from None
    plot_keypoints(picture, found, out=out, color_by=color_by, title=name)  # the count is added below the title
    stderr_console().print(f"{len(found)} keypoints -> {out}")


@app.command("attention")
def attention(
    image: Path = typer.Argument(..., help="The image."),
    preset: str = typer.Option("delf", "--preset", "-p", help="A DELF or DELG preset (or YAML file)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Checkpoint path or known weights name."),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o"),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """Attention heatmaps per pyramid scale with the selected keypoints on top."""
    from delfi.cli.common import load_model
    from delfi.io.images import ImageError, read_image
    from delfi.viz.attention import plot_attention

    try:
        picture = read_image(image)
    except ImageError as exc:
        raise fail(str(exc)) from None
    model, config = load_model(preset, weights, list(overrides or []), device)
    if not hasattr(model, "attention_maps"):
        raise fail(f"the {config.model} extractor has no attention maps (use a delf or delg preset)")
    levels = model.attention_maps(picture)
    found = model.extract(picture)
    plot_attention(picture, levels, found, out=out, title=f"{image.name}: {config.model} attention")
    stderr_console().print(f"{len(levels)} scales, {len(found)} keypoints -> {out}")
