"""Crash-safe HDF5 stores: the journal machinery shared by `FeatureStore` and `MatchStore`.

A store is one ``.h5`` file holding one group per entry (group attrs ``token``, the journal id the
entry came from, and ``complete = True``, written last) plus file attrs (``format``,
``format_version``, ``delfi_version`` and the caller's ``model``, ``weights_sha256``, ``config``
as a JSON string, other str / number / bool values).

Crash safety: the committed ``.h5`` is never modified in place (an HDF5 file whose writer is killed can
be left unreadable). `JournaledH5Store._put_record` writes one ``.npz`` per entry into
``<path>.journal/`` (temp name, then an atomic `os.replace`), so a journal file that exists is
complete; the store's attrs go to ``<path>.journal/attrs.json`` the same way until the first commit.
`JournaledH5Store.commit` copies the ``.h5`` to ``<path>.tmp-<pid>``, adds the journal to the copy,
`os.replace`s it onto ``<path>`` and only then deletes the journal. Killed at any moment, this leaves
either the old file plus the journal, or the new file plus journal files that are already merged
(recognised by their token and deleted at the next open for writing). Atomicity is against killed
processes, not power loss (nothing is fsync'ed). One writer at a time per store; readers may run
beside it.

Subclasses say how an entry becomes a *record* (a dict of numpy arrays, saved as the npz) and back,
how a record is written into / read from its h5 group, and how public names map to group paths.
Internally every entry is known by its group path (a ``/``-separated string).
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
from typing import Any, ClassVar

import h5py
import numpy as np

from delfi import __version__

_LIBVER = ("v108", "latest")
_ATTRS_JSON = "attrs.json"
_TMP = ".tmp-"
_RESERVED_RECORD_KEYS = ("name", "token", "complete")


class StoreMismatchError(ValueError):
    """A store was reopened for writing with attributes that differ from the stored ones."""


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


def _decode_attr(key: str, value: Any, json_attrs: tuple[str, ...]) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    value = value.decode() if isinstance(value, bytes) else value
    return json.loads(value) if key in json_attrs and isinstance(value, str) else value


class JournaledH5Store:
    """Base class: entries in one HDF5 file, written through an atomic journal.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` read only; ``"a"`` create or resume (with ``attrs`` given, the `CHECKED_ATTRS`
            must equal the stored ones, else `StoreMismatchError`); ``"w"`` start afresh (the file and
            any journal are removed).
        attrs: file attributes to record.
        commit_every: merge the journal into the file once this many entries are pending (None: only
            at `close`). Each commit copies the whole file, so small values cost O(entries^2) I/O;
            None keeps one journal file per entry until the end. Both are equally crash-safe.

    Journaled entries are visible to readers before the commit (the journal wins over the file). A
    reader's list of entries is a snapshot taken when it opens. Subclasses set the class attributes
    and may override `_builtin_attrs`, `_write_group`, `_read_group` and `_read_npz`; their public
    ``put`` / ``get`` map names to group paths and call `_put_record` / `_record`.
    """

    FORMAT: ClassVar[str] = ""
    FORMAT_VERSION: ClassVar[int] = 1
    LABEL: ClassVar[str] = "store"  # in messages: "feature" gives "feature store", "not a delfi feature file"
    DATASETS: ClassVar[tuple[str, ...]] = ()  # record keys stored as datasets; the others become group attrs
    BUILTIN_ATTRS: ClassVar[tuple[str, ...]] = ("format", "format_version", "delfi_version")  # not caller's
    CHECKED_ATTRS: ClassVar[tuple[str, ...]] = ("model", "weights_sha256", "config")  # must agree on resume
    JSON_ATTRS: ClassVar[tuple[str, ...]] = ("config",)  # dict attrs, stored as JSON strings

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, attrs: dict | None = None,
                 commit_every: int | None = None) -> None:
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if commit_every is not None and (not isinstance(commit_every, int) or commit_every < 1):
            raise ValueError(f"commit_every must be None or a positive int, got {commit_every!r}")
        self.path = Path(path)
        self.mode = mode
        self.commit_every = commit_every
        self._journal_dir = Path(f"{self.path}.journal")
        self._h5: h5py.File | None = None
        self._journal: dict[str, tuple[Path, str]] = {}  # group path -> (npz path, token)
        self._committed: set[str] = set()
        self._since_commit, self._dirty, self._closed = 0, False, False
        given = self._normalise_attrs(attrs or {})
        if mode != "r":
            self._remove_stale_temps()
        if mode == "w":
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self._journal_dir, ignore_errors=True)
        exists = self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists()
        if mode == "r" and not exists:
            raise FileNotFoundError(f"{self.LABEL} store {self.path} does not exist")
        try:
            self._attrs = self._load_index() if exists else {}
            if mode != "r":
                self._init_writing(exists, attrs is not None, given)
                self._since_commit = len(self._journal)  # a killed run's entries count as pending
        except BaseException:
            self._close_h5()
            raise

    def _builtin_attrs(self) -> dict[str, Any]:
        """The attrs of a newly created store (before the caller's)."""
        return {"format": self.FORMAT, "format_version": self.FORMAT_VERSION}

    def _write_group(self, group: h5py.Group, record: dict[str, Any]) -> None:
        """Write a record into its (emptied) group: `DATASETS` as datasets, the rest as attrs."""
        for key, value in record.items():
            if key in self.DATASETS:
                group.create_dataset(key, data=value)
            else:
                group.attrs[key] = value

    def _read_group(self, group: h5py.Group) -> dict[str, Any]:
        """The record stored in a committed group (inverse of `_write_group`)."""
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in group.attrs.items()
                 if k not in _RESERVED_RECORD_KEYS}
        return {**{k: group[k][()] for k in self.DATASETS if k in group}, **attrs}

    def _read_npz(self, z: Any) -> dict[str, Any]:
        """The record saved in a journal file (0-d string arrays become ``str``)."""
        arrays = {k: z[k] for k in z.files if k not in _RESERVED_RECORD_KEYS}
        return {k: str(v) if v.dtype.kind == "U" and v.ndim == 0 else v for k, v in arrays.items()}

    def _normalise_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Validate caller attrs; JSON attrs are round-tripped through JSON so comparisons are exact."""
        out: dict[str, Any] = {}
        for key, value in attrs.items():
            if not isinstance(key, str) or key in self.BUILTIN_ATTRS:
                raise ValueError(
                    f"attribute name {key!r} is not allowed (reserved: {', '.join(self.BUILTIN_ATTRS)})")
            if key in self.JSON_ATTRS:
                if not isinstance(value, dict):
                    raise TypeError(f"attribute {key!r} must be a dict, got {type(value).__name__}")
                value = json.loads(json.dumps(value, sort_keys=True))
            elif isinstance(value, np.generic):
                value = value.item()
            elif not isinstance(value, (str, int, float, bool)):
                raise TypeError(f"attribute {key!r} must be str, int, float or bool, got {type(value).__name__}")
            out[key] = value
        return out

    def _init_writing(self, exists: bool, check: bool, given: dict[str, Any]) -> None:
        if not exists:
            self._attrs = self._builtin_attrs()
        elif check:
            diff = [k for k in self.CHECKED_ATTRS if self._attrs.get(k) != given.get(k)]
            if diff:
                details = "; ".join(f"{k}: stored {self._attrs.get(k)!r}, given {given.get(k)!r}" for k in diff)
                raise StoreMismatchError(f"{self.LABEL} store {self.path} was written with other settings "
                                         f"({details}); use another path or mode='w' to start afresh")
        merged = {**self._attrs, **given}
        # attrs.json beside an existing file: a run killed before (or while) committing it; merge again
        if merged != self._attrs or not self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists():
            self._attrs = merged
            self._dirty = True
            self._journal_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._journal_dir / f"{_TMP}{os.getpid()}-{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(merged))
            os.replace(tmp, self._journal_dir / _ATTRS_JSON)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file attributes (a copy), JSON attributes (``config``) decoded."""
        return dict(self._attrs)

    def _paths(self) -> set[str]:
        """Group paths of all entries (committed and journaled)."""
        return self._committed.union(self._journal)

    def _has(self, path: str) -> bool:
        return path in self._journal or path in self._committed

    def __len__(self) -> int:
        return len(self._paths())

    def _record(self, path: str) -> dict[str, Any]:
        """The record of the entry at group ``path``; KeyError if there is none."""
        self._require_open()
        try:
            return self._read_record(path)
        except FileNotFoundError:  # a concurrent writer merged and removed the journal file
            self._close_h5()
            self._load_index()
            return self._read_record(path)

    def _read_record(self, path: str) -> dict[str, Any]:
        if path in self._journal:
            with np.load(self._journal[path][0]) as z:
                return self._read_npz(z)
        if path in self._committed:
            return self._read_group(self._file()[path])
        raise KeyError(f"no entry {path!r} in {self.LABEL} store {self.path}")

    def _file(self) -> h5py.File:
        """The committed file, opened read-only on first use."""
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def _load_index(self) -> dict[str, Any]:
        """Read the committed entries and attrs and the journal; drop (and in write modes delete)
        journal files already merged. Returns the attrs (file attrs overlaid by the journal's)."""
        attrs: dict[str, Any] = {}
        self._committed = set()
        if self.path.exists():
            try:
                f = self._file()
            except OSError as exc:
                raise ValueError(f"{self.path} is not a readable HDF5 file: {exc}") from exc
            attrs = {k: _decode_attr(k, v, self.JSON_ATTRS) for k, v in f.attrs.items()}
            if attrs.get("format") != self.FORMAT:
                raise ValueError(f"{self.path} is not a delfi {self.LABEL} file (format {attrs.get('format')!r})")
            if attrs.get("format_version", 0) > self.FORMAT_VERSION:
                raise ValueError(f"{self.path}: format_version {attrs['format_version']} > {self.FORMAT_VERSION}")
            f.visititems(self._collect_complete)
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

    def _collect_complete(self, name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and obj.attrs.get("complete", False):
            self._committed.add(name)

    def _put_record(self, path: str, record: dict[str, np.ndarray]) -> None:
        """Journal ``record`` as the entry at group ``path`` (replacing one there); atomic."""
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"{self.LABEL} store {self.path} is open read-only")
        if any(k in _RESERVED_RECORD_KEYS for k in record):
            raise ValueError(f"record keys {_RESERVED_RECORD_KEYS} are reserved")
        token = uuid.uuid4().hex
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        npz = self._journal_dir / f"{hashlib.sha1(path.encode()).hexdigest()}.npz"
        tmp = self._journal_dir / f"{_TMP}{os.getpid()}-{token}"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, name=np.array(path), token=np.array(token), **record)
            os.replace(tmp, npz)
        finally:
            tmp.unlink(missing_ok=True)
        self._journal[path] = (npz, token)
        self._since_commit += 1
        if self.commit_every is not None and self._since_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Merge the journal into the HDF5 file atomically (no-op when there is nothing to merge)."""
        self._require_open()
        if self.mode == "r":
            return
        if not self._journal and not self._dirty:
            with contextlib.suppress(OSError):  # left empty by a run killed while cleaning up
                self._journal_dir.rmdir()
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
                    f.attrs[key] = json.dumps(value, sort_keys=True) if key in self.JSON_ATTRS else value
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

    def _write_entry(self, f: h5py.File, name: str, path: Path, token: str) -> None:
        group = f.require_group(name)
        if group.attrs.get("token") == token:  # merged by a commit whose cleanup was interrupted
            return
        group.attrs.pop("complete", None)
        for key in self.DATASETS:
            if key in group:
                del group[key]
        for key in list(group.attrs):  # attrs of a replaced entry (e.g. an optional one) must go
            del group.attrs[key]
        with np.load(path) as z:
            self._write_group(group, self._read_npz(z))
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

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, mode={self.mode!r}, entries={len(self)})"

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.LABEL} store {self.path} is closed")

    def _close_h5(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def _remove_stale_temps(self) -> None:
        for folder, prefix in ((self.path.parent, self.path.name + _TMP), (self._journal_dir, _TMP)):
            for entry in os.listdir(folder) if folder.is_dir() else []:
                if entry.startswith(prefix) and _stale(entry):
                    (folder / entry).unlink(missing_ok=True)
