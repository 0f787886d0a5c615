"""The on-disk index directory shared by every index kind.

Layout::

    <dir>/meta.json    {"format": "delfi-index", "format_version": 1, "kind": ..., "dim": ...,
                        "count": ..., "config": {...}, "delfi_version": ...,
                        "files": {"names.txt": "<sha256>", ...}}
    <dir>/names.txt    one database name per line, in id order
    <dir>/...          the kind's own files (vectors, FAISS index, ASMK arrays), each listed in
                       ``files`` with its sha256

Writing goes to ``<dir>.tmp-<pid>`` and is renamed into place at the end, so an interrupted save
never leaves a half-written index under the final name (an existing index is replaced only after
the new one is complete). Loading checks every checksum and names the file that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["IndexFormatError", "FORMAT", "FORMAT_VERSION", "sha256_file", "write_index_dir", "read_index_meta",
           "read_names", "load_index"]

FORMAT = "delfi-index"
FORMAT_VERSION = 1


class IndexFormatError(ValueError):
    """An index directory that is missing, incomplete, corrupted or of another format."""


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


def write_index_dir(
    path: str | os.PathLike,
    kind: str,
    dim: int,
    names: Sequence[str],
    config: dict[str, Any],
    write_files: Callable[[Path], None],
) -> Path:
    """Write an index directory atomically.

    Args:
        path: the index directory to create (replaced if it exists).
        kind: index kind (``"exact"``, ``"flat"``, ``"ivfpq"``, ``"asmk"``).
        dim: descriptor dimension.
        names: database names in id order (written to ``names.txt``).
        config: JSON-serialisable settings needed to load and use the index.
        write_files: called with the temporary directory; writes the kind's own files there.

    Returns:
        The final directory path.
    """
    from delfi import __version__

    final = Path(path)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        names = _check_names(names)
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
        if final.exists():
            old = final.with_name(f"{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_index_meta(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``meta.json`` of an index directory (checksums too when ``verify``).

    Raises:
        IndexFormatError: naming the directory or file and what is wrong.
    """
    root = Path(path)
    meta_path = root / "meta.json"
    if not root.is_dir():
        raise IndexFormatError(f"{root}: not an index directory (it does not exist or is a file)")
    if not meta_path.is_file():
        raise IndexFormatError(f"{meta_path}: missing; {root} is not a delfi index (build one with `delfi index build`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFormatError(f"{meta_path}: format is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                               f"(this delfi reads {FORMAT_VERSION})")
    for key in ("kind", "dim", "count", "config", "files"):
        if key not in meta:
            raise IndexFormatError(f"{meta_path}: the key {key!r} is missing")
    if verify:
        for name, expected in meta["files"].items():
            file = root / name
            if not file.is_file():
                raise IndexFormatError(f"{file}: listed in meta.json but missing")
            actual = sha256_file(file)
            if actual != expected:
                raise IndexFormatError(f"{file}: checksum mismatch (sha256 {actual[:12]}..., meta.json says "
                                       f"{expected[:12]}...): the file was changed or truncated")
    return meta


def read_names(path: str | os.PathLike, count: int | None = None) -> list[str]:
    """The database names of an index directory, in id order."""
    file = Path(path) / "names.txt"
    names = file.read_text(encoding="utf-8").splitlines()
    if count is not None and len(names) != count:
        raise IndexFormatError(f"{file}: {len(names)} names but meta.json says {count}")
    return names


def load_index(path: str | os.PathLike, *, verify: bool = True):
    """Load any delfi index directory: a `GlobalIndex` or an `ASMKIndex` according to its kind."""
    meta = read_index_meta(path, verify=verify)
    if meta["kind"] == "asmk":
        from delfi.retrieval.asmk import ASMKIndex

        return ASMKIndex.load(path, verify=False, meta=meta)
    from delfi.retrieval.index import GlobalIndex

    return GlobalIndex.load(path, verify=False, meta=meta)
