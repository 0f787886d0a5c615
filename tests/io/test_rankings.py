"""Ranking files and the `Ranking` type."""

from __future__ import annotations

import numpy as np
import pytest

from delfi.io.pairs import pairs_from_ranking
from delfi.io.rankings import RankingFormatError, read_ranking, write_ranking
from delfi.types import Ranking


def _ranking(extra: bool) -> Ranking:
    return Ranking(
        ["q1", "q2"], ["a", "b", "c"], [[2, 0, -1], [1, 2, 0]], [[3.9, 0.5, np.nan], [2.8, 0.7, 0.1]],
        global_scores=[[0.4, 0.9, np.nan], [0.1, 0.7, 0.8]] if extra else None,
        inliers=[[3, -1, -1], [2, 0, -1]] if extra else None,
    )


@pytest.mark.parametrize("extra", [False, True])
def test_round_trip(tmp_path, extra):
    r = _ranking(extra)
    path = write_ranking(tmp_path / "r.txt", r)
    back = read_ranking(path, database=r.database)
    np.testing.assert_array_equal(back.indices, r.indices)
    np.testing.assert_allclose(back.scores, r.scores)
    assert back.queries == r.queries
    if extra:
        np.testing.assert_array_equal(back.inliers, r.inliers)
        np.testing.assert_allclose(back.global_scores, r.global_scores)
    else:
        assert back.inliers is None and back.global_scores is None
    # pairs_from_ranking reads both variants in the same order
    assert pairs_from_ranking(path, 2) == [("q1", "c"), ("q1", "a"), ("q2", "b"), ("q2", "c")]


def test_reader_sorts_by_score_and_builds_database(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("q x 0.1\nq y 0.9\n\n# comment\np x 0.5\n")
    r = read_ranking(path)
    assert r.database == ["x", "y"] and r.results("q") == [("y", 0.9), ("x", 0.1)]
    assert r.results("p") == [("x", 0.5)]


@pytest.mark.parametrize("text, message", [
    ("q a\n", "expected 'query db score"),
    ("q a nope\n", "not a number"),
    ("q a nan\n", "NaN"),
    ("q a 1 0.5 x\n", "not an integer"),
    ("q a 1\nq b 1 0.5 3\n", "mixes"),
    ("q a 1\nq a 0.5\n", "twice"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(RankingFormatError, match=message) as info:
        read_ranking(path)
    assert "bad.txt" in str(info.value)


def test_unknown_database_name(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("q zzz 1\n")
    with pytest.raises(RankingFormatError, match="not in the database"):
        read_ranking(path, database=["a"])


def test_ranks_complete_missing_ids_in_order():
    r = Ranking(["q"], ["a", "b", "c", "d"], [[2, 0]], [[1.0, 0.5]])
    np.testing.assert_array_equal(r.ranks()[:, 0], [2, 0, 1, 3])


def test_validation():
    with pytest.raises(ValueError, match="twice"):
        Ranking(["q"], ["a", "b"], [[1, 1]], [[1.0, 0.5]])
    with pytest.raises(ValueError, match="indices"):
        Ranking(["q"], ["a"], [[3]], [[1.0]])
    with pytest.raises(ValueError, match="whitespace"):
        write_ranking("/tmp/never.txt", Ranking(["q x"], ["a"], [[0]], [[1.0]]))


def test_empty_ranking_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# no results\n")
    r = read_ranking(path)
    assert len(r) == 0 and r.indices.shape == (0, 0)
    write_ranking(tmp_path / "again.txt", r)
    assert len(read_ranking(tmp_path / "again.txt")) == 0
