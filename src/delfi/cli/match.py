"""``delfi match``: two images (extract + match + verify + picture) or many pairs from a feature store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

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
    summary_table,
)

GEOMETRY_CHOICES = ("homography", "fundamental", "affine", "essential", "none")


def matching_config(geometry, threshold, ratio, max_distance, mutual, backend, seed, max_iters, confidence,
                    min_inliers=None):  # fmt: skip
    """The `MatchingConfig` of the options; exit 2 for a bad option or a RANSAC backend not installed."""
    from delfi.match.pipeline import MatchingConfig, check_config
    from delfi.match.verify import MIN_INLIERS, MissingBackendError

    if geometry not in GEOMETRY_CHOICES:
        raise fail(f"--geometry must be one of {', '.join(GEOMETRY_CHOICES)}, got {geometry!r}")
    config = MatchingConfig(
        mutual=mutual, ratio=ratio, max_distance=max_distance, geometry=None if geometry == "none" else geometry,
        threshold=threshold, confidence=confidence, max_iters=max_iters, seed=seed, backend=backend,
        min_inliers=MIN_INLIERS if min_inliers is None else min_inliers,
    )  # fmt: skip
    try:
        check_config(config)
    except (ValueError, MissingBackendError) as exc:
        raise fail(str(exc)) from None
    return config


def picture_output(path: Path, inputs, option: str) -> Path:
    """Exit 2 unless ``path`` can take a picture: not an input, a file path, a format matplotlib writes."""
    from delfi.viz.matches import picture_formats

    refuse_output_among_inputs(path, inputs, option)
    path = prepare_output_file(path, option)
    formats = picture_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        raise fail(f"{option} {path}: not a picture file name; use one of the suffixes "
                   f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def match_store_output(out: Path, inputs, option: str = "--out") -> Path:
    """Exit 2 unless ``out`` may be written as a match store: not an input, a file path, and, when it
    exists, a delfi match store (a user's file or a feature store is never replaced or resumed)."""
    from delfi.io.matches import MatchStore

    refuse_output_among_inputs(out, inputs, option)
    out = prepare_output_file(out, option)
    if out.exists():
        try:
            MatchStore(out, "r").close()
        except (OSError, ValueError) as exc:
            raise fail(f"{option} {out} exists and is not a delfi match store ({exc}); delfi replaces or "
                       f"resumes only its own match stores: choose another output path") from None
    return out


def match(
    images: Optional[List[Path]] = typer.Argument(None, help="Two images to match (and key=value overrides of the preset)."),
    features: Optional[Path] = typer.Option(None, "--features", "-f", help="Feature store (pairs mode)."),
    features_db: Optional[Path] = typer.Option(None, "--features-db", help="Store of the second images, if different."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Pairs file `name0 name1` (pairs mode)."),
    out: Path = typer.Option(Path("matches.h5"), "--out", "-o", help="Match store to write or resume (pairs mode)."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", "-p", help="Preset for extraction (two-image mode)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights name or checkpoint path."),
    device: str = typer.Option("cpu", "--device"),
    geometry: str = typer.Option("homography", "--geometry", "-g", help="homography | fundamental | affine | essential | none."),
    intrinsics: Optional[str] = typer.Option(None, "--intrinsics", help="Essential: cameras file ('name MODEL W H params', or a one-camera COLMAP cameras.txt), 'f' or 'fx,fy,cx,cy' (pixel centres at integers), or 'exif' (default: EXIF focal, else 1.2 max(w, h), as COLMAP)."),
    images_dir: Optional[Path] = typer.Option(None, "--images", help="Pairs mode, essential: folder of the images, for their EXIF focal lengths."),
    threshold: float = typer.Option(3.0, "--threshold", help="RANSAC residual threshold (pixels)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Lowe ratio test (e.g. 0.9)."),
    max_distance: Optional[float] = typer.Option(None, "--max-distance", help="Keep matches with L2 distance <= this."),
    mutual: bool = typer.Option(True, "--mutual/--no-mutual", help="Keep only mutual nearest neighbours."),
    backend: str = typer.Option("opencv", "--backend", help="RANSAC backend: opencv | pydegensac | poselib."),
    seed: int = typer.Option(0, "--seed"),
    max_iters: int = typer.Option(10000, "--max-iters"),
    confidence: float = typer.Option(0.9999, "--confidence"),
    min_inliers: Optional[int] = typer.Option(None, "--min-inliers", help="Fewest inliers of a verified pair (default 15; F also needs more than chance)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Save a match picture (two-image mode)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start a fresh match store (replaces only a delfi match store)."),
) -> None:
    """Match two images, or every pair of a pairs file from a feature store.

    Two images: `delfi match a.jpg b.jpg --weights r2d2-wasf-n16 --plot m.png`.
    Pairs: `delfi match --features feats.h5 --pairs pairs.txt --out matches.h5 --geometry fundamental`.
    """
    config = matching_config(geometry, threshold, ratio, max_distance, mutual, backend, seed, max_iters, confidence,
                             min_inliers)  # fmt: skip
    camera_spec = intrinsics_option(intrinsics, config.geometry)
    paths, settings = split_overrides(images)
    if features is not None or pairs is not None:
        if paths or features is None or pairs is None:
            raise fail("pairs mode needs --features and --pairs and no image arguments")
        out = match_store_output(out, [features, features_db, pairs])
        camera_of = store_cameras(camera_spec, images_dir) if config.geometry == "essential" else None
        _match_store(features, features_db, pairs, out, config, overwrite, camera_of)
    elif len(paths) == 2:
        if plot is not None:
            plot = picture_output(plot, [*paths, weights if weights and Path(weights).exists() else None], "--plot")
        _match_two(paths[0], paths[1], preset, weights, settings, device, config, plot, camera_spec)
    else:
        raise fail("give two images, or --features with --pairs")


def intrinsics_option(value: str | None, geometry: str | None):
    """The parsed ``--intrinsics`` (see `delfi.io.cameras.parse_intrinsics`); exit 2 when it is bad or
    given for a geometry that does not use it."""
    from delfi.io.cameras import parse_intrinsics

    if value is None:
        return None
    if geometry != "essential":
        raise fail(f"--intrinsics is for --geometry essential (got --geometry {geometry or 'none'})")
    try:
        return parse_intrinsics(value)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None


def store_cameras(spec, images_dir: Path | None):
    """``camera_of(name, features)`` for pairs mode: the cameras file / numbers, else EXIF of
    ``images_dir / name`` when given, else COLMAP's default from the stored image size."""
    from delfi.io.cameras import cameras_for

    if images_dir is not None and not images_dir.is_dir():
        raise fail(f"--images {images_dir}: not a folder")

    def camera_of(name: str, features):
        width, height = features.image_size
        if min(width, height) <= 0:
            raise ValueError(f"entry {name!r} records no image size: the essential geometry needs it")
        return cameras_for(spec, name, width, height, None if images_dir is None else images_dir / name)

    return camera_of


def _pose_rows(matches) -> list[tuple[str, str]]:
    """Summary rows of an essential matrix's relative pose (rotation angle and translation direction)."""
    import numpy as np

    rotation, translation = matches.meta.get("rotation"), matches.meta.get("translation")
    if rotation is None or translation is None:
        return []
    angle = float(np.degrees(np.arccos(np.clip((np.trace(np.array(rotation)) - 1) / 2, -1, 1))))
    return [("rotation", f"{angle:.2f} deg"), ("translation", " ".join(f"{v:+.3f}" for v in translation))]


def _match_two(path0: Path, path1: Path, preset, weights, settings, device, config, plot: Path | None,
               camera_spec=None) -> None:  # fmt: skip
    from delfi.io.cameras import cameras_for
    from delfi.io.images import ImageError, read_image
    from delfi.match.pipeline import match_features

    try:
        images = [read_image(path0), read_image(path1)]
    except ImageError as exc:
        raise fail(str(exc)) from None
    intrinsics = None
    if config.geometry == "essential":
        try:
            intrinsics = tuple(cameras_for(camera_spec, str(path), image.shape[-1], image.shape[-2], path)
                               for path, image in ((path0, images[0]), (path1, images[1])))  # fmt: skip
        except KeyError as exc:
            raise fail(f"--intrinsics: {exc.args[0]}") from None
    model, _ = load_model(preset, weights, settings, device)
    f0, f1 = (model.extract(image) for image in images)
    matches = match_features(f0, f1, config, intrinsics)
    rows = [("features", f"{len(f0)} / {len(f1)}"), ("matches", str(len(matches)))]
    if intrinsics is not None:
        rows += [(f"camera {k}", f"{c.model} {' '.join(f'{p:.6g}' for p in c.params)}"
                  + ("" if c.from_exif else " (no EXIF: 1.2 max(w, h))")) for k, c in enumerate(intrinsics)]
    if matches.inliers is not None:
        share = matches.num_inliers / max(len(matches), 1)
        rows += [(f"{matches.kind} inliers", f"{matches.num_inliers} ({share:.0%}), {matches.meta.get('status', '')}")]
        if matches.model is not None:
            rows.append(("model", " ".join(f"{v:.4g}" for v in matches.model.flatten().tolist())))
            rows += _pose_rows(matches)
    if plot is not None:
        from delfi.viz.matches import plot_matches

        plot_matches(images[0], images[1], f0, f1, matches, out=plot, names=(path0.name, path1.name))
        rows.append(("picture", str(plot)))
    Console().print(summary_table(f"delfi match {path0.name} {path1.name}", rows))


def _match_store(features: Path, features_db: Path | None, pairs_path: Path, out: Path, config, overwrite: bool,
                 camera_of=None) -> None:  # fmt: skip
    from delfi.io.pairs import read_pairs
    from delfi.match.pipeline import match_pairs

    from delfi.cli.pairs import os_message

    try:
        pairs = read_pairs(pairs_path)
    except OSError as exc:
        raise fail(os_message(exc, "cannot read pairs file")) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    with ProgressBar(len(pairs), "matching", unit="pairs") as bar:
        try:
            report = match_pairs(
                features, pairs, out, config, features_db=features_db, overwrite=overwrite,
                on_pair=lambda pair, status: bar.advance(pair[1], status), camera_of=camera_of,
            )  # fmt: skip
        except OSError as exc:
            raise fail(str(exc) if exc.filename is None else os_message(exc, "cannot read or write")) from None
        except ValueError as exc:
            raise fail(str(exc)) from None
    counts, inliers = report.matches_per_pair, report.inliers_per_pair
    rows = [("pairs", f"{report.total} ({report.matched} matched, {report.skipped} already done, {len(report.failures)} failed)")]
    if report.statuses:
        shown = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items(), key=lambda kv: -kv[1]))
        rows.append(("verified", f"{report.verified} of {report.matched} ({shown}; min {config.min_inliers} inliers)"))
    if counts:
        rows.append(("matches / pair", f"mean {sum(counts) / len(counts):.0f}, min {min(counts)}, max {max(counts)}"))
    if inliers:
        rows.append(("inliers / pair", f"mean {sum(inliers) / len(inliers):.0f}, min {min(inliers)}, max {max(inliers)}"))
    rows.append(("time", f"{report.seconds:.1f} s"))
    console = Console()
    console.print(summary_table(f"delfi match -> {out}", rows))
    report_failures(console, "failed pairs", ["image 0", "image 1", "reason"], report.failures,
                    failure_list_path(out))  # fmt: skip
    raise typer.Exit(EXIT_FAILED if report.failures else EXIT_OK)
