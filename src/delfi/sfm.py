"""Structure from motion from delfi's features: a COLMAP database (`delfi.io.colmap`), then COLMAP's
incremental mapper through pycolmap (``pip install delfi[sfm]``; verified with pycolmap 4.2.1).

`run_sfm` fills one output folder::

    <out>/.delfi-sfm          marker: the folder is a delfi sfm output (written first)
    <out>/database.db         the COLMAP database (`delfi.io.colmap.write_database`)
    <out>/sparse/0/           the largest model, COLMAP binary files (cameras, images, points3D, rigs, frames)
    <out>/results.json        `SfmResult` plus the export report (``format = "delfi-sfm"``)

`map_database` runs ``pycolmap.incremental_mapping`` on a database (seeded with ``seed``, threads
``threads``; with one seed and one thread count pycolmap 4.2.1 gave identical models run after run
here), keeps the model with the most registered images (then the most points) and reports it.

Safety: a folder that exists and is not empty is used only when it holds the marker (a delfi sfm
output), and one that holds an earlier run (anything besides the marker) only with ``overwrite``;
even then only delfi's files are replaced: the database only if delfi made it, ``results.json`` only
if it is delfi's, and in ``sparse/0`` only the model files COLMAP writes. Models are written into a
temp folder beside the target (``sparse/.mapping-<pid>-*``, removed afterwards, or by a later run
once that process is gone) and moved file by file; the results last, atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from delfi.io.colmap import ExportOptions, ExportReport, colmap_log_level, import_pycolmap

__all__ = ["DATABASE", "MARKER", "MODEL_DIR", "RESULTS", "RESULTS_FORMAT", "ImageResult", "MappingOptions",
           "SfmFolderError", "SfmReport", "SfmResult", "check_sfm_folder", "map_database", "run_sfm"]

MARKER = ".delfi-sfm"
DATABASE = "database.db"
MODEL_DIR = Path("sparse", "0")
RESULTS = "results.json"
RESULTS_FORMAT = "delfi-sfm"
MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin", "project.ini")
"""The files COLMAP writes into a model folder: the only ones delfi replaces there."""
_SCRATCH = re.compile(r"\.mapping-(\d+)-[A-Za-z0-9_]+")


class SfmFolderError(FileExistsError):
    """The output folder may not be used (a file; a folder that is not a delfi sfm output; an earlier
    run and no overwrite; a delfi file in it that was replaced by another)."""


@dataclass(frozen=True)
class MappingOptions:
    """Options of COLMAP's incremental mapper that delfi sets.

    Attributes:
        threads: threads of the mapper (and of COLMAP's verification in `run_sfm`); -1: all cores.
        seed: seed of COLMAP's random number generators.
        min_num_matches: fewest verified inliers of a pair the mapper uses (COLMAP's default 15).
        extract_colors: read the images to colour the 3-D points.
    """

    threads: int = -1
    seed: int = 0
    min_num_matches: int = 15
    extract_colors: bool = True


@dataclass
class ImageResult:
    """One image of the database: registered in the model or not, and its 2-D points with a 3-D point."""

    name: str
    registered: bool
    observations: int
    keypoints: int


@dataclass
class SfmResult:
    """The largest model of a mapping run.

    Attributes:
        images: images in the database.
        registered: images with a pose in the model.
        points3D: 3-D points; ``observations``: their 2-D observations (sum of track lengths).
        mean_track_length: observations / points3D.
        mean_reprojection_error: mean over observations, pixels.
        models: models COLMAP made (the largest is kept).
        per_image: one `ImageResult` per database image, in name order.
        seconds: mapping time.
    """

    images: int = 0
    registered: int = 0
    points3D: int = 0
    observations: int = 0
    mean_track_length: float = 0.0
    mean_reprojection_error: float = 0.0
    models: int = 0
    per_image: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_image"] = {r.name: {"registered": r.registered, "observations": r.observations,
                                     "keypoints": r.keypoints} for r in self.per_image}  # fmt: skip
        return out


@dataclass
class SfmReport:
    """What `run_sfm` did: the export, the mapping and where the files are."""

    export: ExportReport
    result: SfmResult
    database: Path
    model: Path | None
    results: Path
    seconds: float = 0.0


def _incremental_options(pycolmap: Any, options: MappingOptions) -> Any:
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = int(options.threads)
    opts.min_num_matches = int(options.min_num_matches)
    opts.extract_colors = bool(options.extract_colors)
    for owner in (opts, getattr(opts, "mapper", None), getattr(opts, "triangulation", None)):
        if owner is not None and hasattr(owner, "random_seed"):
            owner.random_seed = int(options.seed)
    return opts


def _summarise(pycolmap: Any, database: Path, model: Any, models: int) -> SfmResult:
    with pycolmap.Database.open(str(database)) as db:
        images = sorted(((image.name, db.num_keypoints_for_image(image.image_id)) for image in db.read_all_images()))
    result = SfmResult(images=len(images), models=models)
    if model is not None:
        registered = {model.images[i].name: model.images[i] for i in model.reg_image_ids()}
        result.registered = len(registered)
        result.points3D = int(model.num_points3D())
        result.observations = int(model.compute_num_observations())
        result.mean_track_length = float(model.compute_mean_track_length()) if result.points3D else 0.0
        result.mean_reprojection_error = float(model.compute_mean_reprojection_error()) if result.points3D else 0.0
    else:
        registered = {}
    for name, count in images:
        image = registered.get(name)
        result.per_image.append(ImageResult(name=name, registered=image is not None,
                                            observations=int(image.num_points3D) if image is not None else 0,
                                            keypoints=int(count)))  # fmt: skip
    return result


def _move_model(source: Path, target: Path) -> None:
    """Move the model files of ``source`` into ``target`` (created), replacing only COLMAP's model files."""
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if not (source / name).exists():
            with contextlib.suppress(FileNotFoundError):
                (target / name).unlink()  # a stale model file of an earlier run (delfi's folder)
    for entry in sorted(source.iterdir()):
        if entry.name in MODEL_FILES:
            os.replace(entry, target / entry.name)


def _remove_stale_scratch(folder: Path) -> None:
    """Delete ``.mapping-<pid>-*`` folders (COLMAP's models of a killed `map_database`) of processes that are gone."""
    from delfi.io.locking import process_gone

    for entry in folder.iterdir():
        match = _SCRATCH.fullmatch(entry.name)
        if match and entry.is_dir() and process_gone(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def map_database(
    database: str | os.PathLike,
    images: str | os.PathLike,
    model_dir: str | os.PathLike | None,
    options: MappingOptions | None = None,
    *,
    verbose: bool = False,
) -> SfmResult:
    """COLMAP's incremental mapping of ``database``; the largest model goes to ``model_dir`` (binary).

    Args:
        database: a COLMAP database (e.g. from `delfi.io.colmap.write_database`).
        images: the folder COLMAP reads images from (colours only).
        model_dir: where to write the largest model (COLMAP model files there are replaced, or removed
            when no model could be made; other files are left alone); None: not written.
        options: threads, seed, ... (`MappingOptions`).
        verbose: let COLMAP log at INFO level.

    Returns:
        `SfmResult` of the largest model (all zeros, ``models = 0``, when none could be made).

    Raises:
        MissingPycolmapError; RuntimeError when COLMAP's mapper fails.
    """
    pycolmap = import_pycolmap()
    options = options or MappingOptions()
    database = Path(database)
    started = time.perf_counter()
    scratch_parent = Path(model_dir).parent if model_dir is not None else database.parent
    made_parent = not scratch_parent.exists()
    scratch_parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(scratch_parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".mapping-{os.getpid()}-", dir=scratch_parent))
    try:
        with colmap_log_level(verbose):
            if hasattr(pycolmap, "set_random_seed"):
                pycolmap.set_random_seed(int(options.seed))
            try:
                models = pycolmap.incremental_mapping(str(database), str(images), str(scratch / "all"),
                                                      _incremental_options(pycolmap, options))  # fmt: skip
            except (RuntimeError, ValueError) as exc:
                raise RuntimeError(f"COLMAP's mapper failed on {database}: {str(exc).splitlines()[0][:300]}") from None
            best = max(models.values(), key=lambda m: (m.num_reg_images(), m.num_points3D()), default=None)
            (scratch / "best").mkdir()
            if best is not None and model_dir is not None:
                best.write(str(scratch / "best"))
            if model_dir is not None and (best is not None or Path(model_dir).is_dir()):
                _move_model(scratch / "best", Path(model_dir))  # no model: an earlier run's model files go
                if best is None:
                    with contextlib.suppress(OSError):
                        Path(model_dir).rmdir()  # only when empty
        result = _summarise(pycolmap, database, best, len(models))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # made just above by this call: only COLMAP's files in it
        if made_parent:
            with contextlib.suppress(OSError):
                scratch_parent.rmdir()  # only when empty: no model was written
    result.seconds = time.perf_counter() - started
    return result


# --- the output folder -------------------------------------------------------------------------------


def _is_delfi_results(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == RESULTS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_sfm_folder(out: str | os.PathLike, overwrite: bool) -> None:
    """Raise `SfmFolderError` unless ``out`` may take a delfi sfm run (see the module docstring)."""
    from delfi.io.colmap import check_database_output

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SfmFolderError(f"{out} is a file, not a folder: give a folder for the sfm output")
    if not out.is_dir():
        return
    entries = [e.name for e in out.iterdir()]
    if not entries:
        return
    if MARKER not in entries:
        raise SfmFolderError(f"{out} is not empty and is not a delfi sfm output folder (no {MARKER} file): "
                             f"delfi never writes into it; choose a new or empty folder")
    if len(entries) > 1 and not overwrite:
        raise SfmFolderError(f"{out} holds an earlier delfi sfm run: replace it with --overwrite, "
                             f"or choose another folder")
    results = out / RESULTS
    if results.exists() and not _is_delfi_results(results):
        raise SfmFolderError(f"{results} exists and is not delfi's results file: delfi never replaces it")
    try:
        check_database_output(out / DATABASE, overwrite=True)
    except FileExistsError as exc:
        raise SfmFolderError(str(exc)) from None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def run_sfm(
    features: str | os.PathLike,
    matches: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    export: ExportOptions | None = None,
    mapping: MappingOptions | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> SfmReport:
    """Database, mapping, model and results in the folder ``out`` (see the module docstring).

    ``export`` sets cameras and verification (its ``threads`` and ``seed`` are taken from ``mapping``).
    Raises `SfmFolderError` for a folder that may not be used, else as `delfi.io.colmap.write_database`
    and `map_database`.
    """
    from dataclasses import replace

    from delfi import __version__
    from delfi.io.colmap import write_database

    pycolmap = import_pycolmap()
    mapping = mapping or MappingOptions()
    export = replace(export or ExportOptions(), threads=mapping.threads, seed=mapping.seed)
    started = time.perf_counter()
    out = Path(out)
    check_sfm_folder(out, overwrite)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.exists():
        _write_json(marker, {"format": "delfi-sfm-folder", "delfi_version": __version__})
    database = out / DATABASE
    try:
        report = write_database(features, matches, database, images=images, options=export, overwrite=True,
                                verbose=verbose)  # fmt: skip
    except BaseException:
        if made and [e.name for e in out.iterdir()] == [MARKER]:  # bad input: leave no trace of this run
            marker.unlink()
            out.rmdir()
        raise
    result = map_database(database, images, out / MODEL_DIR, mapping, verbose=verbose)
    model = out / MODEL_DIR if result.models else None
    seconds = time.perf_counter() - started
    _write_json(out / RESULTS, {
        "format": RESULTS_FORMAT, "format_version": 1, "delfi_version": __version__,
        "pycolmap_version": str(getattr(pycolmap, "__version__", "?")),
        "features": str(features), "matches": str(matches), "images_dir": str(images),
        "database": DATABASE, "model": MODEL_DIR.as_posix() if model is not None else None,
        **{k: v for k, v in result.as_dict().items() if k not in ("per_image", "seconds")},
        "seconds": {"export": report.seconds, "mapping": result.seconds, "total": seconds},
        "mapping": asdict(mapping), "export": {"options": export.describe(), **report.as_dict()},
        "per_image": result.as_dict()["per_image"],
    })  # fmt: skip
    return SfmReport(export=report, result=result, database=database, model=model, results=out / RESULTS,
                     seconds=seconds)  # fmt: skip
