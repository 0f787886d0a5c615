"""Ranking files: hloc's pairs format with scores, plus two optional columns after reranking.

One result per line, ``query db score`` or, after reranking, ``query db score global_score inliers``
(inliers -1 = not verified). A query's lines are written best first, and their scores decrease
(reranked scores are fused so that they keep the new order), so any reader that sorts by score, such
as `delfi.io.pairs.pairs_from_ranking`, sees the same order. Blank lines and ``#`` comments are
skipped; names cannot contain whitespace.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from delfi.types import Ranking

__all__ = ["read_ranking", "write_ranking", "RankingFormatError"]

HEADER = "# delfi ranking: query db score [global_score inliers]"


class RankingFormatError(ValueError):
    """A ranking file line that cannot be read (the message names the file and line)."""


def _name(value: str) -> str:
    if not value or any(c.isspace() for c in value) or value.startswith("#"):
        raise ValueError(f"ranking names cannot be empty, contain whitespace or start with '#': {value!r}")
    return value


def write_ranking(path: str | os.PathLike, ranking: Ranking) -> Path:
    """Write ``ranking`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    extra = ranking.global_scores is not None and ranking.inliers is not None
    lines = [HEADER]
    for q, query in enumerate(ranking.queries):
        _name(query)
        for k, idx in enumerate(ranking.indices[q]):
            if idx < 0:
                continue
            line = f"{query} {_name(ranking.database[idx])} {ranking.scores[q, k]:.9g}"
            if extra:
                line += f" {ranking.global_scores[q, k]:.9g} {int(ranking.inliers[q, k])}"
            lines.append(line)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _float(path, number: int, fields: list[str], column: int, what: str) -> float:
    try:
        value = float(fields[column])
    except ValueError:
        raise RankingFormatError(f"{path}:{number}: the {what} {fields[column]!r} is not a number") from None
    if not math.isfinite(value):
        raise RankingFormatError(f"{path}:{number}: the {what} {fields[column]!r} is not finite (NaN or infinite)")
    return value


def _lines(path: str | os.PathLike):
    """(line number, text) of a file, each line decoded as UTF-8 (RankingFormatError naming the line)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RankingFormatError(f"{path}:{number}: not UTF-8 text (is this a ranking file?)") from None


def read_ranking(path: str | os.PathLike, database: Sequence[str] | None = None) -> Ranking:
    """Read a ranking file.

    Each query's results are ordered by decreasing score (ties keep file order); queries come in the
    order they first appear. ``database`` fixes the id space (e.g. the index's names); without it the
    database is the result names in order of first appearance.

    Raises:
        RankingFormatError: naming ``path:line``: a line that is not UTF-8, a wrong number of
            columns, a score that is not a finite number, a name not in ``database`` or a repeated
            result. OSError: the file cannot be opened.
    """
    rows: dict[str, list[tuple[float, str, float, int, int]]] = {}
    extra_columns: bool | None = None
    if os.path.isdir(path):
        raise RankingFormatError(f"{path} is a folder, not a ranking file")
    for number, line in _lines(path):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (3, 5):
            raise RankingFormatError(f"{path}:{number}: expected 'query db score [global_score inliers]', "
                                     f"got {len(fields)} column(s): {line.strip()[:200]!r}")
        has_extra = len(fields) == 5
        if extra_columns is None:
            extra_columns = has_extra
        elif extra_columns != has_extra:
            raise RankingFormatError(f"{path}:{number}: mixes 3- and 5-column lines")
        score = _float(path, number, fields, 2, "score")
        g = _float(path, number, fields, 3, "global score") if has_extra else math.nan
        try:
            inl = int(fields[4]) if has_extra else -1
        except ValueError:
            raise RankingFormatError(f"{path}:{number}: the inlier count {fields[4]!r} is not an integer") from None
        if inl < -1:
            raise RankingFormatError(f"{path}:{number}: the inlier count {inl} is negative (-1 = not verified)")
        rows.setdefault(fields[0], []).append((score, fields[1], g, inl, number))
    names = list(database) if database is not None else list(dict.fromkeys(r[1] for rs in rows.values() for r in rs))
    ids = {n: i for i, n in enumerate(names)}
    depth = max((len(r) for r in rows.values()), default=0)
    shape = (len(rows), depth)
    indices = np.full(shape, -1, dtype=np.int64)
    scores = np.full(shape, np.nan)
    global_scores = np.full(shape, np.nan)
    inliers = np.full(shape, -1, dtype=np.int64)
    for q, (query, results) in enumerate(rows.items()):
        ordered = sorted(results, key=lambda r: -r[0])
        seen: set[str] = set()
        for k, (score, db, g, inl, number) in enumerate(ordered):
            if db not in ids:
                raise RankingFormatError(f"{path}:{number}: {db!r} (a result of {query!r}) is not in the database")
            if db in seen:
                raise RankingFormatError(f"{path}:{number}: {db!r} is listed twice for {query!r}")
            seen.add(db)
            indices[q, k], scores[q, k], global_scores[q, k], inliers[q, k] = ids[db], score, g, inl
    return Ranking(list(rows), names, indices, scores,
                   global_scores if extra_columns else None, inliers if extra_columns else None)
