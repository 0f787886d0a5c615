"""Tests of pairs files (delfi.io.pairs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from delfi.io.pairs import (
    pairs_exhaustive,
    pairs_from_list,
    pairs_from_ranking,
    read_pairs,
    read_pairs_with_scores,
    write_pairs,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_comments_blanks_scores(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.txt", "# a comment\n\na.jpg b.jpg\n  \n\tsub/c.jpg  d.jpg\t0.5\n"
                                         "   # indented comment\nü.jpg e.jpg -1e-3\nlast.jpg x.jpg")
    assert read_pairs(path) == [("a.jpg", "b.jpg"), ("sub/c.jpg", "d.jpg"), ("ü.jpg", "e.jpg"), ("last.jpg", "x.jpg")]
    assert read_pairs_with_scores(path) == [("a.jpg", "b.jpg", None), ("sub/c.jpg", "d.jpg", 0.5),
                                            ("ü.jpg", "e.jpg", -1e-3), ("last.jpg", "x.jpg", None)]
    assert read_pairs(write(tmp_path / "empty.txt", "")) == []
    assert read_pairs(write(tmp_path / "crlf.txt", "a b\r\nc d 1\r\n")) == [("a", "b"), ("c", "d")]


@pytest.mark.parametrize("line", ["lonely.jpg", "a b c d", "a b notanumber"])
def test_malformed_line(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "bad.txt", f"# header\na b\n\n{line}\nc d\n")
    with pytest.raises(ValueError, match=r"bad\.txt:4:") as info:
        read_pairs(path)
    assert line in str(info.value)
    with pytest.raises(ValueError, match=r"bad\.txt:4:"):
        read_pairs_with_scores(path)


def test_write_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    pairs = [("a.jpg", "b.jpg"), ("sub/ü.jpg", "c#1.jpg"), ("100%.jpg", "d.jpg")]
    write_pairs(path, pairs)
    assert path.read_text(encoding="utf-8") == "a.jpg b.jpg\nsub/ü.jpg c#1.jpg\n100%.jpg d.jpg\n"
    assert read_pairs(path) == pairs
    scores = [0.1, None, 1 / 3]
    write_pairs(path, pairs, scores)
    assert read_pairs_with_scores(path) == [(a, b, s) for (a, b), s in zip(pairs, scores)]  # exact floats
    write_pairs(path, [("a", "b", 2.5), ("c", "d", None), ("e", "f")])
    assert read_pairs_with_scores(path) == [("a", "b", 2.5), ("c", "d", None), ("e", "f", None)]
    write_pairs(path, [])
    assert read_pairs(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


@pytest.mark.parametrize("bad", [("a b.jpg", "c.jpg"), ("a.jpg", "c d.jpg"), ("a.jpg", "tab\t.jpg"),
                                 ("a.jpg", "new\nline.jpg"), ("", "x.jpg"), ("#a.jpg", "x.jpg")])
def test_write_rejects_unrepresentable_names(tmp_path: Path, bad: tuple[str, str]) -> None:
    path = tmp_path / "out.txt"
    write_pairs(path, [("keep", "me")])
    offending = next(n for n in bad if not n or any(c.isspace() for c in n) or n.startswith("#"))
    with pytest.raises(ValueError) as info:
        write_pairs(path, [("ok", "fine"), bad])
    assert repr(offending) in str(info.value)
    assert read_pairs(path) == [("keep", "me")]  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 scores for 1 pairs"):
        write_pairs(tmp_path / "x.txt", [("a", "b")], [1.0, 2.0])
    with pytest.raises(ValueError, match="pair 0"):
        write_pairs(tmp_path / "x.txt", [("a",)])
    with pytest.raises(TypeError):
        write_pairs(tmp_path / "x.txt", [("a", 3)])
    assert not (tmp_path / "x.txt").exists()


@pytest.mark.parametrize("n", [0, 1, 2, 5, 17])
def test_exhaustive_counts(n: int) -> None:
    names = [f"img{i:02d}.jpg" for i in reversed(range(n))]
    pairs = pairs_exhaustive(names)
    assert len(pairs) == n * (n - 1) // 2 == len(set(pairs))
    assert pairs == sorted(pairs) and all(a < b for a, b in pairs)
    assert pairs_exhaustive(names + names[:2]) == pairs  # duplicates ignored
    assert pairs_exhaustive(iter(names)) == pairs


def test_exhaustive_query_db() -> None:
    pairs = pairs_exhaustive(["q2", "q1", "shared"], ["d1", "shared", "d0"])
    assert pairs == [("q1", "d0"), ("q1", "d1"), ("q1", "shared"), ("q2", "d0"), ("q2", "d1"), ("q2", "shared"),
                     ("shared", "d0"), ("shared", "d1")]
    assert len(pairs_exhaustive([f"q{i}" for i in range(4)], [f"d{i}" for i in range(6)])) == 24
    assert pairs_exhaustive(["a"], []) == []


def test_ranking_top_k_stable(tmp_path: Path) -> None:
    path = write(tmp_path / "ranking.txt", "\n".join([
        "# query db score",
        "q2 d1 0.5",
        "q1 d1 0.1",
        "q1 d2 0.9",
        "q2 d2 0.7",
        "q1 d3 0.5",
        "q1 d4 0.5",  # tie with d3: file order kept
        "q2 d3 0.7",  # tie with d2
        "q1 d5 0.5",
        "q1 q1 1.0",
    ]))
    assert pairs_from_ranking(path, 1) == [("q2", "d2"), ("q1", "q1")]
    assert pairs_from_ranking(path, 3) == [("q2", "d2"), ("q2", "d3"), ("q2", "d1"),
                                           ("q1", "q1"), ("q1", "d2"), ("q1", "d3")]
    assert pairs_from_ranking(path, 3, skip_identical=True)[3:] == [("q1", "d2"), ("q1", "d3"), ("q1", "d4")]
    assert len(pairs_from_ranking(path, 100)) == 9
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k"):
            pairs_from_ranking(path, bad)


def test_ranking_requires_scores(tmp_path: Path) -> None:
    path = write(tmp_path / "ranking.txt", "q d1 0.3\nq d2\n")
    with pytest.raises(ValueError, match=r"ranking\.txt:2:"):
        pairs_from_ranking(path, 5)


def test_pairs_from_list(tmp_path: Path) -> None:
    path = write(tmp_path / "list.txt", "# retrieval list\nq1 d1 d2 d3\n\na b\nq2   d9\n")
    assert pairs_from_list(path) == [("q1", "d1"), ("q1", "d2"), ("q1", "d3"), ("a", "b"), ("q2", "d9")]
    bad = write(tmp_path / "bad.txt", "q1 d1\nq2\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2:.*'q2'"):
        pairs_from_list(bad)


def test_not_utf8_names_file_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"a.jpg b.jpg\n# fine\nc\xe9.jpg d.jpg\n")
    for read in (read_pairs, pairs_from_list, lambda p: pairs_from_ranking(p, 1)):
        with pytest.raises(ValueError, match=r"latin1\.txt:3: not UTF-8 text \(byte 0xe9 at column 2\)"):
            read(path)


def test_bom_and_old_mac_line_ends_are_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg b.jpg\rc.jpg d.jpg 2\r\n")
    assert read_pairs_with_scores(path) == [("a.jpg", "b.jpg", None), ("c.jpg", "d.jpg", 2.0)]


def test_is_pairs_file(tmp_path: Path) -> None:
    from delfi.io.pairs import is_pairs_file

    assert is_pairs_file(write(tmp_path / "p.txt", "# c\na b\nc d 0.5\n"))
    assert is_pairs_file(write(tmp_path / "empty.txt", ""))
    assert not is_pairs_file(write(tmp_path / "prose.txt", "my notes about images\n"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (2 << 20))  # no line break in the probed first MiB: not a pairs file
    assert not is_pairs_file(big)
    assert not is_pairs_file(write(tmp_path / "list.txt", "q db1 db2 db3\n"))  # a list, not a pairs file
    assert not is_pairs_file(write(tmp_path / "words.txt", "a b notanumber\n"))
    (tmp_path / "bin").write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe")
    assert not is_pairs_file(tmp_path / "bin") and not is_pairs_file(tmp_path / "missing.txt")
    big = tmp_path / "big.txt"
    big.write_text("a b\n" * 1000 + "not pairs at all\n")
    assert is_pairs_file(big, probe_bytes=100) and not is_pairs_file(big)
