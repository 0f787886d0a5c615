"""COLMAP databases from delfi's feature and match stores, through pycolmap (``pip install delfi[sfm]``).

`write_database` writes one SQLite database in COLMAP's own schema (COLMAP 3.12+ / 4.x: cameras, rigs,
frames, images, keypoints, matches, two-view geometries) through ``pycolmap.Database``, ready for
COLMAP's mapper (``colmap mapper``, `delfi.sfm`). Verified with pycolmap 4.2.1 (COLMAP 4.2.1) only;
an older pycolmap without rigs and frames (< 3.12) is refused (`MissingPycolmapError`).

What is written:

* Images: one per valid entry of the feature store, named by its store name (COLMAP resolves it
  against its ``image_path``), in sorted name order (image ids 1, 2, ...). Descriptors are not
  written: COLMAP's mapper does not read them, and COLMAP's own matcher takes only its 128-byte SIFT.
* Keypoints: (N, 2) float32 in COLMAP's convention, where the centre of the top-left pixel is
  (0.5, 0.5): delfi's (0, 0)-centred coordinates plus 0.5 (`keypoints_to_colmap`). Keypoints are in
  the image as displayed (EXIF orientation applied, see `delfi.io.images`), and so are the cameras'
  sizes; COLMAP tools that read pixels themselves (colours, undistortion) see the file unrotated.
* Cameras (`ExportOptions`): by default one per image, inferred as COLMAP does
  (``pycolmap.infer_camera_from_image``: the EXIF focal length when the file has one, else
  1.2 * max(width, height); principal point at the centre; model ``camera_model``, default
  SIMPLE_RADIAL); with ``single_camera`` one camera for all images (they must share one size); with
  ``cameras`` (`delfi.io.cameras.read_cameras`: image name -> Camera, ``"*"`` for all others)
  explicit intrinsics, in COLMAP's own parameter order and principal-point convention, looked up as
  `delfi.io.cameras.cameras_for` does (full name, file name, ``"*"``; scaled to the image's size when
  it differs), so they are the intrinsics delfi's essential verification used; images that get the
  same camera from one entry (``"*"``) share one COLMAP camera. Each camera gets a trivial rig (the
  camera as its reference sensor) and each image a frame of its camera's rig, as COLMAP's own image
  import does (COLMAP 4.2.1 also maps a database without rigs and frames, making the same ones).
* Matches: the raw matches of every pair of the match store, once per unordered pair: a pair stored
  both ways is written from the entry delfi verified ("ok"), else from the first in the store's
  sorted order (the other is counted in ``ExportReport.duplicates``). A pair naming an image that is
  not (validly) in the feature store, or with indices beyond an image's keypoints, is skipped with
  its reason (``ExportReport.skipped_pairs``).
* Two-view geometries: for pairs delfi verified with status "ok", the inliers and the model converted
  to COLMAP's convention (`model_to_colmap`): homography -> PLANAR_OR_PANORAMIC with H; affine ->
  PLANAR_OR_PANORAMIC with the affine map as H; fundamental -> UNCALIBRATED with F; essential ->
  CALIBRATED with E (and the relative pose ``meta["rotation"]`` / ``["translation"]`` as
  ``cam2_from_cam1`` when present). Pairs delfi verified with another status get a DEGENERATE
  geometry without inliers, and delfi's decision stands: COLMAP's verifier would verify them again
  (it skips only pairs whose geometry has inliers), so their raw matches are written after it ran. Pairs with
  no delfi verification are verified by COLMAP itself (``pycolmap.geometric_verification`` over the
  matched pairs that have no geometry yet, seeded) unless ``colmap_verify`` is False; the mapper
  uses only pairs with a geometry of at least 15 inliers.

Safety: an existing database is replaced only with ``overwrite`` and only when delfi made it: delfi
adds the table `MARKER_TABLE` (``delfi_export``: key / value rows ``format = delfi-colmap-database``,
``format_version``, ``delfi_version``, ``pycolmap_version``, ``features``, ``matches``,
``options``), which COLMAP ignores; `is_delfi_database` reads it. A database with a ``-wal`` file
beside it (open in another program, or left by a crash) is never replaced. The database is built in
``<database>.tmp-<pid>-<8 hex>`` beside the target and moved onto it with `os.replace` once complete,
so a killed run leaves the old file (or nothing) and a temp file that the next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from delfi.io.locking import process_gone

if TYPE_CHECKING:
    from delfi.io.cameras import Camera

__all__ = ["DATABASE_FORMAT", "MARKER_TABLE", "MIN_NUM_INLIERS", "DatabaseOutputError", "ExportOptions",
           "ExportReport", "MissingPycolmapError", "camera_models", "check_database_output", "colmap_log_level",
           "import_pycolmap", "is_delfi_database", "keypoints_to_colmap", "model_to_colmap", "write_database"]

DATABASE_FORMAT = "delfi-colmap-database"
DATABASE_FORMAT_VERSION = 1
MARKER_TABLE = "delfi_export"
"""The table delfi adds to every database it writes (COLMAP ignores tables it does not know)."""
MIN_NUM_INLIERS = 15
"""COLMAP's defaults for a verified pair (``TwoViewGeometryOptions.min_num_inliers``) and for a pair the
mapper uses (``IncrementalPipelineOptions.min_num_matches``)."""
DEFAULT_CAMERA_MODEL = "SIMPLE_RADIAL"
_SHIFT = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])  # x_colmap = S x_delfi (homogeneous)
_SHIFT_INV = np.linalg.inv(_SHIFT)
_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}(-wal|-shm|-journal)?")


class MissingPycolmapError(ImportError):
    """pycolmap is not installed, or too old for COLMAP's rigs and frames; the message says what to install."""


class DatabaseOutputError(FileExistsError):
    """The database path may not be written. ``reason``: ``"foreign"`` (a file delfi did not make),
    ``"exists"`` (a database delfi made, and no overwrite), ``"busy"`` (a ``-wal`` file beside it)."""

    def __init__(self, path: str | os.PathLike, reason: str, message: str) -> None:
        super().__init__(message)
        self.path, self.reason = Path(path), reason


def import_pycolmap() -> Any:
    """The pycolmap module; `MissingPycolmapError` when absent or older than COLMAP's rigs and frames (3.12)."""
    try:
        import pycolmap
    except ImportError as err:
        raise MissingPycolmapError("COLMAP export and mapping need pycolmap: pip install delfi[sfm]") from err
    if not (hasattr(pycolmap, "Rig") and hasattr(pycolmap, "Frame") and hasattr(pycolmap.Database, "write_frame")):
        version = getattr(pycolmap, "__version__", "?")
        raise MissingPycolmapError(f"pycolmap {version} predates COLMAP's rigs and frames (3.12): "
                                   f"pip install -U delfi[sfm]")
    return pycolmap


@contextlib.contextmanager
def colmap_log_level(verbose: bool) -> Iterator[None]:
    """COLMAP's own log (glog, on stderr) shows errors only, unless ``verbose``; restored afterwards."""
    pycolmap = import_pycolmap()
    logging = getattr(pycolmap, "logging", None)
    if verbose or logging is None or not hasattr(logging, "minloglevel"):
        yield
        return
    before = logging.minloglevel
    logging.minloglevel = 2
    try:
        yield
    finally:
        logging.minloglevel = before


# --- conventions -----------------------------------------------------------------------------------


def keypoints_to_colmap(keypoints: Any) -> np.ndarray:
    """(N, 2) keypoints in delfi's convention (top-left pixel centre at (0, 0)) -> (N, 2) float32 in
    COLMAP's (top-left pixel centre at (0.5, 0.5))."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    return np.ascontiguousarray(kp + 0.5, dtype=np.float32)


def model_to_colmap(model: Any, kind: str) -> np.ndarray:
    """A (3, 3) verified model in delfi's pixel convention -> the same model in COLMAP's (+0.5).

    With ``x_c = S x_d`` (``S`` the shift by 0.5): homography / affine ``S M S^-1`` (``H[2, 2] = 1``
    when it is not 0), fundamental ``S^-T F S^-1`` (unit Frobenius norm); an essential matrix relates
    normalised points and is returned unchanged. ValueError for another kind.
    """
    m = np.asarray(model, dtype=np.float64).reshape(3, 3)
    if kind in ("homography", "affine"):
        out = _SHIFT @ m @ _SHIFT_INV
        return out / out[2, 2] if abs(out[2, 2]) > 1e-12 else out
    if kind == "fundamental":
        out = _SHIFT_INV.T @ m @ _SHIFT_INV
        norm = np.linalg.norm(out)
        return out / norm if norm > 0 else out
    if kind == "essential":
        return m.copy()
    raise ValueError(f"no COLMAP form for a model of kind {kind!r}")


# --- options, report ---------------------------------------------------------------------------------


def camera_models() -> tuple[str, ...]:
    """The camera model names this pycolmap knows (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, ...)."""
    pycolmap = import_pycolmap()
    return tuple(name for name in pycolmap.CameraModelId.__members__ if name != "INVALID")


@dataclass(frozen=True)
class ExportOptions:
    """How `write_database` makes cameras and verifies pairs.

    Attributes:
        camera_model: COLMAP model of inferred cameras (not of explicit ones).
        single_camera: one inferred camera shared by all images without an explicit camera.
        cameras: explicit cameras (`delfi.io.cameras.read_cameras`), image name -> `Camera`
            (``"*"``: every image not named).
        colmap_verify: let COLMAP verify the pairs delfi did not verify.
        threads: threads of COLMAP's verification (-1: all cores).
        seed: seed of COLMAP's RANSAC.
    """

    camera_model: str = DEFAULT_CAMERA_MODEL
    single_camera: bool = False
    cameras: Mapping[str, Camera] | None = None
    colmap_verify: bool = True
    threads: int = -1
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The options as JSON-ready values (explicit cameras by count)."""
        out = {k: v for k, v in asdict(self).items() if k != "cameras"}
        out["explicit_cameras"] = len(self.cameras or {})
        return out


@dataclass
class ExportReport:
    """What `write_database` wrote.

    ``camera_sources`` counts images by where their camera came from ("cameras file", "EXIF focal
    length", "focal 1.2 x max(w, h)", COLMAP's default without EXIF). ``skipped_images`` holds
    ``(name, reason)``, ``skipped_pairs`` ``(name0, name1, reason)``; ``duplicates`` counts stored
    reverses of written pairs (not failures); ``missing_files`` names the images written whose file is
    not in the images folder (given one): COLMAP's default focal length, no colours.
    """

    database: str = ""
    images: int = 0
    keypoints: int = 0
    cameras: int = 0
    camera_sources: dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    matches: int = 0
    delfi_verified: int = 0
    delfi_rejected: int = 0
    colmap_verified: int = 0
    colmap_rejected: int = 0
    unverified: int = 0
    duplicates: int = 0
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    skipped_pairs: list[tuple[str, str, str]] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verified_pairs(self) -> int:
        """Pairs with a verified geometry (by delfi or by COLMAP)."""
        return self.delfi_verified + self.colmap_verified

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verified_pairs"] = self.verified_pairs
        out["skipped_images"] = [list(row) for row in self.skipped_images]
        out["skipped_pairs"] = [list(row) for row in self.skipped_pairs]
        return out


# --- the marker, the output check --------------------------------------------------------------------


def is_delfi_database(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an SQLite database holding delfi's marker table (read only)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        # immutable: no lock, no -wal / -shm files made by this look (a live -wal is not read)
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return False
    try:
        row = con.execute(f"SELECT value FROM {MARKER_TABLE} WHERE key = 'format'").fetchone()
        return row is not None and row[0] == DATABASE_FORMAT
    except sqlite3.Error:  # not a database, no marker table
        return False
    finally:
        con.close()


def check_database_output(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise `DatabaseOutputError` unless ``path`` may be (re)written: absent, or a database delfi made
    and ``overwrite`` given, with no ``-wal`` file beside it."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not is_delfi_database(path):
        raise DatabaseOutputError(path, "foreign", f"{path} exists and is not a COLMAP database delfi made: "
                                                   f"delfi never replaces it; choose another output path")
    if not overwrite:
        raise DatabaseOutputError(path, "exists", f"{path} exists (a COLMAP database delfi made); "
                                                  f"replace it with --overwrite")
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        raise DatabaseOutputError(path, "busy", f"{path} is open in another program or was left by a crash "
                                                f"({wal.name} exists): close it (or open and close it in "
                                                f"COLMAP) before replacing it")


def _remove_stale_temps(path: Path) -> None:
    """Delete ``<path>.tmp-<pid>-<8 hex>[-wal|-shm|-journal]`` of processes that are gone (delfi's)."""
    prefix = path.name
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        match = _TMP.fullmatch(rest)
        if match and process_gone(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()


def _remove_temp(tmp: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(tmp) + suffix).unlink()


def _write_marker(path: Path, values: dict[str, str]) -> None:
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (key TEXT PRIMARY KEY NOT NULL, value TEXT)")
            con.executemany(f"INSERT OR REPLACE INTO {MARKER_TABLE} (key, value) VALUES (?, ?)", values.items())
        con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (COLMAP turns WAL on when it opens it)
    finally:
        con.close()


# --- cameras -----------------------------------------------------------------------------------------

_FILE = "cameras file"
_EXIF = "EXIF focal length"
_DEFAULT = "focal 1.2 x max(w, h)"


def _file_camera(spec: Mapping[str, Camera], name: str, size: tuple[int, int]) -> tuple[str | None, Any]:
    """The cameras file's camera of one image, looked up as `delfi.io.cameras.cameras_for` does (the
    full name, the file name, ``"*"``) and scaled to the image's size when it differs: (key, camera),
    or (None, None) when the file has none for it."""
    base = name.rsplit("/", 1)[-1]
    key = name if name in spec else base if base in spec else "*" if "*" in spec else None
    if key is None:
        return None, None
    camera = spec[key]
    if (int(camera.width), int(camera.height)) != size:
        try:
            camera = camera.scaled(*size)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"camera {key!r} of the cameras file is {camera.width} x {camera.height} and cannot be "
                             f"scaled to image {name!r} ({size[0]} x {size[1]}): {exc}") from None
    return key, camera


def _colmap_camera(pycolmap: Any, camera: Camera, key: str) -> Any:
    """A pycolmap camera of an explicit one (ValueError for a model or parameters COLMAP does not take)."""
    if camera.model not in camera_models():
        raise ValueError(f"camera {key!r} of the cameras file: unknown COLMAP camera model {camera.model!r}")
    out = pycolmap.Camera.create_from_model_name(0, camera.model, 1.0, int(camera.width), int(camera.height))
    params = [float(p) for p in camera.params]
    size = len(out.params)
    out.params = params
    if len(params) != size or not out.verify_params():
        raise ValueError(f"camera {key!r} of the cameras file: model {camera.model} takes {out.params_info} "
                         f"({size} values), got {len(params)}")
    out.has_prior_focal_length = True
    return out


def _inferred_camera(pycolmap: Any, name: str, size: tuple[int, int], images: Path | None,
                     model: str) -> tuple[Any, str]:  # fmt: skip
    """COLMAP's guess for one image, at the features' size: (camera, source)."""
    from delfi.io.images import name_to_path

    width, height = size
    focal, prior = 1.2 * max(width, height), False
    path = name_to_path(name, images) if images is not None else None
    if path is not None and path.is_file():
        options = pycolmap.ImageReaderOptions()
        options.camera_model = model
        try:
            guess = pycolmap.infer_camera_from_image(str(path), options)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"image {path}: COLMAP cannot read it ({str(exc).splitlines()[0][:200]})") from None
        if (guess.width, guess.height) not in ((width, height), (height, width)):  # swapped: EXIF rotation
            raise ValueError(f"image {path} is {guess.width} x {guess.height} but its features are from a "
                             f"{width} x {height} image (features of another image?)")
        if guess.has_prior_focal_length:
            focal, prior = float(guess.mean_focal_length()), True
    camera = pycolmap.Camera.create_from_model_name(0, model, focal, width, height)
    camera.has_prior_focal_length = prior
    return camera, (_EXIF if prior else _DEFAULT)


def _cameras(pycolmap: Any, sizes: dict[str, tuple[int, int]], images: Path | None,
             options: ExportOptions) -> list[tuple[Any, str, list[str]]]:  # fmt: skip
    """(camera, source, image names) groups covering every image of ``sizes`` once.

    Images that get the same camera from the same entry of the cameras file (e.g. ``"*"``) share it.
    """
    if options.camera_model not in camera_models():
        raise ValueError(f"unknown COLMAP camera model {options.camera_model!r} (one of {', '.join(camera_models())})")
    explicit: dict[tuple[str, Any], list[str]] = {}
    rest = []
    for name, size in sizes.items():
        key, camera = _file_camera(options.cameras or {}, name, size)
        if key is None:
            rest.append(name)
        else:
            explicit.setdefault((key, camera), []).append(name)
    groups = [(_colmap_camera(pycolmap, camera, key), _FILE, names) for (key, camera), names in explicit.items()]
    if rest and options.single_camera:
        found = sorted({sizes[name] for name in rest})
        if len(found) > 1:
            shown = ", ".join(f"{w} x {h}" for w, h in found[:5])
            raise ValueError(f"a single camera needs images of one size; the images without a camera of their own "
                             f"have {len(found)} sizes ({shown}{', ...' if len(found) > 5 else ''})")
        camera, source = _inferred_camera(pycolmap, rest[0], sizes[rest[0]], images, options.camera_model)
        return groups + [(camera, source, rest)]
    for name in rest:
        camera, source = _inferred_camera(pycolmap, name, sizes[name], images, options.camera_model)
        groups.append((camera, source, [name]))
    return groups


# --- the database ------------------------------------------------------------------------------------


def _read_keypoints(features: Any, report: ExportReport) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """Keypoints (N, 2) and image sizes (w, h) of every valid entry, by name; broken entries go to
    ``report.skipped_images``."""
    out, sizes = {}, {}
    for name in features.names():
        try:
            entry = features.get(name)
        except (KeyError, ValueError, OSError) as exc:
            report.skipped_images.append((name, str(exc)))
            continue
        width, height = entry.image_size
        if width <= 0 or height <= 0:
            report.skipped_images.append((name, f"image size {width} x {height} is unknown"))
            continue
        out[name], sizes[name] = entry.keypoints.numpy(), (int(width), int(height))
    return out, sizes


def _pair_problem(name0: str, name1: str, indices: np.ndarray, keypoints: dict[str, np.ndarray],
                  features_path: str, skipped: dict[str, str]) -> str | None:  # fmt: skip
    if name0 == name1:
        return "an image paired with itself"
    for name in (name0, name1):
        if name in skipped:
            return f"image {name!r} is skipped ({skipped[name]})"
        if name not in keypoints:
            return f"image {name!r} is not in feature store {features_path}"
    for column, name in enumerate((name0, name1)):
        count = len(keypoints[name])
        if indices.size and int(indices[:, column].max()) >= count:
            return f"match indices reach {int(indices[:, column].max())} but image {name!r} has {count} keypoints"
    return None


def _choose(entries: list[tuple[str, str, Any]]) -> tuple[tuple[str, str, Any], int]:
    """The entry of one unordered pair to write (delfi-verified first, else the first) and the duplicate count."""
    verified = [e for e in entries if e[2].meta.get("status") == "ok" and e[2].inliers is not None]
    return (verified or entries)[0], len(entries) - 1


def _two_view_geometry(pycolmap: Any, matches: Any, indices: np.ndarray) -> Any:
    """COLMAP's geometry of a pair delfi verified: its inliers and model ("ok") or DEGENERATE (not)."""
    config = pycolmap.TwoViewGeometryConfiguration
    geometry = pycolmap.TwoViewGeometry()
    if matches.meta.get("status") != "ok":
        geometry.config = config.DEGENERATE
        geometry.inlier_matches = np.empty((0, 2), dtype=np.uint32)
        return geometry
    inliers = matches.inliers.numpy().astype(bool)
    geometry.inlier_matches = np.ascontiguousarray(indices[inliers], dtype=np.uint32)
    kind = matches.kind
    model = matches.model.numpy() if matches.model is not None else None
    if kind in ("homography", "affine"):
        geometry.config = config.PLANAR_OR_PANORAMIC
        if model is not None:
            geometry.H = model_to_colmap(model, kind)
    elif kind == "essential":
        geometry.config = config.CALIBRATED
        if model is not None:
            geometry.E = model_to_colmap(model, kind)
        rotation, translation = matches.meta.get("rotation"), matches.meta.get("translation")
        if rotation is not None and translation is not None:
            geometry.cam2_from_cam1 = pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(rotation, dtype=np.float64)),
                                                       np.asarray(translation, dtype=np.float64).reshape(3))
    else:
        geometry.config = config.UNCALIBRATED
        if model is not None and kind == "fundamental":
            geometry.F = model_to_colmap(model, kind)
    return geometry


def _write_images(pycolmap: Any, db: Any, keypoints: dict[str, np.ndarray],
                  groups: list[tuple[Any, str, list[str]]], report: ExportReport) -> dict[str, int]:  # fmt: skip
    """Cameras, their rigs, images (in name order), frames and keypoints; name -> image id."""
    camera_of = {}
    for camera, source, names in groups:
        camera_id = db.write_camera(camera)
        rig = pycolmap.Rig()
        rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id))
        rig_id = db.write_rig(rig)
        for name in names:
            camera_of[name] = (camera_id, rig_id)
        report.camera_sources[source] = report.camera_sources.get(source, 0) + len(names)
        report.cameras += 1
    ids = {}
    for name in sorted(keypoints):
        camera_id, rig_id = camera_of[name]
        image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
        frame = pycolmap.Frame()
        frame.rig_id = rig_id
        frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id), image_id))
        db.write_frame(frame)
        db.write_keypoints(image_id, keypoints_to_colmap(keypoints[name]))
        ids[name] = image_id
        report.images += 1
        report.keypoints += len(keypoints[name])
    return ids


def _oriented(matches: Any, name0: str, name1: str, ids: dict[str, int]) -> tuple[str, str, Any, np.ndarray]:
    """The pair as COLMAP keeps it, (smaller id, larger id): names, matches (reversed if needed), (K, 2) uint32."""
    from delfi.io.matches import reverse_matches

    if ids[name0] > ids[name1]:
        matches, name0, name1 = reverse_matches(matches), name1, name0
    return name0, name1, matches, np.ascontiguousarray(matches.indices.numpy().reshape(-1, 2), dtype=np.uint32)


def _write_pairs(pycolmap: Any, db: Any, store: Any, ids: dict[str, int], keypoints: dict[str, np.ndarray],
                 features_path: str, report: ExportReport, defer_rejected: bool) -> list[tuple[str, str]]:  # fmt: skip
    """Matches and delfi's geometries of every pair, once per unordered pair (see the module docstring).

    With ``defer_rejected`` the raw matches of pairs delfi rejected are not written (COLMAP's verifier
    would verify them again: it skips only pairs whose geometry has inliers); their stored names are
    returned for `_write_deferred`.
    """
    skipped = dict(report.skipped_images)
    unordered: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name0, name1 in store.pairs():
        unordered.setdefault((min(name0, name1), max(name0, name1)), []).append((name0, name1))
    deferred = []
    for key in sorted(unordered):
        entries = []
        for name0, name1 in unordered[key]:
            try:
                entries.append((name0, name1, store.get(name0, name1)))
            except (KeyError, ValueError, OSError) as exc:
                report.skipped_pairs.append((name0, name1, str(exc)))
        if not entries:
            continue
        (stored0, stored1, matches), duplicates = _choose(entries)
        problem = _pair_problem(stored0, stored1, matches.indices.numpy().reshape(-1, 2), keypoints, features_path,
                                skipped)  # fmt: skip
        if problem is not None:
            report.skipped_pairs.append((stored0, stored1, problem))
            continue
        name0, name1, matches, indices = _oriented(matches, stored0, stored1, ids)
        report.pairs += 1
        report.matches += len(indices)
        report.duplicates += duplicates
        verified = matches.inliers is not None and "status" in matches.meta
        rejected = verified and matches.meta.get("status") != "ok"
        if rejected and defer_rejected:
            deferred.append((stored0, stored1))
        else:
            db.write_matches(ids[name0], ids[name1], indices)
        if not verified:
            report.unverified += 1
            continue
        db.write_two_view_geometry(ids[name0], ids[name1], _two_view_geometry(pycolmap, matches, indices))
        report.delfi_rejected += rejected
        report.delfi_verified += not rejected
    return deferred


def _write_deferred(pycolmap: Any, path: Path, store: Any, ids: dict[str, int],
                    deferred: list[tuple[str, str]]) -> None:  # fmt: skip
    """The raw matches of the pairs `_write_pairs` deferred (read from the store again)."""
    with pycolmap.Database.open(str(path)) as db, pycolmap.DatabaseTransaction(db):
        for stored0, stored1 in deferred:
            name0, name1, _, indices = _oriented(store.get(stored0, stored1), stored0, stored1, ids)
            db.write_matches(ids[name0], ids[name1], indices)


def _verified(geometry: Any, pycolmap: Any) -> bool:
    config = pycolmap.TwoViewGeometryConfiguration
    bad = {int(config.UNDEFINED), int(config.DEGENERATE)}
    return int(geometry.config) not in bad and len(geometry.inlier_matches) >= MIN_NUM_INLIERS


def _colmap_verify(pycolmap: Any, path: Path, options: ExportOptions, report: ExportReport) -> None:
    """COLMAP's verification of the matched pairs without a geometry; counts into ``report``."""
    if not hasattr(pycolmap, "geometric_verification"):
        raise MissingPycolmapError(f"COLMAP's verification of the pairs delfi did not verify needs "
                                   f"pycolmap.geometric_verification (pycolmap 4.x; this is "
                                   f"{getattr(pycolmap, '__version__', '?')}): pip install -U delfi[sfm], "
                                   f"or verify the pairs with delfi (delfi match --geometry ...)")
    with pycolmap.Database.open(str(path)) as db:
        before = set(db.read_two_view_geometries()[0])
    two_view = pycolmap.TwoViewGeometryOptions()
    two_view.min_num_inliers = MIN_NUM_INLIERS
    two_view.ransac.random_seed = int(options.seed)
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = int(options.threads)
    if hasattr(pycolmap, "set_random_seed"):
        pycolmap.set_random_seed(int(options.seed))
    try:
        pycolmap.geometric_verification(str(path), verifier, pycolmap.ExistingMatchedPairingOptions(), two_view)
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(f"COLMAP's geometric verification failed: {str(exc).splitlines()[0][:300]}") from None
    with pycolmap.Database.open(str(path)) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    done = 0
    for pair_id, geometry in zip(pair_ids, geometries):
        if pair_id in before:
            continue
        done += 1
        if _verified(geometry, pycolmap):
            report.colmap_verified += 1
        else:
            report.colmap_rejected += 1
    report.colmap_rejected += max(report.unverified - done, 0)  # pairs COLMAP wrote no geometry for
    report.unverified = 0


def write_database(
    features: str | os.PathLike,
    matches: str | os.PathLike,
    database: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> ExportReport:
    """Write the COLMAP database ``database`` from a feature store and a match store (see the module).

    Args:
        features: a delfi feature store (``.h5``).
        matches: a delfi match store of pairs of its images.
        database: the ``.db`` file to write; an existing one only with ``overwrite`` and only if delfi
            made it (`check_database_output`).
        images: the folder the store names are relative to (EXIF focal lengths); without it, or for a
            missing file, the focal length is 1.2 * max(width, height).
        options: cameras and verification (`ExportOptions`).
        verbose: let COLMAP log at INFO level.

    Returns:
        `ExportReport` (counts, skipped images and pairs with reasons).

    Raises:
        MissingPycolmapError; DatabaseOutputError (see `check_database_output`); ValueError for bad
        cameras (unknown model, wrong size or parameter count, one camera for images of several
        sizes) or an image file that is not the one the features came from; FileNotFoundError /
        ValueError / StoreError for stores that do not exist or are not delfi stores; RuntimeError
        when COLMAP's verification fails.
    """
    from delfi import __version__
    from delfi.io.features import FeatureStore
    from delfi.io.matches import MatchStore

    pycolmap = import_pycolmap()
    options = options or ExportOptions()
    started = time.perf_counter()
    database = Path(database)
    check_database_output(database, overwrite)
    report = ExportReport(database=str(database))
    images_dir = Path(images) if images is not None else None
    with FeatureStore(features) as feature_store:
        keypoints, sizes = _read_keypoints(feature_store, report)
    if images_dir is not None:
        from delfi.io.images import name_to_path

        report.missing_files = [name for name in sizes if not name_to_path(name, images_dir).is_file()]
    with colmap_log_level(verbose):
        groups = _cameras(pycolmap, sizes, images_dir, options)
        _remove_stale_temps(database)
        tmp = database.with_name(f"{database.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with MatchStore(matches) as match_store:
                with pycolmap.Database.open(str(tmp)) as db, pycolmap.DatabaseTransaction(db):
                    ids = _write_images(pycolmap, db, keypoints, groups, report)
                    deferred = _write_pairs(pycolmap, db, match_store, ids, keypoints, str(features), report,
                                            defer_rejected=options.colmap_verify)  # fmt: skip
                if options.colmap_verify and report.unverified:
                    _colmap_verify(pycolmap, tmp, options, report)
                if deferred:
                    _write_deferred(pycolmap, tmp, match_store, ids, deferred)
            _write_marker(tmp, {
                "format": DATABASE_FORMAT, "format_version": str(DATABASE_FORMAT_VERSION), "delfi_version": __version__,
                "pycolmap_version": str(getattr(pycolmap, "__version__", "?")), "features": str(features),
                "matches": str(matches), "options": json.dumps(options.describe(), sort_keys=True),
            })  # fmt: skip
            check_database_output(database, overwrite)  # still ours (or absent) after the minutes it took
            os.replace(tmp, database)
        finally:
            _remove_temp(tmp)
    report.seconds = time.perf_counter() - started
    return report
