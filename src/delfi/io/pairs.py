"""Pairs files in hloc's text format, and ways to make pairs.

One pair per line: ``name0 name1`` or ``name0 name1 score``, separated by whitespace; blank lines and
lines starting with ``#`` (after leading whitespace) are skipped. Names therefore cannot contain
whitespace, and a first name cannot start with ``#``: `write_pairs` refuses such names instead of
writing a file that would read back differently. Files are UTF-8 (a leading byte-order mark is
ignored); a file that is not raises ValueError naming the file, the line and the offending byte.

The "retrieval list" variant read by `pairs_from_list` also allows ``query db1 db2 ...`` (one query
and any number of database images; no scores). A ranking file read by `pairs_from_ranking` is a
pairs file in which every line has a score (``query db score``).
"""

from __future__ import annotations

import codecs
import io
import math
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = ["read_pairs", "read_utf8_text", "text_lines", "read_pairs_with_scores", "is_pairs_file", "write_pairs", "pairs_exhaustive", "pairs_from_ranking",
           "pairs_from_list"]

Pair = tuple[str, str]
ScoredPair = tuple[str, str, "float | None"]


def read_utf8_text(path: str | os.PathLike, what: str = "pairs and ranking files") -> str:
    """The whole file decoded as UTF-8 (BOM dropped); ValueError naming file, line and byte if it is not
    (``what`` names the kind of file in the message)."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                         f"{what} must be UTF-8 text") from None


def text_lines(path: str | os.PathLike, what: str = "pairs and ranking files") -> Iterator[tuple[int, list[str]]]:
    """(line number from 1, whitespace-separated fields) of each line that is not blank or a ``#`` comment.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (as Python's text mode reads them)."""
    for number, line in enumerate(io.StringIO(read_utf8_text(path, what), newline=None), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped.split()


def _error(path: str | os.PathLike, number: int, message: str, fields: list[str]) -> ValueError:
    return ValueError(f"{path}:{number}: {message}, got {' '.join(fields)!r}")


def _parse_score(path: str | os.PathLike, number: int, fields: list[str]) -> float:
    try:
        return float(fields[2])
    except ValueError:
        raise _error(path, number, f"the score {fields[2]!r} is not a number", fields) from None


def read_pairs_with_scores(path: str | os.PathLike) -> list[ScoredPair]:
    """All ``(name0, name1, score)`` of a pairs file, in file order; score None where a line has none.

    Raises:
        ValueError: a line without exactly 2 or 3 fields, or with a score that is not a number (the
            message names the file and the line number).
    """
    out: list[ScoredPair] = []
    for number, fields in text_lines(path):
        if len(fields) not in (2, 3):
            raise _error(path, number, "expected 'name0 name1 [score]'", fields)
        score = _parse_score(path, number, fields) if len(fields) == 3 else None
        out.append((fields[0], fields[1], score))
    return out


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """All ``(name0, name1)`` of a pairs file, in file order (scores are read and dropped)."""
    return [(a, b) for a, b, _ in read_pairs_with_scores(path)]


def is_pairs_file(path: str | os.PathLike, probe_bytes: int = 1 << 20) -> bool:
    """Whether ``path`` reads as a pairs file: UTF-8 lines of ``name0 name1 [score]`` (what
    `write_pairs` writes), judged on its first ``probe_bytes`` bytes (a partial last line is ignored).

    Pairs files carry no signature, so this is how a command decides that an existing output may
    be replaced: a user's other text (or any binary file) is not a pairs file and must be kept.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(probe_bytes + 1)
    except OSError:
        return False
    if len(data) > probe_bytes:
        end = data.rfind(b"\n", 0, probe_bytes)
        if end < 0:  # no line in the whole probe: not a file of short text lines
            return False
        data = data[: end + 1]  # whole lines only
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    for line in io.StringIO(text, newline=None):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3):
            return False
        if len(fields) == 3:
            try:
                float(fields[2])
            except ValueError:
                return False
    return True


def _check_name(name: object, first: bool) -> str:
    if not isinstance(name, str):
        raise TypeError(f"image names must be str, got {type(name).__name__}: {name!r}")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"image name {name!r} cannot be written to a pairs file (empty or contains whitespace)")
    if first and name.startswith("#"):
        raise ValueError(f"image name {name!r} cannot be the first of a pair: the line would read as a comment")
    return name


def write_pairs(path: str | os.PathLike, pairs: Iterable[Sequence], scores: Sequence[float | None] | None = None,
                ) -> None:
    """Write a pairs file atomically (a temp file in the same folder, then `os.replace`).

    Args:
        path: the file to write (replaced if it exists).
        pairs: ``(name0, name1)`` items, or ``(name0, name1, score)`` items (score may be None).
        scores: one score per pair (None entries write no score); overrides scores inside ``pairs``.

    Raises:
        ValueError: a name that the format cannot represent (whitespace, empty, or a first name
            starting with ``#``), named in the message; or ``scores`` of the wrong length. Nothing is
            written then.
    """
    pairs = list(pairs)
    if scores is not None and len(scores) != len(pairs):
        raise ValueError(f"got {len(scores)} scores for {len(pairs)} pairs")
    lines = []
    for i, item in enumerate(pairs):
        if len(item) not in (2, 3):
            raise ValueError(f"pair {i} must be (name0, name1) or (name0, name1, score), got {item!r}")
        name0, name1 = _check_name(item[0], True), _check_name(item[1], False)
        score = scores[i] if scores is not None else (item[2] if len(item) == 3 else None)
        lines.append(f"{name0} {name1}" if score is None else f"{name0} {name1} {float(score)!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unique(names: Iterable[str]) -> list[str]:
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"image names must be str, got {bad[0]!r}")
    return sorted(set(names))


def pairs_exhaustive(names: Iterable[str], names_db: Iterable[str] | None = None) -> list[Pair]:
    """All pairs to match.

    Without ``names_db``: every unordered pair of distinct ``names`` once, as ``(a, b)`` with
    ``a < b``, sorted (n distinct names give n * (n - 1) / 2 pairs). With ``names_db``: every
    ``(query, db)`` of ``names`` x ``names_db`` except identical names, sorted. Duplicate names
    are ignored.
    """
    queries = _unique(names)
    if names_db is None:
        return [(a, b) for i, a in enumerate(queries) for b in queries[i + 1:]]
    db = _unique(names_db)
    return [(q, d) for q in queries for d in db if q != d]


def pairs_from_ranking(ranking_path: str | os.PathLike, top_k: int, *, skip_identical: bool = False) -> list[Pair]:
    """The ``top_k`` best database images of each query of a ranking file (``query db score`` lines).

    A query's lines may be anywhere in the file and in any order: they are sorted by score, highest
    first, ties keeping their file order. Queries come out in the order they first appear.
    ``skip_identical`` drops ``(q, q)`` lines before ranking.

    Raises:
        ValueError: ``top_k`` < 1, or a line without a score (file and line number in the message).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    ranked: dict[str, list[tuple[float, str]]] = {}
    for number, fields in text_lines(ranking_path):
        if len(fields) not in (3, 5):  # 5: a reranked file (delfi.io.rankings) with global score and inliers
            raise _error(ranking_path, number, "expected 'query db score [global_score inliers]'", fields)
        score = _parse_score(ranking_path, number, fields)
        if math.isnan(score):
            raise _error(ranking_path, number, "the score is NaN", fields)
        query, db = fields[0], fields[1]
        if skip_identical and query == db:
            continue
        ranked.setdefault(query, []).append((score, db))
    out: list[Pair] = []
    for query, candidates in ranked.items():
        best = sorted(candidates, key=lambda c: -c[0])  # sorted is stable: ties keep file order
        out.extend((query, db) for _, db in best[:top_k])
    return out


def pairs_from_list(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a list with ``name0 name1`` or ``query db1 db2 ...`` lines, in file order.

    Every field after the first is a name (this variant has no scores: read scored files with
    `read_pairs`). A line with a single name raises ValueError naming the file and line number.
    """
    out: list[Pair] = []
    for number, fields in text_lines(path):
        if len(fields) < 2:
            raise _error(path, number, "expected 'query db1 [db2 ...]'", fields)
        out.extend((fields[0], db) for db in fields[1:])
    return out
