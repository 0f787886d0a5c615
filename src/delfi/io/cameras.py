"""Camera intrinsics: COLMAP's camera models, cameras files, and the focal length guessed from EXIF.

A `Camera` holds a COLMAP camera model in COLMAP's own terms: the model name, the image size and the
parameters in COLMAP's order, **principal point in COLMAP's convention** (the top-left pixel's corner
is (0, 0), so a centred principal point is ``(w / 2, h / 2)``). `Camera.K` gives the (3, 3) pinhole
intrinsics in delfi's convention (the top-left pixel's centre is (0, 0): ``c_delfi = c_colmap - 0.5``);
`Camera.normalise` maps delfi pixel coordinates to normalised image coordinates ``K^-1 (x, y, 1)``
with the lens distortion removed.

Models: ``SIMPLE_PINHOLE`` (f, cx, cy), ``PINHOLE`` (fx, fy, cx, cy), ``SIMPLE_RADIAL`` (f, cx, cy, k),
``RADIAL`` (f, cx, cy, k1, k2), ``OPENCV`` (fx, fy, cx, cy, k1, k2, p1, p2).

Cameras files (`read_cameras`), one camera per line, whitespace separated, ``#`` comments:

* ``name MODEL WIDTH HEIGHT PARAMS...``: hloc's ``queries_with_intrinsics.txt`` format, one line per
  image (``*`` as the name: every image not named elsewhere);
* COLMAP's ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``, recognised by its header
  comment ``# Camera list``) holding ONE camera: it applies to every image (key ``*``).

EXIF (`camera_from_exif`): COLMAP's rule (as pycolmap 4.2's ``infer_camera_from_image``, tested
against it): the focal length in pixels from the 35 mm equivalent focal length, scaled by the image
diagonal over the 43.27 mm diagonal of a 36 x 24 mm frame (``f35 / 43.27 * hypot(w, h)``); without it,
COLMAP's default guess ``1.2 * max(w, h)`` (``Camera.from_exif = False``; COLMAP also looks the focal
length in mm up in a database of sensor widths, which delfi does not ship). The principal point is the
image centre, the model ``SIMPLE_RADIAL`` with ``k = 0``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["CAMERA_MODELS", "Camera", "DEFAULT_FOCAL_FACTOR", "camera_from_exif", "default_camera",
           "parse_intrinsics", "read_cameras", "cameras_for"]

CAMERA_MODELS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}
"""COLMAP camera models delfi reads, with their parameters in COLMAP's order."""

DEFAULT_FOCAL_FACTOR = 1.2
"""COLMAP's focal length guess without EXIF: ``1.2 * max(width, height)`` pixels."""

_UNDISTORT_ITERATIONS = 20


@dataclass(frozen=True)
class Camera:
    """One COLMAP camera (model, size, parameters in COLMAP's order and principal-point convention).

    Attributes:
        model: one of `CAMERA_MODELS`.
        width, height: image size in pixels.
        params: the model's parameters (COLMAP order; principal point with the pixel-corner origin).
        from_exif: False when the focal length is COLMAP's default guess (no EXIF, no file).
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]
    from_exif: bool = True

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"camera model must be one of {', '.join(CAMERA_MODELS)}, got {self.model!r}")
        expected = len(CAMERA_MODELS[self.model])
        params = tuple(float(p) for p in self.params)
        if len(params) != expected:
            raise ValueError(f"camera model {self.model} takes {expected} parameters "
                             f"({', '.join(CAMERA_MODELS[self.model])}), got {len(params)}")
        if not all(math.isfinite(p) for p in params):
            raise ValueError(f"camera parameters must be finite, got {params}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera size must be positive, got {self.width} x {self.height}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        fx, fy = self.focal
        if not (fx > 0 and fy > 0):
            raise ValueError(f"focal length must be > 0, got {fx}, {fy}")

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) in pixels."""
        p = self.params
        return (p[0], p[1]) if self.model in ("PINHOLE", "OPENCV") else (p[0], p[0])

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in COLMAP's convention (pixel-corner origin)."""
        p = self.params
        return (p[2], p[3]) if self.model in ("PINHOLE", "OPENCV") else (p[1], p[2])

    @property
    def distortion(self) -> tuple[float, float, float, float]:
        """(k1, k2, p1, p2): radial and tangential distortion (zeros for the pinhole models)."""
        p = self.params
        if self.model == "SIMPLE_RADIAL":
            return (p[3], 0.0, 0.0, 0.0)
        if self.model == "RADIAL":
            return (p[3], p[4], 0.0, 0.0)
        if self.model == "OPENCV":
            return (p[4], p[5], p[6], p[7])
        return (0.0, 0.0, 0.0, 0.0)

    def K(self) -> np.ndarray:
        """(3, 3) float64 pinhole intrinsics in delfi's pixel convention (principal point - 0.5)."""
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> "Camera":
        """A ``PINHOLE`` camera from (3, 3) intrinsics in delfi's convention (no skew)."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics must be (3, 3), got {K.shape}")
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or np.abs(K[2] - [0, 0, 1]).max() > 1e-9:
            raise ValueError(f"intrinsics must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
        return cls("PINHOLE", width, height, (K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))

    def normalise(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) delfi pixel coordinates -> (N, 2) undistorted normalised coordinates ``K^-1 x``.

        Distortion (COLMAP's radial / OpenCV model) is removed by fixed-point iteration, as COLMAP does.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        distorted = np.stack([(pts[:, 0] + 0.5 - cx) / fx, (pts[:, 1] + 0.5 - cy) / fy], axis=1)
        k1, k2, p1, p2 = self.distortion
        if not any((k1, k2, p1, p2)):
            return distorted
        u = distorted.copy()
        for _ in range(_UNDISTORT_ITERATIONS):
            x, y = u[:, 0], u[:, 1]
            r2 = x * x + y * y
            radial = k1 * r2 + k2 * r2 * r2
            dx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            dy = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
            u = distorted - np.stack([dx, dy], axis=1)
        return u

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera for the image resized to ``width x height`` (focal and centre scaled)."""
        sx, sy = width / self.width, height / self.height
        p = list(self.params)
        if self.model in ("PINHOLE", "OPENCV"):
            p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sy, p[2] * sx, p[3] * sy
        else:
            if abs(sx - sy) > 1e-3 * max(sx, sy):
                raise ValueError(f"{self.model} has one focal length: cannot scale by {sx:.4g} x {sy:.4g}")
            p[0], p[1], p[2] = p[0] * sx, p[1] * sx, p[2] * sy
        return Camera(self.model, width, height, tuple(p), self.from_exif)

    def to_line(self, name: str) -> str:
        """This camera as a line of a cameras file (``name MODEL W H params``)."""
        return " ".join([name, self.model, str(self.width), str(self.height), *(repr(p) for p in self.params)])


def default_camera(width: int, height: int, focal: float | None = None, *, from_exif: bool = False) -> Camera:
    """COLMAP's default camera: ``SIMPLE_RADIAL``, focal ``1.2 max(w, h)`` unless given, centred, k = 0."""
    f = DEFAULT_FOCAL_FACTOR * max(width, height) if focal is None else float(focal)
    return Camera("SIMPLE_RADIAL", width, height, (f, width / 2.0, height / 2.0, 0.0), from_exif)


_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FOCAL_35MM = 0xA405
_FULL_FRAME_DIAGONAL_MM = 43.27  # the diagonal of 36 x 24 mm, as COLMAP rounds it


def _exif_focal_pixels(exif: Mapping[int, Any], width: int, height: int) -> float | None:
    """Focal length in pixels from the EXIF 35 mm equivalent focal length, or None."""
    try:
        f35 = float(exif[_FOCAL_35MM])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not (math.isfinite(f35) and f35 > 0):
        return None
    return f35 / _FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)


def camera_from_exif(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> Camera:
    """The camera of an image file guessed as COLMAP does (see the module docstring).

    Args:
        path: the image file (its EXIF is read; unreadable EXIF counts as none).
        width, height: the image's displayed size (after EXIF orientation); read from the file if None.
    """
    from PIL import Image

    exif: dict[int, Any] = {}
    with Image.open(path) as img:
        if width is None or height is None:
            width, height = img.size
            if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # transposed or rotated by 90 degrees
                width, height = height, width
        try:
            raw = img.getexif()
            exif = {**dict(raw), **dict(raw.get_ifd(_EXIF_IFD))}
        except Exception:  # noqa: BLE001 - damaged EXIF blocks raise anything; they count as no EXIF
            exif = {}
    focal = _exif_focal_pixels(exif, int(width), int(height))
    return default_camera(int(width), int(height), focal, from_exif=focal is not None)


def _parse_camera(tokens: list[str], where: str) -> Camera:
    if len(tokens) < 4:
        raise ValueError(f"{where}: expected 'name MODEL WIDTH HEIGHT PARAMS...', got {' '.join(tokens)!r}")
    model = tokens[1].upper()
    try:
        width, height = int(tokens[2]), int(tokens[3])
        params = tuple(float(v) for v in tokens[4:])
    except ValueError:
        raise ValueError(f"{where}: width, height and parameters must be numbers, got {' '.join(tokens[2:])!r}") \
            from None
    try:
        return Camera(model, width, height, params)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_cameras(path: str | os.PathLike) -> dict[str, Camera]:
    """Cameras of a cameras file (see the module docstring): image name (or ``"*"``) -> `Camera`.

    Raises:
        OSError: the file cannot be read. ValueError: a line that is not a camera (naming the file and
        the line), a name given twice, or a COLMAP ``cameras.txt`` with several cameras (which image
        has which camera is in COLMAP's images file, not here).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    colmap_format = "# camera list" in text[:500].lower()
    cameras: dict[str, Camera] = {}
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        name = tokens[0]
        if name in cameras:
            raise ValueError(f"{path}, line {number}: camera {name!r} given twice")
        cameras[name] = _parse_camera(tokens, f"{path}, line {number}")
    if colmap_format:
        if len(cameras) != 1:
            raise ValueError(f"{path}: a COLMAP cameras.txt with {len(cameras)} cameras does not say which image "
                             f"has which; give one camera, or lines 'image_name MODEL WIDTH HEIGHT PARAMS...'")
        return {"*": next(iter(cameras.values()))}
    if not cameras:
        raise ValueError(f"{path}: no camera in the file")
    return cameras


def parse_intrinsics(value: str) -> dict[str, Camera] | tuple[float, ...] | None:
    """A command-line ``--intrinsics`` value: ``exif`` (None), a cameras file, or numbers.

    Numbers: ``f`` (one focal length, centred principal point) or ``fx,fy,cx,cy`` in delfi's pixel
    convention (the centre of the top-left pixel is (0, 0), as OpenCV's calibration gives them).

    Returns:
        None for ``exif``, the file's cameras, or the numbers (applied per image by `cameras_for`).
    Raises:
        ValueError: neither a file nor 1 / 4 positive finite numbers; the file's own errors.
    """
    text = value.strip()
    if text.lower() == "exif":
        return None
    if Path(text).expanduser().is_file():
        return read_cameras(Path(text).expanduser())
    try:
        numbers = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"--intrinsics {value!r}: not a file, 'exif', 'f' or 'fx,fy,cx,cy'") from None
    if len(numbers) not in (1, 4) or not all(math.isfinite(v) for v in numbers) or min(numbers[:2]) <= 0:
        raise ValueError(f"--intrinsics {value!r}: give one focal length or fx,fy,cx,cy (positive focal lengths)")
    return numbers


def cameras_for(spec: dict[str, Camera] | tuple[float, ...] | None, name: str, width: int, height: int,
                image_path: str | os.PathLike | None = None) -> Camera:
    """The camera of image ``name`` (``width x height``) under a parsed ``--intrinsics`` value.

    A file's camera is looked up by the full name, then by the file name, then ``"*"``; one whose size
    differs from the image's is scaled to it (a camera given for the full-size photo applies to a
    resized copy). Numbers become a ``PINHOLE`` camera. None: EXIF of ``image_path``, else COLMAP's default.

    Raises:
        KeyError: a cameras file without this image (and no ``"*"``).
    """
    if isinstance(spec, dict):
        camera = spec.get(name) or spec.get(Path(name).name) or spec.get("*")
        if camera is None:
            raise KeyError(f"no camera for image {name!r} in the cameras file (and no '*' line)")
        if (camera.width, camera.height) != (width, height):
            camera = camera.scaled(width, height)
        return camera
    if isinstance(spec, tuple):
        if len(spec) == 1:
            return Camera("SIMPLE_PINHOLE", width, height, (spec[0], width / 2.0, height / 2.0))
        fx, fy, cx, cy = spec
        return Camera("PINHOLE", width, height, (fx, fy, cx + 0.5, cy + 0.5))
    if image_path is not None:
        try:
            return camera_from_exif(image_path, width, height)
        except OSError:
            pass
    return default_camera(width, height)
