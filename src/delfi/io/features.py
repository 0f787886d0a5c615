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
loss (nothing is fsync'ed). One writer at a time per store; readers may run beside it.

``Features.meta`` is not stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from delfi import __version__
from delfi.types import COORDINATE_CONVENTION, Features

FORMAT = "delfi-features"
FORMAT_VERSION = 1
CHECKED_ATTRS = ("model", "weights_sha256", "config")
"""Attributes that must agree when resuming a store: other values would mix incompatible features."""

_ARRAYS = ("keypoints", "scores", "descriptors", "scales", "global_descriptor")
_BUILTIN_ATTRS = ("format", "format_version", "delfi_version", "coordinate_convention", "descriptor_dtype")
_DTYPES = {"float32": np.float32, "float16": np.float16}
_LIBVER = ("v108", "latest")
_ATTRS_JSON = "attrs.json"
_TMP = ".tmp-"


class StoreMismatchError(ValueError):
    """A store was reopened for writing with attributes that differ from the stored ones."""


def _check_name(name: str) -> str:
    """Return ``name`` if it is a valid entry name (posix relative path), else raise ValueError."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if any(p in ("", ".", "..", *_ARRAYS) for p in parts):
        raise ValueError(
            f"entry name must be a non-empty relative posix path without empty, '.' or '..' parts "
            f"or the reserved components {_ARRAYS}: {name!r}"
        )
    return name


def _stale(filename: str) -> bool:
    """Whether a temp file ``...tmp-<pid>[-...]`` belongs to a process that is gone (or to this one:
    then it is left from an earlier process with the same pid). Off posix, keep them all."""
    try:
        pid = int(filename.rsplit(_TMP, 1)[1].split("-")[0])
        if pid == os.getpid():
            return True
        if os.name != "posix":
            return False
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except (IndexError, ValueError, ProcessLookupError):
        return True
    except PermissionError:  # it exists, run by another user
        pass
    return False


def _normalise_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Validate caller attrs; ``config`` is round-tripped through JSON so comparisons are exact."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or key in _BUILTIN_ATTRS:
            raise ValueError(f"attribute name {key!r} is not allowed (reserved: {', '.join(_BUILTIN_ATTRS)})")
        if key == "config":
            if not isinstance(value, dict):
                raise TypeError(f"attribute 'config' must be a dict, got {type(value).__name__}")
            value = json.loads(json.dumps(value, sort_keys=True))
        elif isinstance(value, np.generic):
            value = value.item()
        elif not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"attribute {key!r} must be str, int, float or bool, got {type(value).__name__}")
        out[key] = value
    return out


def _decode_attr(key: str, value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    value = value.decode() if isinstance(value, bytes) else value
    return json.loads(value) if key == "config" and isinstance(value, str) else value


class FeatureStore:
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

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, attrs: dict | None = None,
                 descriptor_dtype: str = "float32", commit_every: int | None = None) -> None:
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if descriptor_dtype not in _DTYPES:
            raise ValueError(f"descriptor_dtype must be one of {sorted(_DTYPES)}, got {descriptor_dtype!r}")
        if commit_every is not None and (not isinstance(commit_every, int) or commit_every < 1):
            raise ValueError(f"commit_every must be None or a positive int, got {commit_every!r}")
        self.path = Path(path)
        self.mode = mode
        self.commit_every = commit_every
        self._journal_dir = Path(f"{self.path}.journal")
        self._h5: h5py.File | None = None
        self._journal: dict[str, tuple[Path, str]] = {}  # name -> (npz path, token)
        self._committed: set[str] = set()
        self._since_commit, self._dirty, self._closed = 0, False, False
        given = _normalise_attrs(attrs or {})
        if mode != "r":
            self._remove_stale_temps()
        if mode == "w":
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self._journal_dir, ignore_errors=True)
        exists = self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists()
        if mode == "r" and not exists:
            raise FileNotFoundError(f"feature store {self.path} does not exist")
        try:
            self._attrs = self._load_index() if exists else {}
            if mode != "r":
                self._init_writing(exists, attrs is not None, given, descriptor_dtype)
                self._since_commit = len(self._journal)  # a killed run's entries count as pending
        except BaseException:
            self._close_h5()
            raise

    def _init_writing(self, exists: bool, check: bool, given: dict[str, Any], descriptor_dtype: str) -> None:
        if not exists:
            self._attrs = {"format": FORMAT, "format_version": FORMAT_VERSION,
                           "coordinate_convention": COORDINATE_CONVENTION, "descriptor_dtype": descriptor_dtype}
        elif check:
            diff = [k for k in CHECKED_ATTRS if self._attrs.get(k) != given.get(k)]
            if diff:
                details = "; ".join(f"{k}: stored {self._attrs.get(k)!r}, given {given.get(k)!r}"
                                    for k in diff)
                raise StoreMismatchError(
                    f"feature store {self.path} was written with other settings ({details}); "
                    "use another path or mode='w' to start afresh"
                )
        merged = {**self._attrs, **given}
        if merged != self._attrs or not self.path.exists():
            self._attrs = merged
            self._dirty = True
            self._journal_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._journal_dir / f"{_TMP}{os.getpid()}-{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(merged))
            os.replace(tmp, self._journal_dir / _ATTRS_JSON)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file attributes (a copy), ``config`` decoded to a dict."""
        return dict(self._attrs)

    def names(self) -> list[str]:
        """All entry names (committed and journaled), sorted."""
        return sorted(self._committed.union(self._journal))

    def __contains__(self, name: object) -> bool:
        return name in self._journal or name in self._committed

    def __len__(self) -> int:
        return len(self._committed.union(self._journal))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, device: Any = None) -> Features:
        """The features stored under ``name`` (float32 tensors, on ``device`` if given)."""
        self._require_open()
        try:
            arrays, size = self._read(name)
        except FileNotFoundError:  # a concurrent writer merged and removed the journal file
            self._close_h5()
            self._load_index()
            arrays, size = self._read(name)
        if arrays["descriptors"].dtype != np.float32:
            arrays["descriptors"] = arrays["descriptors"].astype(np.float32)
        features = Features.from_numpy(arrays, image_size=size)
        return features.to(device) if device is not None else features

    __getitem__ = get

    def _read(self, name: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        if name in self._journal:
            with np.load(self._journal[name][0]) as z:
                return {k: z[k] for k in _ARRAYS if k in z.files}, tuple(z["image_size"].tolist())
        if name in self._committed:
            group = self._file()[name]
            size = tuple(np.asarray(group.attrs["image_size"]).tolist())
            return {k: group[k][()] for k in _ARRAYS if k in group}, size
        raise KeyError(f"no entry {name!r} in feature store {self.path}")

    def _file(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def _load_index(self) -> dict[str, Any]:
        """Read the committed names and attrs and the journal; drop (and in write modes delete)
        journal files already merged. Returns the attrs (file attrs overlaid by the journal's)."""
        attrs: dict[str, Any] = {}
        self._committed = set()
        if self.path.exists():
            try:
                f = self._file()
            except OSError as exc:
                raise ValueError(f"{self.path} is not a readable HDF5 file: {exc}") from exc
            attrs = {k: _decode_attr(k, v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise ValueError(f"{self.path} is not a delfi feature file (format {attrs.get('format')!r})")
            if attrs.get("format_version", 0) > FORMAT_VERSION:
                raise ValueError(f"{self.path}: format_version {attrs['format_version']} > {FORMAT_VERSION}")
            self._walk(f, "")
        attrs_json = self._journal_dir / _ATTRS_JSON
        if attrs_json.exists():
            attrs.update(json.loads(attrs_json.read_text()))
        self._journal = {}
        if self._journal_dir.is_dir():
            for entry in sorted(os.listdir(self._journal_dir)):
                path = self._journal_dir / entry
                if not entry.endswith(".npz") or entry.startswith(_TMP):
                    continue
                try:
                    with np.load(path) as z:
                        name, token = str(z["name"]), str(z["token"])
                except Exception as exc:  # cannot happen by construction (atomic replace), but be robust
                    warnings.warn(f"ignoring unreadable journal file {path}: {exc}", stacklevel=2)
                    continue
                if name in self._committed and self._file()[name].attrs.get("token") == token:
                    if self.mode != "r":
                        path.unlink(missing_ok=True)
                    continue
                self._journal[name] = (path, token)
        return attrs

    def _walk(self, group: h5py.Group, prefix: str) -> None:
        """Collect complete entries below ``group`` (array names are never groups, so skip them)."""
        keys = list(group.keys())
        if prefix and "keypoints" in keys and group.attrs.get("complete", False):
            self._committed.add(prefix[:-1])
        for key in keys:
            if key not in _ARRAYS and isinstance(sub := group[key], h5py.Group):
                self._walk(sub, f"{prefix}{key}/")

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
        token = uuid.uuid4().hex
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        path = self._journal_dir / f"{hashlib.sha1(name.encode()).hexdigest()}.npz"
        tmp = self._journal_dir / f"{_TMP}{os.getpid()}-{token}"
        try:
            with open(tmp, "wb") as fh:
                size = np.asarray(features.image_size, dtype=np.int64)
                np.savez(fh, name=np.array(name), token=np.array(token), image_size=size, **data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._journal[name] = (path, token)
        self._since_commit += 1
        if self.commit_every is not None and self._since_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Merge the journal into the HDF5 file atomically (no-op when there is nothing to merge)."""
        self._require_open()
        if self.mode == "r" or (not self._journal and not self._dirty):
            return
        pending = dict(self._journal)
        self._close_h5()
        tmp = Path(f"{self.path}{_TMP}{os.getpid()}")
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+" if self.path.exists() else "w", libver=_LIBVER) as f:
                for name, (path, token) in sorted(pending.items()):
                    self._write_entry(f, name, path, token)
                for key, value in {**self._attrs, "delfi_version": __version__}.items():
                    f.attrs[key] = json.dumps(value, sort_keys=True) if key == "config" else value
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._attrs["delfi_version"] = __version__
        self._committed.update(pending)
        for name, (path, _) in pending.items():
            path.unlink(missing_ok=True)
            del self._journal[name]
        (self._journal_dir / _ATTRS_JSON).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._journal_dir.rmdir()  # unless something else lies there
        self._since_commit = 0
        self._dirty = False

    @staticmethod
    def _write_entry(f: h5py.File, name: str, path: Path, token: str) -> None:
        group = f.require_group(name)
        if group.attrs.get("token") == token:  # merged by a commit whose cleanup was interrupted
            return
        group.attrs.pop("complete", None)
        for key in _ARRAYS:
            if key in group:
                del group[key]
        with np.load(path) as z:
            for key in _ARRAYS:
                if key in z.files:
                    group.create_dataset(key, data=z[key])
            group.attrs["image_size"] = z["image_size"]
        group.attrs["token"] = token
        group.attrs["complete"] = True

    def close(self) -> None:
        """Commit (in write modes) and release the file. Idempotent."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._close_h5()
            self._closed = True

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, mode={self.mode!r}, entries={len(self)})"

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"feature store {self.path} is closed")

    def _close_h5(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def _remove_stale_temps(self) -> None:
        for folder, prefix in ((self.path.parent, self.path.name + _TMP), (self._journal_dir, _TMP)):
            for entry in os.listdir(folder) if folder.is_dir() else []:
                if entry.startswith(prefix) and _stale(entry):
                    (folder / entry).unlink(missing_ok=True)
