"""``delfi viz``: pictures of stored features and matches."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from delfi.cli.common import fail, stderr_console

app = typer.Typer(help="Pictures: matches of a stored pair, keypoints of a stored image, attention maps.", no_args_is_help=True)


def _image_path(images: Path, name: str) -> Path:
    """The image file of store entry ``name`` (the naming rule of `delfi.io.images` reversed)."""
    from delfi.io.images import name_to_path

    return name_to_path(name, images)


def _read_named_image(images: Path, name: str):
    """The image of store entry ``name`` under ``images``; exit 2 naming the file looked for."""
    from delfi.io.images import ImageError, read_image

    path = _image_path(images, name)
    try:
        return read_image(path)
    except ImageError as exc:
        from delfi.io.images import ABSOLUTE_PREFIX

        where = "" if name.split("/")[0] == ABSOLUTE_PREFIX else (
            f" (looked for {name!r} under the folder {images}{' (the current folder)' if str(images) == '.' else ''}; "
            f"--images sets the folder the store names are relative to)")
        raise fail(f"image of {name!r}: {exc}{where}") from None


def _entry_message(exc: BaseException) -> str:
    """A store error's message (KeyError's without the repr quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text or type(exc).__name__


def _stored_features(features: Path, name: str):
    """The features of ``name`` in the store ``features``; exit 2 naming the store and the entry."""
    from delfi.io.features import FeatureStore
    from delfi.match.pipeline import _check_one

    try:
        with FeatureStore(features) as store:
            if name not in store:
                raise fail(f"no entry {name!r} in feature store {features} ({len(store)} entries)")
            found = store.get(name)
        _check_one(found)
    except (KeyError, ValueError, TypeError, AttributeError, OSError) as exc:
        text = _entry_message(exc)
        if str(features) not in text or name not in text:
            text = f"entry {name!r} of feature store {features}: {text}"
        raise fail(text) from None
    return found


@app.command("matches")
def matches(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store."),
    matches_path: Path = typer.Option(..., "--matches", "-m", help="Match store."),
    pair: str = typer.Option(..., "--pair", help='The pair, as in the pairs file: "name0 name1".'),
    images: Path = typer.Option(Path("."), "--images", "-i", help="Folder the store names are relative to."),
    out: Path = typer.Option(Path("matches.png"), "--out", "-o"),
) -> None:
    """Draw the matches of one stored pair (inliers green, outliers red)."""
    from delfi.cli.match import picture_output
    from delfi.io.matches import MatchStore
    from delfi.viz.matches import plot_matches

    names = pair.split()
    if len(names) != 2:
        raise fail(f'--pair must be two names separated by a space, got "{pair}"')
    out = picture_output(out, [features, matches_path, *(_image_path(images, n) for n in names)], "--out")
    f0, f1 = (_stored_features(features, name) for name in names)
    try:
        with MatchStore(matches_path) as store:
            found = store.get(names[0], names[1], allow_reversed=True)
        if len(found) and (int(found.indices[:, 0].max()) >= len(f0) or int(found.indices[:, 1].max()) >= len(f1)):
            raise ValueError(f"the matches of {pair!r} in {matches_path} index more keypoints than {features} holds "
                             f"({len(f0)} / {len(f1)}): were they made from another feature store?")
    except (KeyError, OSError, ValueError) as exc:
        raise fail(_entry_message(exc)) from None
    pictures = [_read_named_image(images, name) for name in names]
    plot_matches(pictures[0], pictures[1], f0, f1, found, out=out, names=tuple(names))
    stderr_console().print(f"{len(found)} matches -> {out}", highlight=False, soft_wrap=True)


@app.command("keypoints")
def keypoints(
    features: Path = typer.Option(..., "--features", "-f", help="Feature store."),
    name: str = typer.Option(..., "--name", "-n", help="Image name in the store."),
    images: Path = typer.Option(Path("."), "--images", "-i", help="Folder the store names are relative to."),
    color_by: str = typer.Option("score", "--color-by", help="score | scale."),
    out: Path = typer.Option(Path("keypoints.png"), "--out", "-o"),
) -> None:
    """Draw the keypoints of one stored image, coloured by score or scale."""
    from delfi.cli.match import picture_output
    from delfi.viz.matches import plot_keypoints

    if color_by not in ("score", "scale"):
        raise fail(f"--color-by must be score or scale, got {color_by!r}")
    out = picture_output(out, [features, _image_path(images, name)], "--out")
    found = _stored_features(features, name)
    if color_by == "scale" and found.scales is None:
        raise fail(f"entry {name!r} of feature store {features} has no scales: use --color-by score")
    picture = _read_named_image(images, name)
    plot_keypoints(picture, found, out=out, color_by=color_by, title=name)  # the count is added below the title
    stderr_console().print(f"{len(found)} keypoints -> {out}", highlight=False, soft_wrap=True)


@app.command("attention")
def attention(
    image: Path = typer.Argument(..., help="The image."),
    preset: str = typer.Option("delf", "--preset", "-p", help="A DELF, DELG or multilevel preset (or YAML file)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Checkpoint path or known weights name."),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o"),
    device: str = typer.Option("cpu", "--device"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value."),
) -> None:
    """Attention heatmaps per pyramid scale (per level for multilevel) with the selected keypoints on top."""
    import warnings

    from rich.markup import escape

    from delfi.cli.common import load_model
    from delfi.cli.extract import _print_warnings
    from delfi.cli.match import picture_output
    from delfi.io.images import ImageError, read_image
    from delfi.viz.attention import plot_attention

    out = picture_output(out, [image, weights if weights and Path(weights).exists() else None], "--out")
    try:
        picture = read_image(image)
    except ImageError as exc:
        raise fail(str(exc)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, config = load_model(preset, weights, list(overrides or []), device)
    _print_warnings(caught)
    from delfi.models.capabilities import ATTENTION_MAPS, supports

    if not supports(model, ATTENTION_MAPS):
        raise fail(f"the {config.model} extractor has no attention maps (use a delf, delg or multilevel preset)")
    untrained = bool(getattr(model, "untrained", False))
    levels = model.attention_maps(picture)
    found = model.extract(picture)
    title = f"{image.name}: {config.model} attention"
    plot_attention(picture, levels, found, out=out, title=title, untrained=untrained)
    stamp = " [red](UNTRAINED: random weights)[/red]" if untrained else ""
    what = "levels" if levels and isinstance(levels[0][0], str) else "scales"
    stderr_console().print(f"{len(levels)} {what}, {len(found)} keypoints -> {escape(str(out))}{stamp}", highlight=False)
