"""Crash-safe, concurrency-safe HDF5 stores: the journal machinery shared by `FeatureStore` and `MatchStore`.

A store is one ``.h5`` file holding one group per entry (group attrs ``token``, the journal id the
entry came from, and ``complete = True``, written last) plus file attrs (``format``,
``format_version``, ``delfi_version`` and the caller's ``model``, ``weights_sha256``, ``config``
as a JSON string, other str / number / bool values).

Crash safety: the committed ``.h5`` is never modified in place (an HDF5 file whose writer is killed can
be left unreadable). `JournaledH5Store._put_record` writes one ``.npz`` per entry into
``<path>.journal/`` named ``<sha1 of the group path>.npz`` (temp name ``.tmp-<pid>-<32 hex>``, then an
atomic `os.replace`), so a journal file that exists is complete; the store's attrs go to
``<path>.journal/attrs.json`` the same way until the first commit. `JournaledH5Store.commit` copies the
``.h5`` to ``<path>.tmp-<pid>``, adds the journal to the copy, `os.replace`s it onto ``<path>`` and only
then deletes the merged journal files. Killed at any moment, this leaves either the old file plus the
journal, or the new file plus journal files that are already merged (recognised by their token and
deleted at the next open for writing or commit). Atomicity is against killed processes, not power loss
(nothing is fsync'ed).

Concurrency (posix; see `delfi.io.locking`): any number of writers (``mode="a"``) and readers may use
one store at once. Two lock files delfi makes sit beside the store while it is written:

* ``<path>.lock``, the writer lock: every writer holds it shared for its whole life. ``mode="w"``
  (start afresh) takes it exclusively without waiting and raises `StoreBusyError` when another writer
  is live, instead of deleting that writer's work.
* ``<path>.commit-lock``, the commit lock, held exclusively while a writer opens the store (reads the
  index, checks the settings, cleans up), replaces one of its journal files, or commits. A commit thus
  always starts from the newest committed file and merges every valid journal file present (its own
  and other live writers' entries alike); no journal file changes while it runs, so it deletes only
  files whose content it merged. Writers of the same entry at once: the last put before a commit wins.

The last writer to close (it gets the writer lock exclusively) removes the empty journal directory
and both lock files; a killed writer's lock files are harmless (the kernel dropped its locks) and go
at the next clean close. Readers take no lock: their list of entries is a snapshot taken at open, and
an entry merged (its journal file deleted) under their feet is found again in the new file.

Only files delfi provably made are ever deleted: ``<path>.tmp-<pid>`` and journal temps
``.tmp-<pid>-<32 hex>`` whose process is gone, journal files ``<40 hex>.npz`` (once merged, or by
``mode="w"``), ``attrs.json``, and lock files holding delfi's marker. ``mode="w"`` replaces an existing
``<path>`` only if it is an empty file or a readable delfi store of the same kind.

Validation: a committed file that cannot be read (damaged header, truncated, bad attributes) raises
`StoreError` naming the file and the problem. Every journal file is checked when the store is opened
and when it is merged (readable, ``name`` and ``token`` present, a valid entry name that matches the
file name, the subclass's required arrays with consistent shapes and finite values); a bad one is
skipped with a warning naming it and the reason, and left in place (never merged, never deleted).
Committed groups whose path is not a valid entry name are skipped with a warning. Reading one entry
that is broken (missing or mis-shaped datasets, non-finite values, unreadable data) raises
`EntryError` (``"<store>: entry '<name>': <reason>"``); a missing entry is a KeyError.

Subclasses say how an entry becomes a *record* (a dict of numpy arrays, saved as the npz) and back,
how a record is written into / read from its h5 group, how public names map to group paths (and which
paths are valid), and what makes a record valid (`JournaledH5Store._record_problem`). Internally every
entry is known by its group path (a ``/``-separated string).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple

import h5py
import numpy as np

from delfi import __version__
from delfi.io.locking import FileLock, process_gone

_LIBVER = ("v108", "latest")
_ATTRS_JSON = "attrs.json"
_RESERVED_RECORD_KEYS = ("name", "token", "complete")
_JOURNAL_FILE = re.compile(r"[0-9a-f]{40}\.npz")
_JOURNAL_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]{32}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_ABSENT = object()
_MAX_DIFFS = 4


class StoreError(ValueError):
    """A store's file (or one of its journal files) cannot be used; the message names it and why."""


class StoreMismatchError(StoreError):
    """A store was reopened for writing with attributes that differ from the stored ones."""


class StoreBusyError(StoreError):
    """A store cannot be started afresh (``mode="w"``) while another process writes it."""


class EntryError(ValueError):
    """One entry of a store is unusable (missing or mis-shaped data, non-finite values, unreadable).

    Attributes:
        store: the store's path.
        entry: the entry's name (a ``(name0, name1)`` pair for match stores).
        reason: what is wrong.
    """

    def __init__(self, store: str | os.PathLike, entry: Any, reason: str) -> None:
        super().__init__(str(store), entry, reason)
        self.store, self.entry, self.reason = str(store), entry, reason

    def __str__(self) -> str:
        return f"{self.store}: entry {self.entry!r}: {self.reason}"


class ArraySpec(NamedTuple):
    """Shape and dtype of a journal array, read from its header without loading the data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _stale(pid: int, *, ours: bool) -> bool:
    """Whether a temp file of process ``pid`` belongs to a process that is gone. With ``ours`` (a
    temp this process only writes under the commit lock, which the caller holds), one of this
    process counts as gone too: it is left from an earlier process with the same pid. Off posix,
    keep them all."""
    if pid == os.getpid():
        return ours
    return process_gone(pid)


def _short(value: Any, limit: int = 66) -> str:  # 66: a quoted sha256
    if value is _ABSENT:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diffs(key: str, stored: Any, given: Any) -> list[str]:
    """``"key.sub: stored X, given Y"`` for every differing leaf (nested dicts are walked)."""
    if isinstance(stored, dict) and isinstance(given, dict):
        out: list[str] = []
        for sub in sorted(set(stored) | set(given), key=str):
            a, b = stored.get(sub, _ABSENT), given.get(sub, _ABSENT)
            if a != b:
                out += _diffs(f"{key}.{sub}", a, b)
        return out
    return [f"{key}: stored {_short(stored)}, given {_short(given)}"]


def _is_true(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_, int, np.integer)) and bool(value)


def is_text(value: Any) -> bool:
    """Whether a record value is a string (``str``, or a 0-d unicode array / its header)."""
    return isinstance(value, str) or (hasattr(value, "dtype") and value.dtype.kind == "U" and value.ndim == 0)


def array_problem(record: Mapping[str, Any], key: str, kinds: str, shape: tuple[int | None, ...],
                  what: str | None = None) -> str | None:
    """Why ``record[key]`` is not an array of a dtype kind in ``kinds`` and shape ``shape`` (None
    matches any length), or None. ``what`` names the expected shape in the message."""
    value = record[key]
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        return f"{key} is not an array (got {type(value).__name__})"
    if value.dtype.kind not in kinds:
        return f"{key} has dtype {value.dtype}, expected {'integer' if kinds == 'iu' else 'numeric'} values"
    got = tuple(value.shape)
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        dims = ", ".join("N" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        return f"{key} shape {got} {what or f'is not ({dims})'}"
    return None


def finite_problem(record: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """``"non-finite values in <key>"`` for the first loaded float array among ``keys``, or None."""
    for key in keys:
        value = record.get(key)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"non-finite values in {key}"
    return None


def _array_spec(z: Any, key: str) -> ArraySpec:
    """Shape and dtype of array ``key`` of an open npz, from its header (loads it only if need be)."""
    try:
        with z.zip.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in read:
                shape, _, dtype = read[version](fh)
                return ArraySpec(tuple(shape), np.dtype(dtype))
    except KeyError:
        pass
    value = z[key]
    return ArraySpec(tuple(value.shape), value.dtype)


class _BadJournalFile(Exception):
    """A journal file that must be skipped (the message says why)."""


class JournaledH5Store:
    """Base class: entries in one HDF5 file, written through an atomic journal.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` read only; ``"a"`` create or resume (with ``attrs`` given, the `CHECKED_ATTRS`
            must equal the stored ones, else `StoreMismatchError`); ``"w"`` start afresh (the file and
            any journal are removed; `StoreBusyError` while another writer is live; `StoreError` if
            ``path`` is a file that is not a delfi store of this kind).
        attrs: file attributes to record.
        commit_every: merge the journal into the file once this many entries are pending (None: only
            at `close`). Each commit copies the whole file, so small values cost O(entries^2) I/O;
            None keeps one journal file per entry until the end. Both are equally crash-safe.

    Journaled entries are visible to readers before the commit (the journal wins over the file). A
    reader's list of entries is a snapshot taken when it opens. Subclasses set the class attributes
    and may override `_builtin_attrs`, `_write_group`, `_read_group`, `_read_npz`, `_check_path`,
    `_entry_label` and `_record_problem`; their public ``put`` / ``get`` map names to group paths and
    call `_put_record` / `_record`.
    """

    FORMAT: ClassVar[str] = ""
    FORMAT_VERSION: ClassVar[int] = 1
    LABEL: ClassVar[str] = "store"  # in messages: "feature" gives "feature store", "not a delfi feature file"
    DATASETS: ClassVar[tuple[str, ...]] = ()  # record keys stored as datasets; the others become group attrs
    BUILTIN_ATTRS: ClassVar[tuple[str, ...]] = ("format", "format_version", "delfi_version")  # not caller's
    CHECKED_ATTRS: ClassVar[tuple[str, ...]] = ("model", "weights_sha256", "config")  # must agree on resume
    JSON_ATTRS: ClassVar[tuple[str, ...]] = ("config",)  # dict attrs, stored as JSON strings
    FILE_CONFIG_KEYS: ClassVar[tuple[str, ...]] = ()  # config keys naming files whose content another attr checks

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
        self._file_attrs: dict[str, Any] = {}
        self._attrs: dict[str, Any] = {}
        self._since_commit, self._dirty, self._closed = 0, False, False
        self._given = self._normalise_attrs(attrs or {})
        self._check_given = attrs is not None
        self._writer_lock = FileLock(f"{self.path}.lock")
        self._commit_lock = FileLock(f"{self.path}.commit-lock")
        if mode == "r":
            if not (self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists()):
                raise FileNotFoundError(f"{self.LABEL} store {self.path} does not exist")
            try:
                self._attrs = self._load_index(cleanup=False)
            except BaseException:
                self._close_h5()
                raise
            return
        try:
            self._open_for_writing()
        except BaseException:
            self._close_h5()
            self._closed = True
            self._release_locks()
            raise

    # ------------------------------------------------------------------ hooks for subclasses
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
        data = {}
        for key in self.DATASETS:
            if key in group:
                obj = group[key]
                if not isinstance(obj, h5py.Dataset):
                    raise ValueError(f"{key} is a {type(obj).__name__.lower()}, not a dataset")
                data[key] = obj[()]
        return {**data, **attrs}

    def _read_npz(self, z: Any) -> dict[str, Any]:
        """The record saved in a journal file (0-d string arrays become ``str``)."""
        arrays = {k: z[k] for k in z.files if k not in _RESERVED_RECORD_KEYS}
        return {k: str(v) if v.dtype.kind == "U" and v.ndim == 0 else v for k, v in arrays.items()}

    def _check_path(self, path: str) -> str:
        """Return ``path`` if it is a valid group path of an entry, else raise ValueError."""
        if not isinstance(path, str) or not path:
            raise ValueError(f"invalid entry path {path!r}")
        return path

    def _entry_label(self, path: str) -> Any:
        """How messages name the entry at group ``path``."""
        return path

    def _record_problem(self, record: Mapping[str, Any]) -> str | None:
        """Why ``record`` is not a valid entry, or None. Values are arrays, str or (for journal files
        checked without loading them) `ArraySpec` headers; value checks apply to loaded arrays only."""
        return None

    # ------------------------------------------------------------------ opening
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

    def _open_for_writing(self) -> None:
        """Take the locks (see the module docstring), start afresh for ``"w"``, read the index."""
        if self.mode != "w":
            self._lock(self._writer_lock, exclusive=False)
        self._lock(self._commit_lock, exclusive=True)
        try:
            if self.mode == "w":
                if not self._lock(self._writer_lock, exclusive=True, wait=False):
                    raise StoreBusyError(
                        f"{self.LABEL} store {self.path} is being written by another delfi run; refusing to "
                        f"start it afresh under that run (wait for it to finish, or use another path)")
                self._start_afresh()
                self._writer_lock.downgrade()
            self._remove_stale_temps()
            exists = self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists()
            self._attrs = self._load_index(cleanup=True)
            self._init_writing(exists)
            self._since_commit = len(self._journal)  # a killed run's entries count as pending
        finally:
            self._commit_lock.release()

    def _lock(self, lock: FileLock, *, exclusive: bool, wait: bool = True) -> bool:
        """``lock.acquire``; failures to make the lock file become StoreError naming the store."""
        try:
            return lock.acquire(exclusive=exclusive, wait=wait)
        except OSError as exc:
            raise StoreError(f"cannot write {self.LABEL} store {self.path}: cannot lock {lock.path} "
                             f"({exc.strerror or exc})") from None

    def _start_afresh(self) -> None:
        """``mode="w"``, holding both locks exclusively: remove the file and delfi's journal files."""
        if self.path.exists() or self.path.is_symlink():
            self._check_replaceable()
            self.path.unlink()
        if self._journal_dir.is_dir():
            for entry in os.listdir(self._journal_dir):
                if entry == _ATTRS_JSON or _JOURNAL_FILE.fullmatch(entry) or _JOURNAL_TMP.fullmatch(entry):
                    (self._journal_dir / entry).unlink(missing_ok=True)
            try:
                self._journal_dir.rmdir()
            except OSError:
                pass  # files delfi did not make stay where they are

    def _check_replaceable(self) -> None:
        """Raise StoreError unless ``self.path`` is an empty file or a delfi store of this kind."""
        if self.path.is_file() and not self.path.is_symlink() and self.path.stat().st_size == 0:
            return
        why = None
        try:
            if not self.path.is_file() or self.path.is_symlink():
                why = "it is not a regular file"
            else:
                with h5py.File(self.path, "r") as f:
                    fmt = f.attrs.get("format")
                fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
                if fmt != self.FORMAT:
                    why = f"its format is {fmt!r}, not {self.FORMAT!r}"
        except Exception as exc:  # noqa: BLE001 - any failure to read it means we cannot vouch for it
            why = f"it cannot be read as one ({exc})"
        if why:
            raise StoreError(f"refusing to replace {self.path}: it is not a delfi {self.LABEL} store ({why}); "
                             f"move or delete it yourself, or choose another path")

    def _compared(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """``attrs`` as compared on resume: the `FILE_CONFIG_KEYS` of ``config`` left out, since they
        name files by their spelling (``ckpt.pt`` or ``/abs/ckpt.pt``) and a content attribute such
        as ``weights_sha256`` checks what they hold."""
        config = attrs.get("config")
        if not self.FILE_CONFIG_KEYS or not isinstance(config, dict):
            return attrs
        return {**attrs, "config": {k: v for k, v in config.items() if k not in self.FILE_CONFIG_KEYS}}

    def _init_writing(self, exists: bool) -> None:
        given = self._given
        if not exists:
            self._attrs = self._builtin_attrs()
        elif self._check_given:
            stored_view, given_view = self._compared(self._attrs), self._compared(given)
            diff = [k for k in self.CHECKED_ATTRS if stored_view.get(k, _ABSENT) != given_view.get(k, _ABSENT)]
            if diff:
                details = [d for k in diff for d in _diffs(k, stored_view.get(k, _ABSENT), given_view.get(k, _ABSENT))]
                if len(details) > _MAX_DIFFS:
                    details = details[:_MAX_DIFFS] + [f"{len(details) - _MAX_DIFFS} more"]
                raise StoreMismatchError(
                    f"{self.LABEL} store {self.path} was written with other settings ({'; '.join(details)}); "
                    f"start afresh with --overwrite (mode='w' in Python) or use another path")
        merged = {**self._attrs, **given}
        # attrs.json beside an existing file: a run killed before (or while) committing it; merge again
        if merged != self._attrs or not self.path.exists() or (self._journal_dir / _ATTRS_JSON).exists():
            self._attrs = merged
            self._dirty = True
            self._journal_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._journal_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
            try:
                tmp.write_text(json.dumps(merged), encoding="utf-8")
                os.replace(tmp, self._journal_dir / _ATTRS_JSON)
            finally:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
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
        """The validated record of the entry at group ``path``; KeyError if there is none, EntryError
        if it is unusable."""
        self._require_open()
        try:
            record = self._read_record(path)
        except FileNotFoundError:  # a concurrent writer merged and removed the journal file
            self._close_h5()
            self._load_index(cleanup=False)
            record = self._read_record(path)
        problem = self._record_problem(record)
        if problem:
            raise EntryError(self.path, self._entry_label(path), problem)
        return record

    def _read_record(self, path: str) -> dict[str, Any]:
        if path in self._journal:
            npz = self._journal[path][0]
            try:
                with np.load(npz, allow_pickle=False) as z:
                    return self._read_npz(z)
            except FileNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged journal file is this entry's failure
                raise EntryError(self.path, self._entry_label(path),
                                 f"its journal file {npz} cannot be read ({exc})") from None
        if path in self._committed:
            try:
                return self._read_group(self._file()[path])
            except Exception as exc:  # noqa: BLE001 - a damaged group is this entry's failure
                raise EntryError(self.path, self._entry_label(path), f"cannot be read ({exc})") from None
        raise KeyError(f"no entry {self._entry_label(path)!r} in {self.LABEL} store {self.path}")

    def _file(self) -> h5py.File:
        """The committed file, opened read-only on first use."""
        if self._h5 is None:
            try:
                self._h5 = h5py.File(self.path, "r")
            except FileNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001 - h5py reports damage as OSError or RuntimeError
                raise StoreError(f"{self.path} is not a readable HDF5 file ({exc}); it may be damaged or "
                                 f"not a delfi {self.LABEL} store") from None
        return self._h5

    def _load_index(self, cleanup: bool) -> dict[str, Any]:
        """Read the committed entries and attrs and the journal; drop (and with ``cleanup``, only ever
        under the commit lock, delete) journal files already merged. Returns the attrs (file attrs
        overlaid by the journal's)."""
        # The journal is read before the committed file: a commit running meanwhile (readers hold no
        # lock) then only moves entries from the journal read into a newer file, never out of both.
        journal_attrs = self._read_attrs_json()
        journal = self._scan_journal()
        self._committed = set()
        self._file_attrs = self._read_file_index() if self.path.exists() else {}
        self._journal = self._unmerged(journal, cleanup)
        return {**self._file_attrs, **journal_attrs}

    def _read_file_index(self) -> dict[str, Any]:
        """The committed file's attrs (checked); fills ``self._committed``."""
        f = self._file()
        attrs = {}
        try:
            keys = list(f.attrs)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.path}: cannot read the file attributes ({exc}); the file is damaged") from None
        for key in keys:
            try:
                value = f.attrs[key]
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"{self.path}: cannot read attribute {key!r} ({exc})") from None
            attrs[key] = self._decode_text(key, value, self.path)
        if attrs.get("format") != self.FORMAT:
            raise StoreError(f"{self.path} is not a delfi {self.LABEL} file (format {attrs.get('format')!r})")
        attrs.update({k: self._decode_json(k, attrs[k], self.path) for k in self.JSON_ATTRS if k in attrs})
        version = attrs.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise StoreError(f"{self.path}: format_version {version!r} is not an integer; the file is damaged")
        if version > self.FORMAT_VERSION:
            raise StoreError(f"{self.path}: format_version {version} > {self.FORMAT_VERSION}: written by a newer "
                             f"delfi; upgrade delfi to read it")
        try:
            f.visititems(self._collect_complete)
        except Exception as exc:  # noqa: BLE001 - h5py: "RuntimeError: Object visitation failed"
            raise StoreError(f"{self.path}: cannot list the entries ({exc}); the file is damaged") from None
        return attrs

    @staticmethod
    def _decode_text(key: str, value: Any, where: Path) -> Any:
        """An attr value as a Python value: numpy scalars unwrapped, bytes decoded as UTF-8."""
        value = value.item() if isinstance(value, np.generic) else value
        try:
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, str):
                value.encode("utf-8")  # h5py maps undecodable bytes to lone surrogates
        except UnicodeError:
            raise StoreError(f"{where}: attribute {key!r} is not valid UTF-8 text") from None
        return value

    @staticmethod
    def _decode_json(key: str, value: Any, where: Path) -> dict[str, Any]:
        """A JSON attr (a JSON object in a string) decoded."""
        if not isinstance(value, str):
            raise StoreError(f"{where}: attribute {key!r} must be a JSON string, got {type(value).__name__}")
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise StoreError(f"{where}: attribute {key!r} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise StoreError(f"{where}: attribute {key!r} must be a JSON object, got {type(value).__name__}")
        return value

    def _read_attrs_json(self) -> dict[str, Any]:
        path = self._journal_dir / _ATTRS_JSON
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        try:
            attrs = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"{path}: not valid JSON ({exc}); it holds the settings of an unfinished run of "
                             f"{self.path}: fix or delete it, or start afresh with --overwrite") from None
        if not isinstance(attrs, dict):
            raise StoreError(f"{path}: must hold a JSON object, got {type(attrs).__name__}")
        for key in self.JSON_ATTRS:
            if key in attrs and not isinstance(attrs[key], dict):
                raise StoreError(f"{path}: attribute {key!r} must be a JSON object, got {type(attrs[key]).__name__}")
        return attrs

    def _collect_complete(self, name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Group) or not _is_true(obj.attrs.get("complete", False)):
            return
        try:
            self._check_path(name)
        except ValueError as exc:
            warnings.warn(f"{self.path}: ignoring group {name!r}: not a valid entry ({exc})", stacklevel=2)
            return
        self._committed.add(name)

    def _scan_journal(self) -> dict[str, tuple[Path, str]]:
        """The valid journal files: group path -> (file, token)."""
        journal: dict[str, tuple[Path, str]] = {}
        try:
            entries = sorted(os.listdir(self._journal_dir))
        except (FileNotFoundError, NotADirectoryError):
            return journal
        for entry in entries:
            if not _JOURNAL_FILE.fullmatch(entry):  # temps, attrs.json and files delfi did not make
                continue
            path = self._journal_dir / entry
            try:
                name, token = self._check_journal_file(path)
            except FileNotFoundError:  # merged meanwhile by a writer (we hold no lock as a reader)
                continue
            except _BadJournalFile as exc:
                warnings.warn(f"ignoring journal file {path}: {exc} (left in place)", stacklevel=3)
                continue
            journal[name] = (path, token)
        return journal

    def _unmerged(self, journal: dict[str, tuple[Path, str]], cleanup: bool) -> dict[str, tuple[Path, str]]:
        """``journal`` without the files already merged into the committed file (with ``cleanup``,
        only ever under the commit lock, those files are deleted)."""
        out = {}
        for name, (path, token) in journal.items():
            if name in self._committed and self._committed_token(name) == token:
                if cleanup:
                    path.unlink(missing_ok=True)
            else:
                out[name] = (path, token)
        return out

    def _check_journal_file(self, path: Path) -> tuple[str, str]:
        """``(group path, token)`` of a journal file whose headers are valid, else _BadJournalFile."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise _BadJournalFile("not an npz archive")
                missing = [k for k in ("name", "token") if k not in z.files]
                if missing:
                    raise _BadJournalFile(f"missing {' and '.join(missing)}")
                name, token = z["name"], z["token"]
                specs = {k: _array_spec(z, k) for k in z.files if k not in _RESERVED_RECORD_KEYS}
        except (FileNotFoundError, _BadJournalFile):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it is skipped
            raise _BadJournalFile(f"unreadable ({exc})") from None
        if not (is_text(name) and is_text(token)):
            raise _BadJournalFile("name and token must be strings")
        name, token = str(name), str(token)
        if not _TOKEN.fullmatch(token):
            raise _BadJournalFile(f"token {token!r} is not 32 hex digits")
        try:
            self._check_path(name)
        except ValueError as exc:
            raise _BadJournalFile(f"invalid entry name {name!r} ({exc})") from None
        if path.name != _journal_name(name):
            raise _BadJournalFile(f"its file name does not match its entry {self._entry_label(name)!r}")
        problem = self._record_problem(specs)
        if problem:
            raise _BadJournalFile(f"entry {self._entry_label(name)!r}: {problem}")
        return name, token

    def _committed_token(self, name: str) -> str | None:
        try:
            token = self._file()[name].attrs.get("token")
        except Exception:  # noqa: BLE001 - unreadable: not recognised as merged, so the journal wins
            return None
        return token.decode() if isinstance(token, bytes) else token

    # ------------------------------------------------------------------ writing
    def _put_record(self, path: str, record: dict[str, np.ndarray]) -> None:
        """Journal ``record`` as the entry at group ``path`` (replacing one there); atomic."""
        self._require_open()
        if self.mode == "r":
            raise PermissionError(f"{self.LABEL} store {self.path} is open read-only")
        if any(k in _RESERVED_RECORD_KEYS for k in record):
            raise ValueError(f"record keys {_RESERVED_RECORD_KEYS} are reserved")
        self._check_path(path)
        problem = self._record_problem(record)
        if problem:
            raise ValueError(f"{self.LABEL} store {self.path}: entry {self._entry_label(path)!r}: {problem}")
        token = uuid.uuid4().hex
        self._journal_dir.mkdir(parents=True, exist_ok=True)  # only removed when no writer is live
        npz = self._journal_dir / _journal_name(path)
        tmp = self._journal_dir / f".tmp-{os.getpid()}-{token}"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, name=np.array(path), token=np.array(token), **record)
            with self._commit_lock:  # never while a commit reads the journal
                os.replace(tmp, npz)
        finally:
            tmp.unlink(missing_ok=True)
        self._journal[path] = (npz, token)
        self._since_commit += 1
        if self.commit_every is not None and self._since_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Merge every valid journal file (this writer's and other live writers') into the newest
        committed file, atomically; no-op when there is nothing to merge."""
        self._require_open()
        if self.mode == "r":
            return
        with self._commit_lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        self._close_h5()
        loaded = self._load_index(cleanup=True)  # the newest file and every journal file now present
        target = {**(loaded or self._attrs), **self._given}
        attrs_json = self._journal_dir / _ATTRS_JSON
        if not self._journal and not attrs_json.exists() and self.path.exists() and target == self._file_attrs:
            self._attrs = target
            self._since_commit, self._dirty = 0, False
            return
        pending = dict(self._journal)
        tmp = Path(f"{self.path}.tmp-{os.getpid()}")
        self._close_h5()
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+" if self.path.exists() else "w", libver=_LIBVER) as f:
                for name, (path, token) in sorted(pending.items()):
                    if not self._write_entry(f, name, path, token):
                        del pending[name]
                for key, value in {**target, "delfi_version": __version__}.items():
                    f.attrs[key] = json.dumps(value, sort_keys=True) if key in self.JSON_ATTRS else value
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._attrs = {**target, "delfi_version": __version__}
        self._committed.update(pending)
        for path, _ in pending.values():
            path.unlink(missing_ok=True)
        self._journal = {}
        attrs_json.unlink(missing_ok=True)
        self._since_commit, self._dirty = 0, False

    def _write_entry(self, f: h5py.File, name: str, path: Path, token: str) -> bool:
        """Merge one journal file into its group; False (with a warning) if the file is bad."""
        try:
            with np.load(path, allow_pickle=False) as z:
                record = self._read_npz(z)
        except Exception as exc:  # noqa: BLE001 - skipped, left in place
            warnings.warn(f"ignoring journal file {path}: unreadable ({exc}) (left in place)", stacklevel=4)
            return False
        problem = self._record_problem(record)
        if problem:
            warnings.warn(f"ignoring journal file {path}: entry {self._entry_label(name)!r}: {problem} "
                          f"(left in place)", stacklevel=4)
            return False
        try:
            group = f.require_group(name)
        except (TypeError, ValueError) as exc:  # e.g. a dataset of another entry lies there
            warnings.warn(f"ignoring journal file {path}: cannot store entry {self._entry_label(name)!r} "
                          f"({exc}) (left in place)", stacklevel=4)
            return False
        if group.attrs.get("token") == token:  # merged by a commit whose cleanup was interrupted
            return True
        group.attrs.pop("complete", None)
        for key in self.DATASETS:
            if key in group:
                del group[key]
        for key in list(group.attrs):  # attrs of a replaced entry (e.g. an optional one) must go
            del group.attrs[key]
        self._write_group(group, record)
        group.attrs["token"] = token
        group.attrs["complete"] = True
        return True

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Commit (in write modes) and release the file and locks. Idempotent."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._close_h5()
            self._closed = True
            if self.mode != "r":
                self._release_locks()

    def _release_locks(self) -> None:
        """Release the writer lock; the last writer also removes the empty journal and the lock files."""
        self._writer_lock.release()
        try:
            self._commit_lock.acquire(exclusive=True)
        except OSError:
            return
        last = False
        try:
            last = self._writer_lock.acquire(exclusive=True, wait=False)
            if last:
                try:
                    self._journal_dir.rmdir()  # only if empty
                except OSError:
                    pass
                self._writer_lock.release(remove=True)
        except OSError:
            pass
        finally:
            self._commit_lock.release(remove=last)

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
        """Delete temps of dead processes: exactly ``<name>.tmp-<pid>`` and journal ``.tmp-<pid>-<hex>``
        (journal temps of this process are spared: another store object here may be writing one, as
        `_put_record` writes them outside the commit lock)."""
        h5_temp = re.compile(re.escape(self.path.name) + r"\.tmp-(\d+)")
        for folder, pattern, ours in ((self.path.parent, h5_temp, True), (self._journal_dir, _JOURNAL_TMP, False)):
            try:
                entries = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                match = pattern.fullmatch(entry)
                if match and _stale(int(match.group(1)), ours=ours) and (folder / entry).is_file():
                    (folder / entry).unlink(missing_ok=True)


def _journal_name(path: str) -> str:
    """The journal file name of the entry at group ``path``."""
    return f"{hashlib.sha1(path.encode('utf-8')).hexdigest()}.npz"
