"""A crash-safe HDF5 store of `Matches` between image pairs.

File layout (``format = "delfi-matches"``, ``format_version = 1``): one group per ORDERED pair
``(name0, name1)`` at the path ``"<quote(name0)>/<quote(name1)>"``, where ``quote`` is
``urllib.parse.quote(name, safe="")``: every ``/``, ``%``, space and non-ASCII character of a name is
percent-encoded, so the path has exactly two components and maps back to the names without ambiguity
(``urllib.parse.unquote``). The group holds the datasets ``indices`` (K, 2) int64, ``scores`` (K,)
float32 and the optional ``inliers`` (K,) bool and ``model`` (3, 3) float64; group attrs ``name0`` and
``name1`` (the original names, for other readers), ``meta`` (a JSON string), ``kind`` (only when
set), ``token`` and ``complete = True``, written last. File attrs: ``format``, ``format_version``,
``delfi_version`` and the caller's attrs (``model``, ``weights_sha256``, ``config`` as a JSON string,
...; the first three are checked when a store is resumed).

Image names: any non-empty ``str`` except ``.`` and ``..``; the group path of a pair must be exactly
``pair_path(name0, name1)``: journal files and committed groups with other paths (more or fewer than
two components, characters that ``quote`` would have encoded) are skipped with a warning.

Writes go through the journal of `delfi.io.journal` (see there): the committed file is never modified
in place, so a killed writer leaves a readable store and resumes where it stopped; several writers may
write one store at once, and ``mode="w"`` is refused (`StoreBusyError`) while another writer is live.

Validation: `MatchStore.put` refuses non-finite scores or model values. `MatchStore.get` raises
`EntryError` (a ValueError, ``"<store>: entry ('<name0>', '<name1>'): <reason>"``) for a pair that is
broken, e.g. written by another tool: a missing dataset, mis-shaped arrays, negative indices,
non-finite values, a ``meta`` that is not a JSON object, an unknown ``kind``; a missing pair is a
KeyError. A damaged file raises `StoreError` naming it.

``Matches.meta`` must be JSON-serialisable (numpy scalars and arrays are converted to numbers and
lists); it is read back as decoded JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterator
from urllib.parse import quote, unquote

import numpy as np
import torch

from delfi.io.journal import (EntryError, JournaledH5Store, StoreBusyError, StoreError, StoreMismatchError,
                              array_problem, finite_problem, is_text)
from delfi.types import GEOMETRY_KINDS, Matches

__all__ = ["MatchStore", "StoreMismatchError", "StoreBusyError", "StoreError", "EntryError", "FORMAT",
           "FORMAT_VERSION", "pair_path", "reverse_matches"]

FORMAT = "delfi-matches"
FORMAT_VERSION = 1
_DATASETS = ("indices", "scores", "inliers", "model")


def _quote(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"image names must be str, got {type(name).__name__}")
    if name in ("", ".", ".."):  # not valid names of an HDF5 group
        raise ValueError(f"image name must not be empty, '.' or '..': {name!r}")
    return quote(name, safe="")


def pair_path(name0: str, name1: str) -> str:
    """The group path of the pair: ``"<quote(name0)>/<quote(name1)>"`` (reversible, collision-free)."""
    return f"{_quote(name0)}/{_quote(name1)}"


def _names(path: str) -> tuple[str, str]:
    q0, q1 = path.split("/")
    return unquote(q0), unquote(q1)


def _check_pair_path(path: str) -> str:
    """Return ``path`` if it is the group path `pair_path` makes for some pair, else raise ValueError."""
    parts = path.split("/") if isinstance(path, str) else []
    if len(parts) != 2:
        raise ValueError(f"a pair's group path has two components, got {path!r}")
    names = _names(path)
    if names[0] in ("", ".", "..") or names[1] in ("", ".", "..") or pair_path(*names) != path:
        raise ValueError(f"{path!r} is not the group path of a pair (see delfi.io.matches.pair_path)")
    return path


def _matches_problem(record: Any) -> str | None:
    """Why a match record (arrays or journal headers) is not a valid entry, or None."""
    for key in ("indices", "scores"):
        if key not in record:
            return f"missing dataset {key}"
    indices = record["indices"]
    if hasattr(indices, "shape") and int(np.prod(indices.shape)) == 0 and hasattr(indices, "dtype") \
            and indices.dtype.kind in "iu":
        k = 0
    else:
        problem = array_problem(record, "indices", "iu", (None, 2))
        if problem:
            return problem
        k = indices.shape[0]
    matches = f"does not match {k} matches"
    problem = (array_problem(record, "scores", "fiu", (k,), matches)
               or ("inliers" in record and array_problem(record, "inliers", "biu", (k,), matches))
               or ("model" in record and array_problem(record, "model", "fiu", (3, 3))))
    if problem:
        return problem
    for key in ("kind", "meta", "name0", "name1"):
        if key in record and not is_text(record[key]):
            return f"{key} is not a string"
    kind = record.get("kind")
    if isinstance(kind, str) and kind not in GEOMETRY_KINDS:
        return f"kind {kind!r} is not one of {GEOMETRY_KINDS}"
    meta = record.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError as exc:
            return f"meta is not valid JSON ({exc})"
        if not isinstance(meta, dict):
            return f"meta must be a JSON object, got {type(meta).__name__}"
    if isinstance(indices, np.ndarray) and indices.size and indices.min() < 0:
        return "negative indices"
    return finite_problem(record, ("scores", "model"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"Matches.meta value of type {type(value).__name__} is not JSON-serialisable")


def reverse_matches(matches: Matches) -> Matches:
    """The matches of the swapped pair ``(name1, name0)``.

    ``indices`` columns are swapped; scores, inliers and meta are kept. The model maps image 0 to image
    1 (``x1 ~ H x0`` for ``"homography"`` / ``"affine"``, ``x1^T F x0 = 0`` for ``"fundamental"``), so
    the reversed model is the inverse for homography and affine (a homography normalised so that
    ``H[2, 2] = 1`` when that entry is not 0; an affine model ``[A t; 0 0 1]`` becomes
    ``[A^-1, -A^-1 t; 0 0 1]``, its stored last row ignored) and the transpose for a fundamental
    matrix. A model without a kind cannot be reversed
    (ValueError), nor can a singular homography / affine model.
    """
    model = matches.model
    if model is not None:
        m = model.detach().cpu().numpy().astype(np.float64) if isinstance(model, torch.Tensor) \
            else np.asarray(model, dtype=np.float64)
        if matches.kind == "fundamental":
            m = m.T.copy()
        elif matches.kind in ("homography", "affine"):
            try:
                if matches.kind == "affine":  # [A t; 0 0 1] -> [A^-1  -A^-1 t; 0 0 1]
                    inv = np.linalg.inv(m[:2, :2])
                    m = np.array([[*inv[0], -inv[0] @ m[:2, 2]], [*inv[1], -inv[1] @ m[:2, 2]], [0.0, 0.0, 1.0]])
                else:
                    m = np.linalg.inv(m)
            except np.linalg.LinAlgError as exc:
                raise ValueError(f"cannot reverse a singular {matches.kind} model") from exc
            if matches.kind == "homography" and abs(m[2, 2]) > 1e-12:
                m = m / m[2, 2]
        else:
            raise ValueError(f"cannot reverse a model of unknown kind {matches.kind!r}")
        model = torch.from_numpy(m)
    return Matches(indices=matches.indices.flip(1).contiguous(), scores=matches.scores, inliers=matches.inliers,
                   model=model, kind=matches.kind, meta=dict(matches.meta))


class MatchStore(JournaledH5Store):
    """`Matches` of image pairs in one HDF5 file, written through an atomic journal.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` read only; ``"a"`` create or resume (with ``attrs`` given, ``model``,
            ``weights_sha256`` and ``config`` must equal the stored ones, else `StoreMismatchError`);
            ``"w"`` start afresh (the file and any journal are removed).
        attrs: file attributes to record (see the module docstring).
        commit_every: merge the journal into the file once this many pairs are pending (None: only at
            `close`); see `delfi.io.journal.JournaledH5Store`.

    Keys are ordered pairs: ``(a, b)`` and ``(b, a)`` are different entries (see ``allow_reversed``
    of `get`). Journaled pairs are visible before the commit, also to readers.
    """

    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    LABEL = "match"
    DATASETS = _DATASETS

    def _check_path(self, path: str) -> str:
        return _check_pair_path(path)

    def _entry_label(self, path: str) -> Any:
        try:
            return _names(path)
        except ValueError:
            return path

    def _record_problem(self, record: Any) -> str | None:
        return _matches_problem(record)

    def pairs(self) -> list[tuple[str, str]]:
        """All stored pairs (committed and journaled), sorted."""
        return sorted(_names(p) for p in self._paths())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs())

    def __contains__(self, pair: object) -> bool:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(n, str) for n in pair)):
            return False
        try:
            return self._has(pair_path(*pair))
        except ValueError:
            return False

    def get(self, name0: str, name1: str, *, allow_reversed: bool = False, device: Any = None) -> Matches:
        """The matches of ``(name0, name1)``: indices int64, scores float32, inliers bool, model float64.

        KeyError if the pair is not stored, `EntryError` (a ValueError) if it is broken.

        With ``allow_reversed``, a pair stored only as ``(name1, name0)`` is returned reversed by
        `reverse_matches` (indices columns swapped, model inverted or transposed). KeyError if neither
        is stored.
        """
        path = pair_path(name0, name1)
        if allow_reversed and not self._has(path) and self._has(pair_path(name1, name0)):
            matches = reverse_matches(self._matches(pair_path(name1, name0)))
        else:
            try:
                matches = self._matches(path)
            except KeyError:
                raise KeyError(f"no matches for the pair ({name0!r}, {name1!r}) in match store {self.path}"
                               f"{' (nor for the reversed pair)' if allow_reversed else ''}") from None
        return matches.to(device) if device is not None else matches

    def __getitem__(self, pair: tuple[str, str]) -> Matches:
        return self.get(*pair)

    def _matches(self, path: str) -> Matches:
        record = self._record(path)
        kind = record.get("kind")
        try:
            return Matches(
                indices=torch.from_numpy(np.asarray(record["indices"], dtype=np.int64).reshape(-1, 2)),
                scores=torch.from_numpy(np.asarray(record["scores"], dtype=np.float32)),
                inliers=torch.from_numpy(np.asarray(record["inliers"], dtype=bool)) if "inliers" in record else None,
                model=torch.from_numpy(np.asarray(record["model"], dtype=np.float64)) if "model" in record else None,
                kind=str(kind) if kind is not None else None,
                meta=json.loads(str(record.get("meta", "{}"))),
            )
        except (ValueError, TypeError) as exc:  # the checks should have caught it; still this pair's failure
            raise EntryError(self.path, self._entry_label(path), str(exc)) from None

    def put(self, name0: str, name1: str, matches: Matches) -> None:
        """Journal ``matches`` of the pair ``(name0, name1)`` (replacing a stored one); atomic."""
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"match store {self.path} is open read-only")
        path = pair_path(name0, name1)
        matches.validate()
        arrays = matches.numpy()
        record: dict[str, np.ndarray] = {
            "indices": np.ascontiguousarray(arrays["indices"], dtype=np.int64).reshape(-1, 2),
            "scores": np.ascontiguousarray(arrays["scores"], dtype=np.float32),
        }
        if "inliers" in arrays:
            record["inliers"] = np.ascontiguousarray(arrays["inliers"], dtype=bool)
        if "model" in arrays:
            record["model"] = np.ascontiguousarray(arrays["model"], dtype=np.float64)
        record["name0"], record["name1"] = np.array(name0), np.array(name1)
        record["meta"] = np.array(json.dumps(matches.meta, sort_keys=True, default=_json_default))
        if matches.kind is not None:
            record["kind"] = np.array(matches.kind)
        self._put_record(path, record)
