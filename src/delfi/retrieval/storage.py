"""The on-disk index directory shared by every index kind.

Layout::

    <dir>/meta.json    {"format": "delfi-index", "format_version": 1, "kind": ..., "dim": ...,
                        "count": ..., "config": {...}, "delfi_version": ...,
                        "files": {"names.txt": "<sha256>", ...}}
    <dir>/names.txt    one database name per line, in id order
    <dir>/...          the kind's own files (vectors, FAISS index, ASMK arrays), each listed in
                       ``files`` with its sha256

Every name in ``files`` is a plain file name inside the directory (no separators, no ``..``, no
link leading out of it): an index never makes delfi read or hash a file elsewhere.

Writing goes to a new ``<dir>.tmp-<random>`` beside the target and is renamed into place at the
end, so an interrupted save never leaves a half-written index under the final name. An existing
path is replaced only when it is a delfi index holding nothing but the files it lists (and only
with ``overwrite``): the old directory is renamed aside, the new one renamed in, and only then are
the old index's own files removed. Anything else (a file, a folder of other files, an index with
files of its own added) is refused with `IndexPathError`, untouched. Loading checks every
checksum and names the file that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["IndexFormatError", "IndexPathError", "FORMAT", "FORMAT_VERSION", "sha256_file", "write_index_dir",
           "check_index_target", "read_index_meta", "read_names", "index_file", "load_index"]

FORMAT = "delfi-index"
FORMAT_VERSION = 1
_OWN = ("meta.json", "names.txt")  # written in every index besides the files listed in meta.json


class IndexFormatError(ValueError):
    """An index directory that is missing, incomplete, corrupted or of another format."""


class IndexPathError(ValueError):
    """A path an index cannot be written to without losing something (the message says why)."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_names(names: Sequence[str]) -> list[str]:
    out = [str(n) for n in names]
    for n in out:
        if not n or any(c in n for c in "\n\r"):
            raise ValueError(f"index names must be non-empty and on one line, got {n!r}")
    return out


def index_file(root: str | os.PathLike, name: Any, where: str = "meta.json") -> Path:
    """``root / name`` for a file name read from an index, checked to stay inside ``root``.

    Raises:
        IndexFormatError: ``name`` is not a plain file name (empty, a separator, ``.``/``..``, an
            absolute path, a NUL) or is a link whose target lies outside ``root``; the message names
            ``root/where`` and the entry.
    """
    root = Path(root)
    bad = (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
           or "\0" in name or os.sep in name or (os.altsep is not None and os.altsep in name)
           or os.path.isabs(name))
    if bad:
        raise IndexFormatError(f"{root / where}: the file entry {name!r} is not a plain file name inside the "
                               "index directory (refused: an index may only name its own files)")
    file = root / name
    if file.is_symlink():
        target = Path(os.path.realpath(file))
        if target.parent != Path(os.path.realpath(root)):
            raise IndexFormatError(f"{root / where}: the file entry {name!r} is a link to {target}, outside the "
                                   "index directory (refused)")
    return file


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(meta_path: Path, meta: Any) -> dict[str, Any]:
    """The keys and value types of a parsed meta.json (IndexFormatError naming the key otherwise)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFormatError(f"{meta_path}: format is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                               f"(this delfi reads {FORMAT_VERSION})")
    for key in ("kind", "dim", "count", "config", "files"):
        if key not in meta:
            raise IndexFormatError(f"{meta_path}: the key {key!r} is missing")
    checks = {
        "kind": (isinstance(meta["kind"], str), "a string"),
        "dim": (_is_int(meta["dim"]) and meta["dim"] >= 1, "a positive integer"),
        "count": (_is_int(meta["count"]) and meta["count"] >= 0, "a non-negative integer"),
        "config": (isinstance(meta["config"], dict), "an object"),
        "files": (isinstance(meta["files"], dict) and all(isinstance(v, str) for v in meta["files"].values()),
                  "an object of file name -> sha256 string"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise IndexFormatError(f"{meta_path}: {key!r} must be {expected}, got {meta[key]!r}"[:400])
    if "names.txt" not in meta["files"]:
        raise IndexFormatError(f"{meta_path}: 'files' does not list names.txt")
    return meta


def _parse_meta(root: Path) -> dict[str, Any]:
    meta_path = root / "meta.json"
    if not root.is_dir():
        raise IndexFormatError(f"{root}: not an index directory (it does not exist or is a file)")
    if meta_path.is_symlink() or not meta_path.is_file():
        raise IndexFormatError(f"{meta_path}: missing; {root} is not a delfi index (build one with `delfi index build`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{meta_path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise IndexFormatError(f"{meta_path}: cannot be read ({exc.strerror or exc})") from None
    meta = _check_meta(meta_path, meta)
    for name in meta["files"]:
        index_file(root, name)
    return meta


def read_index_meta(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``meta.json`` of an index directory (checksums too when ``verify``).

    Every key has its type checked and every file entry must be a plain name inside the directory.

    Raises:
        IndexFormatError: naming the directory or file and what is wrong.
    """
    root = Path(path)
    meta = _parse_meta(root)
    if verify:
        for name, expected in meta["files"].items():
            file = index_file(root, name)
            if not file.is_file():
                raise IndexFormatError(f"{file}: listed in meta.json but missing")
            try:
                actual = sha256_file(file)
            except OSError as exc:
                raise IndexFormatError(f"{file}: cannot be read ({exc.strerror or exc})") from None
            if actual != expected:
                raise IndexFormatError(f"{file}: checksum mismatch (sha256 {actual[:12]}..., meta.json says "
                                       f"{expected[:12]}...): the file was changed or truncated")
    return meta


def read_names(path: str | os.PathLike, count: int | None = None) -> list[str]:
    """The database names of an index directory, in id order (UTF-8, one per line, unique, non-empty)."""
    file = index_file(path, "names.txt")
    try:
        names = file.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise IndexFormatError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    if count is not None and len(names) != count:
        raise IndexFormatError(f"{file}: {len(names)} names but meta.json says {count}")
    empty = next((i for i, n in enumerate(names, start=1) if not n), None)
    if empty is not None:
        raise IndexFormatError(f"{file}:{empty}: empty name")
    if len(set(names)) != len(names):
        raise IndexFormatError(f"{file}: duplicate names")
    return names


def check_index_target(path: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Check that an index can be written at ``path`` without losing anything.

    Returns:
        The files of the existing index there that a save would replace (empty when ``path`` does not
        exist or is an empty folder).

    Raises:
        IndexPathError: ``path`` is a link, a file, a folder that is not a delfi index, an index that
            holds other files too, or an index while ``overwrite`` is False. Nothing is touched.
    """
    target = Path(path)
    if target.is_symlink():
        raise IndexPathError(f"{target} is a symbolic link: give the index directory itself")
    if not target.exists():
        return []
    cwd = Path.cwd()
    if target.is_dir() and (cwd == target.resolve() or target.resolve() in cwd.parents):
        raise IndexPathError(f"{target} is the current folder (or holds it): an index is swapped in as a whole, "
                             f"give a new folder name, e.g. {Path(target, 'db.index')}")
    if not target.is_dir():
        raise IndexPathError(f"{target} exists and is a file, not a delfi index: refusing to replace it "
                             "(choose another output path)")
    entries = sorted(os.listdir(target))
    if not entries:
        return []
    try:
        meta = _parse_meta(target)
    except IndexFormatError as exc:
        raise IndexPathError(f"{target} exists and is not a delfi index ({exc}): refusing to replace it "
                             "(choose another output path, or move it away yourself)") from None
    own = set(meta["files"]) | set(_OWN)
    foreign = [e for e in entries if e not in own or not (target / e).is_file() or (target / e).is_symlink()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise IndexPathError(f"{target} holds a delfi index but also files delfi did not write there ({shown}): "
                             "refusing to replace it (choose another output path)")
    if not overwrite:
        raise IndexPathError(f"{target} already holds a delfi index: pass --overwrite (overwrite=True) to replace it")
    return entries


def _remove_index_files(folder: Path, files: Sequence[str]) -> None:
    """Remove the listed files of a replaced index and the folder once empty (best effort)."""
    for name in files:
        try:
            (folder / name).unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass  # something else is in there: keep it


def write_index_dir(
    path: str | os.PathLike,
    kind: str,
    dim: int,
    names: Sequence[str],
    config: dict[str, Any],
    write_files: Callable[[Path], None],
    *,
    overwrite: bool = True,
) -> Path:
    """Write an index directory atomically.

    Args:
        path: the index directory to create; an existing delfi index there is replaced when
            ``overwrite`` (anything else at ``path`` is refused, see `check_index_target`).
        kind: index kind (``"exact"``, ``"flat"``, ``"ivfpq"``, ``"asmk"``).
        dim: descriptor dimension.
        names: database names in id order (written to ``names.txt``).
        config: JSON-serialisable settings needed to load and use the index.
        write_files: called with the temporary directory; writes the kind's own files there.
        overwrite: replace an existing delfi index at ``path``.

    Returns:
        The final directory path.

    Raises:
        IndexPathError: ``path`` cannot be replaced (checked before writing and again before the swap).
    """
    from delfi import __version__

    final = Path(path)
    check_index_target(final, overwrite)
    names = _check_names(names)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        (tmp / "names.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        write_files(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != "meta.json"}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "dim": int(dim),
            "count": len(names),
            "config": config,
            "delfi_version": __version__,
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        replaced = check_index_target(final, overwrite)  # again: it may have changed while we wrote
        if final.exists():
            old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # put the old index back
                raise
            _remove_index_files(old, replaced)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory
        raise
    return final


def load_index(path: str | os.PathLike, *, verify: bool = True):
    """Load any delfi index directory: a `GlobalIndex` or an `ASMKIndex` according to its kind."""
    meta = read_index_meta(path, verify=verify)
    if meta["kind"] == "asmk":
        from delfi.retrieval.asmk import ASMKIndex

        return ASMKIndex.load(path, verify=False, meta=meta)
    from delfi.retrieval.index import GlobalIndex

    return GlobalIndex.load(path, verify=False, meta=meta)
