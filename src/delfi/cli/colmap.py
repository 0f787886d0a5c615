"""``delfi export colmap`` (a COLMAP database from delfi's stores) and ``delfi sfm`` (database + COLMAP's
incremental mapper). Both need pycolmap: ``pip install delfi[sfm]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from delfi.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    fail,
    failure_list_path,
    prepare_output_file,
    refuse_output_among_inputs,
    report_failures,
    summary_table,
    verbose_warnings,
)

_CAMERA_MODEL = typer.Option("SIMPLE_RADIAL", "--camera-model", help="COLMAP model of inferred cameras (e.g. SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, OPENCV).")
_SINGLE = typer.Option(False, "--single-camera", help="One inferred camera for all images (they must share one size).")
_CAMERAS = typer.Option(None, "--cameras", help="Cameras file with explicit intrinsics (image name -> COLMAP camera; '*' for all others).")
_NO_VERIFY = typer.Option(False, "--no-colmap-verify", help="Do not let COLMAP verify the pairs delfi did not verify.")
_THREADS = typer.Option(-1, "--threads", help="Threads of COLMAP (-1: all cores).")
_FEATURES = typer.Option(..., "--features", "-f", help="delfi feature store.")
_MATCHES = typer.Option(..., "--matches", "-m", help="delfi match store of pairs of its images.")


def _pycolmap() -> None:
    from delfi.io.colmap import MissingPycolmapError, import_pycolmap

    try:
        import_pycolmap()
    except MissingPycolmapError as exc:
        raise fail(str(exc)) from None


def _existing(path: Path | None, option: str, folder: bool = False) -> None:
    if path is None:
        return
    if not path.exists():
        raise fail(f"{option} {path}: no such {'folder' if folder else 'file'}")
    if folder and not path.is_dir():
        raise fail(f"{option} {path} is not a folder")
    if not folder and path.is_dir():
        raise fail(f"{option} {path} is a folder, not a file")


def _export_options(camera_model: str, single_camera: bool, cameras: Path | None, no_colmap_verify: bool,
                    threads: int, seed: int = 0):  # fmt: skip
    """`ExportOptions` of the command line; exit 2 for an unknown model or a cameras file that cannot be read."""
    from delfi.io.colmap import ExportOptions, camera_models

    if camera_model not in camera_models():
        known = ", ".join(camera_models())
        raise fail(f"--camera-model {camera_model!r} is not a COLMAP camera model (one of {known})")
    explicit = None
    if cameras is not None:
        from delfi.io.cameras import read_cameras

        try:
            explicit = read_cameras(cameras)
        except OSError as exc:
            raise fail(f"--cameras {cameras}: cannot read it ({exc.strerror or exc})") from None
        except ValueError as exc:
            text = str(exc)
            raise fail(text if str(cameras) in text else f"--cameras {cameras}: {text}") from None
    return ExportOptions(camera_model=camera_model, single_camera=single_camera, cameras=explicit,
                         colmap_verify=not no_colmap_verify, threads=threads, seed=seed)  # fmt: skip


def _run(what: str, call):
    """Run ``call()``; exit 2 with one clear line for bad input (stores, cameras, images, outputs)."""
    from delfi.io.colmap import MissingPycolmapError
    from delfi.io.journal import StoreError

    try:
        return call()
    except MissingPycolmapError as exc:  # a pycolmap without what this run needs
        raise fail(str(exc)) from None
    except FileExistsError as exc:  # DatabaseOutputError, SfmFolderError
        raise fail(str(exc)) from None
    except (StoreError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        raise fail(f"{what}: {where}{exc.strerror or exc}") from None
    except RuntimeError as exc:  # COLMAP's verification or mapper
        raise fail(str(exc), EXIT_FAILED) from None


def _export_rows(report) -> list[tuple[str, str]]:
    sources = ", ".join(f"{n} {source}" for source, n in sorted(report.camera_sources.items(), key=lambda kv: -kv[1]))
    verified = f"{report.delfi_verified} by delfi, {report.colmap_verified} by COLMAP"
    rejected = f"{report.delfi_rejected} by delfi, {report.colmap_rejected} by COLMAP"
    rows = [
        ("images", f"{report.images} ({report.keypoints} keypoints)"),
        ("cameras", f"{report.cameras} ({sources})" if sources else str(report.cameras)),
        ("pairs", f"{report.pairs} ({report.matches} matches"
                  + (f"; {report.duplicates} stored both ways, written once)" if report.duplicates else ")")),
        ("verified pairs", f"{report.verified_pairs} ({verified})"),
        ("rejected pairs", rejected),
    ]
    if report.missing_files:
        shown = ", ".join(report.missing_files[:3]) + (", ..." if len(report.missing_files) > 3 else "")
        rows.append(("image files", f"{len(report.missing_files)} of {report.images} not in --images ({shown}): "
                                    f"default focal length, no colours"))
    if report.unverified:
        rows.append(("unverified pairs", f"{report.unverified} (no geometry: the mapper does not use them)"))
    skipped = len(report.skipped_images) + len(report.skipped_pairs)
    if skipped:
        rows.append(("skipped", f"{len(report.skipped_images)} images, {len(report.skipped_pairs)} pairs (below)"))
    return rows


def _report_skipped(console: Console, report, out: Path) -> bool:
    report_failures(console, "skipped images", ["image", "reason"], report.skipped_images,
                    failure_list_path(out.with_name(out.name + ".images")))  # fmt: skip
    report_failures(console, "skipped pairs", ["image 0", "image 1", "reason"], report.skipped_pairs,
                    failure_list_path(out))  # fmt: skip
    return bool(report.skipped_images or report.skipped_pairs)


def export_colmap(
    features: Path = _FEATURES,
    matches: Path = _MATCHES,
    images: Optional[Path] = typer.Option(None, "--images", "-i", help="Folder of the images (EXIF focal lengths); without it focal = 1.2 x max(w, h)."),
    out: Path = typer.Option(..., "--out", "-o", help="COLMAP database to write, e.g. colmap/database.db."),
    camera_model: str = _CAMERA_MODEL,
    single_camera: bool = _SINGLE,
    cameras: Optional[Path] = _CAMERAS,
    no_colmap_verify: bool = _NO_VERIFY,
    threads: int = _THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing database (only one delfi made)."),
) -> None:
    """Write a COLMAP database (cameras, rigs, frames, keypoints, matches, two-view geometries).

    `delfi export colmap -f feats.h5 -m matches.h5 --images photos/ --out colmap/database.db`
    then e.g. `colmap mapper --database_path colmap/database.db --image_path photos/ --output_path colmap/sparse`.
    Exit 1 when some images or pairs were skipped (listed), 2 for bad input.
    """
    from delfi.io.colmap import check_database_output, write_database

    _pycolmap()
    for path, option in ((features, "--features"), (matches, "--matches"), (cameras, "--cameras")):
        _existing(path, option)
    _existing(images, "--images", folder=True)
    refuse_output_among_inputs(out, [features, matches, cameras])
    out = prepare_output_file(out)
    options = _export_options(camera_model, single_camera, cameras, no_colmap_verify, threads)
    _run("export", lambda: check_database_output(out, overwrite))
    report = _run("export", lambda: write_database(features, matches, out, images=images, options=options,
                                                   overwrite=overwrite, verbose=verbose_warnings()))  # fmt: skip
    console = Console()
    rows = [*_export_rows(report), ("time", f"{report.seconds:.1f} s")]
    console.print(summary_table(f"delfi export colmap -> {out}", rows))
    skipped = _report_skipped(console, report, out)
    raise typer.Exit(EXIT_FAILED if skipped else EXIT_OK)


def sfm(
    images: Path = typer.Option(..., "--images", "-i", help="Folder of the images the store names are relative to."),
    features: Path = _FEATURES,
    matches: Path = _MATCHES,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: database.db, sparse/0/, results.json."),
    camera_model: str = _CAMERA_MODEL,
    single_camera: bool = _SINGLE,
    cameras: Optional[Path] = _CAMERAS,
    no_colmap_verify: bool = _NO_VERIFY,
    threads: int = _THREADS,
    seed: int = typer.Option(0, "--seed", help="Seed of COLMAP's verification and mapper."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier delfi sfm run in --out."),
) -> None:
    """Camera poses and a sparse 3-D model with COLMAP's incremental mapper, from delfi's features and matches.

    `delfi sfm --images photos/ -f feats.h5 -m matches.h5 --out sfm/`
    writes sfm/database.db, the largest model in sfm/sparse/0/ (COLMAP binary files) and sfm/results.json.
    Exit 1 when no model could be made or some images or pairs were skipped, 2 for bad input.
    """
    from delfi.sfm import DATABASE, RESULTS, MappingOptions, check_sfm_folder, run_sfm

    _pycolmap()
    for path, option in ((features, "--features"), (matches, "--matches"), (cameras, "--cameras")):
        _existing(path, option)
    _existing(images, "--images", folder=True)
    inputs = [features, matches, cameras, images]
    refuse_output_among_inputs(out, inputs)
    for name in (DATABASE, RESULTS):
        refuse_output_among_inputs(out / name, inputs)
    options = _export_options(camera_model, single_camera, cameras, no_colmap_verify, threads, seed)
    _run("sfm", lambda: check_sfm_folder(out, overwrite))
    mapping = MappingOptions(threads=threads, seed=seed)
    run = _run("sfm", lambda: run_sfm(features, matches, images, out, export=options, mapping=mapping,
                                      overwrite=overwrite, verbose=verbose_warnings()))  # fmt: skip
    result = run.result
    rows = _export_rows(run.export)
    rows += [
        ("registered", f"{result.registered} of {result.images} images"),
        ("3-D points", f"{result.points3D} ({result.observations} observations)"),
        ("mean track length", f"{result.mean_track_length:.2f}"),
        ("mean reprojection error", f"{result.mean_reprojection_error:.3f} px"),
        ("model", f"{run.model} (largest of {result.models})" if run.model is not None
         else "none: no model could be made"),
        ("results", str(run.results)),
        ("time", f"{run.seconds:.1f} s (export {run.export.seconds:.1f} s, mapping {result.seconds:.1f} s)"),
    ]
    console = Console()
    console.print(summary_table(f"delfi sfm -> {out}", rows))
    unregistered = [r.name for r in result.per_image if not r.registered]
    if unregistered and result.registered:
        shown = ", ".join(unregistered[:10]) + (f", ... ({len(unregistered)} in all)" if len(unregistered) > 10 else "")
        console.print(f"not registered: {shown}", highlight=False, soft_wrap=True)
    skipped = _report_skipped(console, run.export, out / DATABASE)
    raise typer.Exit(EXIT_FAILED if skipped or run.model is None else EXIT_OK)
