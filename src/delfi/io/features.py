"""A crash-safe HDF5 store of per-image `Features`.

File layout (``format = "delfi-features"``, ``format_version = 1``): one group per image, keyed by the
image's name (a posix relative path; ``"sub/a.jpg"`` becomes nested groups) holding the float32
datasets ``keypoints`` (N, 2), ``scores`` (N,), ``descriptors`` (N, D) (float16 if the store was
created with ``descriptor_dtype="float16"``) and the optional ``scales`` (N,) and
``global_descriptor`` (G,); group attrs ``image_size`` (w, h), ``token`` (the journal id it came
from) and ``complete = True``, written last. File attrs: ``format``, ``format_version``,
``delfi_version``, ``coordinate_convention``, ``descriptor_dtype`` and the caller's attrs (``model``,
``weights_sha256``, ``config`` as a JSON string, other str / number / bool values).

Crash safety: the committed ``.h5`` is never modified in place (an HDF5 file whose writer is killed can
be left unreadable). `FeatureStore.put` writes one ``.npz`` per entry into ``<path>.journal/`` (temp
name, then an atomic `os.replace`), so a journal file that exists is complete. `FeatureStore.commit`
copies the ``.h5`` to ``<path>.tmp-<pid>``, adds the journal to the copy, `os.replace`s it onto
``<path>`` and only then deletes the journal. Killed at any moment, this leaves either the old file
plus the journal, or the new file plus journal files that are already merged (recognised by their
token and deleted at the next open for writing). Atomicity is against killed processes, not power
loss (nothing is fsync'ed). One writer at a time per store; readers may run beside it. The machinery
lives in `delfi.io.journal` (shared with `delfi.io.matches.MatchStore`).

``Features.meta`` is not stored.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from delfi.io.journal import JournaledH5Store, StoreMismatchError
from delfi.types import COORDINATE_CONVENTION, Features

__all__ = ["FeatureStore", "StoreMismatchError", "FORMAT", "FORMAT_VERSION", "CHECKED_ATTRS"]

FORMAT = "delfi-features"
FORMAT_VERSION = 1
CHECKED_ATTRS = ("model", "weights_sha256", "config")
"""Attributes that must agree when resuming a store: other values would mix incompatible features."""

_ARRAYS = ("keypoints", "scores", "descriptors", "scales", "global_descriptor")
_BUILTIN_ATTRS = ("format", "format_version", "delfi_version", "coordinate_convention", "descriptor_dtype")
_DTYPES = {"float32": np.float32, "float16": np.float16}


def _check_name(name: str) -> str:
    """Return ``name`` if it is a valid entry name (posix relative path), else raise ValueError."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if any(p in ("", ".", "..", *_ARRAYS) for p in parts):
        raise ValueError(
            f"entry name must be a non-empty relative posix path without empty, '.' or '..' parts "
            f"or the reserved components {_ARRAYS}: {name!r}"
        )
    return name


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

    def get(self, name: str, device: Any = None) -> Features:
        """The features stored under ``name`` (float32 tensors, on ``device`` if given)."""
        record = self._record(name)
        arrays = {k: record[k] for k in _ARRAYS if k in record}
        if arrays["descriptors"].dtype != np.float32:
            arrays["descriptors"] = arrays["descriptors"].astype(np.float32)
        size = tuple(np.asarray(record["image_size"]).tolist())
        features = Features.from_numpy(arrays, image_size=size)
        return features.to(device) if device is not None else features

    __getitem__ = get

    def put(self, name: str, features: Features) -> None:
        """Journal ``features`` under ``name`` (replacing an entry of that name); atomic."""
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"feature store {self.path} is open read-only")
        name = _check_name(name)
        arrays = features.numpy()
        data = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in _ARRAYS if k in arrays}
        dtype = _DTYPES[self._attrs.get("descriptor_dtype", "float32")]
        data["descriptors"] = data["descriptors"].astype(dtype, copy=False)
        data["image_size"] = np.asarray(features.image_size, dtype=np.int64)
        self._put_record(name, data)
