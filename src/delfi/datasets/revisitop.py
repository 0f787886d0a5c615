"""Reader for the revisited Oxford / Paris ground truth (Radenovic et al., CVPR 2018).

The official files ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` are pickled dicts::

    {"imlist": [str, ...],          # database image names (no extension)
     "qimlist": [str, ...],         # query image names
     "gnd": [{"bbx": [x0, y0, x1, y1],
              "easy": [int, ...], "hard": [int, ...], "junk": [int, ...]}, ...]}

with one ``gnd`` entry per query and indices into ``imlist``. Images live at
``root/<dataset>/jpg/<name>.jpg``.

Pickles can run arbitrary code, so they are read with a restricted unpickler that only lets
numpy array / scalar / dtype reconstruction (and ``_codecs.encode`` / ``bytes``, which protocol-2
pickles use for raw bytes) through (the real files reference no globals at all:
plain lists, dicts, strings, ints and floats).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

__all__ = ["RevisitOPError", "load_ground_truth", "image_path", "query_bbox", "PROTOCOL_FIELDS"]

PROTOCOL_FIELDS = ("easy", "hard", "junk")

_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # protocol-5 pickles of contiguous arrays (numpy >= 1.16)
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # protocol-2 pickles store array bytes as latin-1 text re-encoded with this builtin
        ("_codecs", "encode"),
        ("builtins", "bytes"),
        ("__builtin__", "bytes"),
    }
)


class RevisitOPError(ValueError):
    """A malformed or unsafe revisitop ground-truth file; the message names the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RevisitOPError(
            f"{self._source}: refusing to unpickle global {module}.{name} "
            "(only numpy array/scalar/dtype reconstruction is allowed)"
        )


def _index_list(value, path: str, where: str, n_db: int) -> list[int]:
    arr = np.asarray(value)
    if arr.size == 0:
        return []
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise RevisitOPError(f"{path}: {where} must be a flat list of integer indices")
    out = [int(v) for v in arr]
    if min(out) < 0 or max(out) >= n_db:
        raise RevisitOPError(f"{path}: {where} has an index outside imlist (0..{n_db - 1})")
    return out


def load_ground_truth(path) -> dict:
    """Load and validate a revisitop ground-truth pickle.

    Returns ``{"imlist": list[str], "qimlist": list[str], "gnd": list[dict]}`` where every gnd
    entry has ``bbx`` (tuple of 4 floats) and ``easy``/``hard``/``junk`` (lists of int).
    """
    path = Path(path)
    src = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{src}: revisitop ground-truth file not found") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), src).load()
    except RevisitOPError:
        raise
    except Exception as exc:  # corrupt / truncated pickle
        raise RevisitOPError(f"{src}: cannot unpickle ground truth ({exc})") from exc

    if not isinstance(obj, dict):
        raise RevisitOPError(f"{src}: expected a dict, got {type(obj).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in obj]
    if missing:
        raise RevisitOPError(f"{src}: missing keys {missing}")
    imlist, qimlist, gnd = obj["imlist"], obj["qimlist"], obj["gnd"]
    for key, lst in (("imlist", imlist), ("qimlist", qimlist)):
        if not isinstance(lst, (list, tuple)) or not all(isinstance(s, str) for s in lst):
            raise RevisitOPError(f"{src}: {key} must be a list of image names")
    if not isinstance(gnd, (list, tuple)):
        raise RevisitOPError(f"{src}: gnd must be a list")
    if len(gnd) != len(qimlist):
        raise RevisitOPError(f"{src}: gnd has {len(gnd)} entries but qimlist has {len(qimlist)}")

    n_db = len(imlist)
    out_gnd = []
    for i, q in enumerate(gnd):
        if not isinstance(q, dict):
            raise RevisitOPError(f"{src}: gnd[{i}] must be a dict")
        for key in ("bbx",) + PROTOCOL_FIELDS:
            if key not in q:
                raise RevisitOPError(f"{src}: gnd[{i}] lacks {key!r}")
        bbx = np.asarray(q["bbx"], dtype=float).ravel() if q["bbx"] is not None else np.zeros(0)
        if bbx.shape != (4,) or not np.all(np.isfinite(bbx)):
            raise RevisitOPError(f"{src}: gnd[{i}]['bbx'] must be 4 finite numbers")
        entry = {"bbx": tuple(float(v) for v in bbx)}
        for key in PROTOCOL_FIELDS:
            entry[key] = _index_list(q[key], src, f"gnd[{i}][{key!r}]", n_db)
        out_gnd.append(entry)
    return {"imlist": list(imlist), "qimlist": list(qimlist), "gnd": out_gnd}


def image_path(root, dataset: str, name: str) -> Path:
    """``root/<dataset>/jpg/<name>.jpg`` (e.g. dataset ``roxford5k``)."""
    return Path(root) / dataset / "jpg" / f"{name}.jpg"


def query_bbox(gnd, i: int) -> tuple[float, float, float, float]:
    """The query crop ``(x0, y0, x1, y1)`` of query ``i``; ``gnd`` is the list or the loaded dict."""
    if isinstance(gnd, dict):
        gnd = gnd["gnd"]
    x0, y0, x1, y1 = (float(v) for v in gnd[i]["bbx"])
    return (x0, y0, x1, y1)
