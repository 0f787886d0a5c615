"""A crash-safe HDF5 store of per-image `Features`.

File layout (``format = "delfi-features"``, ``format_version = 1``): one group per image, keyed by the
image's name (a posix relative path; ``"sub/a.jpg"`` becomes nested groups) holding the float32
datasets ``keypoints`` (N, 2), ``scores`` (N,), ``descriptors`` (N, D) (float16 if the store was
created with ``descriptor_dtype="float16"``) and the optional ``scales`` (N,) and
``global_descriptor`` (G,); group attrs ``image_size`` (w, h), ``token`` (the journal id it came
from) and ``complete = True``, written last. File attrs: ``format``, ``format_version``,
``delfi_version``, ``coordinate_convention``, ``descriptor_dtype`` and the caller's attrs (``model``,
``weights_sha256``, ``config`` as a JSON string, other str / number / bool values).

Entry names: a posix relative path (``"sub/a.jpg"``), non-empty, valid UTF-8 (no lone surrogates), no NUL
character, no empty, ``.`` or ``..`` component and no component named like a dataset (``keypoints``,
``scores``, ``descriptors``, ``scales``, ``global_descriptor``). `FeatureStore.put` refuses other
names; journal files and committed groups with other names are skipped with a warning.

Writes go through the journal of `delfi.io.journal` (see there): the committed file is never modified
in place, so a killed writer leaves a readable store and resumes where it stopped; several writers
(e.g. two ``delfi extract`` runs on different images) may write one store at once, and ``mode="w"``
is refused (`StoreBusyError`) while another writer is live.

Validation: `FeatureStore.put` refuses non-finite keypoints, scores, descriptors, scales or global
descriptors. `FeatureStore.get` raises `EntryError` (a ValueError, ``"<store>: entry '<name>':
<reason>"``) for an entry that is broken, e.g. written by another tool: a missing dataset, mis-shaped
arrays (``descriptors shape (128, 300) does not match 300 keypoints``), non-finite values; a missing
entry is a KeyError. A damaged file raises `StoreError` naming it.

``Features.meta`` is not stored.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from delfi.io.journal import (EntryError, JournaledH5Store, StoreBusyError, StoreError, StoreMismatchError,
                              array_problem, finite_problem)
from delfi.types import COORDINATE_CONVENTION, Features

__all__ = ["FeatureStore", "StoreMismatchError", "StoreBusyError", "StoreError", "EntryError", "FORMAT",
           "FORMAT_VERSION", "CHECKED_ATTRS"]

FORMAT = "delfi-features"
FORMAT_VERSION = 1
CHECKED_ATTRS = ("model", "weights_sha256", "pca_sha256", "config")
"""Attributes that must agree when resuming a store: other values would mix incompatible features."""

_ARRAYS = ("keypoints", "scores", "descriptors", "scales", "global_descriptor")
_BUILTIN_ATTRS = ("format", "format_version", "delfi_version", "coordinate_convention", "descriptor_dtype")
_DTYPES = {"float32": np.float32, "float16": np.float16}


def _check_name(name: str) -> str:
    """Return ``name`` if it is a valid entry name (see the module docstring), else raise ValueError."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if any(p in ("", ".", "..", *_ARRAYS) for p in parts):
        raise ValueError(
            f"entry name must be a non-empty relative posix path without empty, '.' or '..' parts "
            f"or the reserved components {_ARRAYS}: {name!r}"
        )
    if "\0" in name:
        raise ValueError(f"entry name must not contain a NUL character: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"entry name must be valid UTF-8 text: {name!r}") from None
    return name


def _features_problem(record: Any) -> str | None:
    """Why a feature record (arrays or journal headers) is not a valid entry, or None."""
    for key in ("keypoints", "scores", "descriptors", "image_size"):
        if key not in record:
            return f"missing dataset {key}" if key != "image_size" else "missing attribute image_size"
    problem = array_problem(record, "keypoints", "fiu", (None, 2))
    if problem:
        return problem
    n = record["keypoints"].shape[0]
    matches = f"does not match {n} keypoints"
    problem = (array_problem(record, "scores", "fiu", (n,), matches)
               or array_problem(record, "descriptors", "fiu", (n, None), matches)
               or ("scales" in record and array_problem(record, "scales", "fiu", (n,), matches))
               or ("global_descriptor" in record and array_problem(record, "global_descriptor", "fiu", (None,)))
               or array_problem(record, "image_size", "iu", (2,), "is not (width, height)"))
    if problem:
        return problem
    size = record["image_size"]
    if isinstance(size, np.ndarray) and (size < 0).any():
        return f"image_size {tuple(size.tolist())} is negative"
    return finite_problem(record, _ARRAYS)


class FeatureStore(JournaledH5Store):
    """Per-image `Features` in one HDF5 file, written through an atomic journal.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` read only; ``"a"`` create or resume (with ``attrs`` given, ``model``,
            ``weights_sha256`` and ``config`` must equal the stored ones, else `StoreMismatchError`);
            ``"w"`` start afresh (the file and any journal are removed).
        attrs: file attributes to record (see the module docstring).
        descriptor_dtype: ``"float32"`` or ``"float16"`` (halves the file); used when the store is
            created, a resumed store keeps its own. float16 descriptors are read back as float32.
        commit_every: merge the journal into the file once this many entries are pending (None: only
            at `close`). Each commit copies the whole file, so small values cost O(entries^2) I/O;
            None keeps one journal file per entry until the end. Both are equally crash-safe.

    Journaled entries are visible to `get` and `names` before the commit, and to readers (the journal
    wins over the file). A reader's list of names is a snapshot taken when it opens.
    """

    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    LABEL = "feature"
    DATASETS = _ARRAYS
    BUILTIN_ATTRS = _BUILTIN_ATTRS
    CHECKED_ATTRS = CHECKED_ATTRS
    FILE_CONFIG_KEYS = ("weights", "pca")  # checked by content: weights_sha256, pca_sha256

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, attrs: dict | None = None,
                 descriptor_dtype: str = "float32", commit_every: int | None = None) -> None:
        if descriptor_dtype not in _DTYPES:
            raise ValueError(f"descriptor_dtype must be one of {sorted(_DTYPES)}, got {descriptor_dtype!r}")
        self._descriptor_dtype = descriptor_dtype
        super().__init__(path, mode, attrs=attrs, commit_every=commit_every)

    def _builtin_attrs(self) -> dict[str, Any]:
        return {**super()._builtin_attrs(), "coordinate_convention": COORDINATE_CONVENTION,
                "descriptor_dtype": self._descriptor_dtype}

    def names(self) -> list[str]:
        """All entry names (committed and journaled), sorted."""
        return sorted(self._paths())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._has(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _check_path(self, path: str) -> str:
        return _check_name(path)

    def _record_problem(self, record: Any) -> str | None:
        return _features_problem(record)

    def get(self, name: str, device: Any = None) -> Features:
        """The features stored under ``name`` (float32 tensors, on ``device`` if given).

        Raises KeyError if there is no such entry, `EntryError` (a ValueError naming the store, the
        entry and the reason) if it is broken.
        """
        record = self._record(name)
        try:
            arrays = {k: np.asarray(record[k], dtype=np.float32) for k in _ARRAYS if k in record}
            size = tuple(np.asarray(record["image_size"]).tolist())
            features = Features.from_numpy(arrays, image_size=size)
        except (ValueError, TypeError) as exc:  # the checks above should have caught it; still its failure
            raise EntryError(self.path, name, str(exc)) from None
        return features.to(device) if device is not None else features

    __getitem__ = get

    def put(self, name: str, features: Features) -> None:
        """Journal ``features`` under ``name`` (replacing an entry of that name); atomic.

        ValueError for an invalid name (see the module docstring) or non-finite values.
        """
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"feature store {self.path} is open read-only")
        name = _check_name(name)
        arrays = features.numpy()
        data = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in _ARRAYS if k in arrays}
        dtype = _DTYPES[self._attrs.get("descriptor_dtype", "float32")]
        with np.errstate(over="ignore"):  # values too large for float16 become inf: refused below
            data["descriptors"] = data["descriptors"].astype(dtype, copy=False)
        data["image_size"] = np.asarray(features.image_size, dtype=np.int64)
        self._put_record(name, data)
