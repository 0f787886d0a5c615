import numpy as np
import pytest

from delfi.datasets.vpr import list_split, parse_utm, utm_array
from delfi.eval.vpr import (
    first_positive_rank,
    positives_within,
    rank_changes,
    recall_at_n,
)


def test_parse_utm_valid():
    name = "@0543256.96@4178906.93@10@S@037.75643@-122.50903@x@@@@@@pitch1_yaw1@.jpg"
    assert parse_utm(name) == pytest.approx((543256.96, 4178906.93))
    assert parse_utm("/a/b/@1.5@-2@.jpg") == (1.5, -2.0)


@pytest.mark.parametrize("name", ["plain.jpg", "@abc@12@.jpg", "@12@.jpg"])
def test_parse_utm_malformed(name):
    with pytest.raises(ValueError, match="malformed VPR file name"):
        parse_utm(name)


def test_list_split_and_utm(tmp_path):
    db = tmp_path / "val" / "database"
    qs = tmp_path / "val" / "queries"
    db.mkdir(parents=True)
    qs.mkdir(parents=True)
    for n in ["@20@5@.jpg", "@10@0@.jpg"]:
        (db / n).write_bytes(b"")
    (db / "notes.txt").write_text("x")
    (qs / "@11@1@.jpg").write_bytes(b"")
    dbp, qp = list_split(tmp_path, "val")
    assert [p.name for p in dbp] == ["@10@0@.jpg", "@20@5@.jpg"]
    assert [p.name for p in qp] == ["@11@1@.jpg"]
    np.testing.assert_array_equal(utm_array(dbp), [[10.0, 0.0], [20.0, 5.0]])
    assert utm_array([]).shape == (0, 2)
    with pytest.raises(FileNotFoundError, match="test"):
        list_split(tmp_path, "test")


def test_positives_radius_inclusive():
    db = np.array([[25.0, 0.0], [25.01, 0.0], [0.0, -3.0], [15.0, 20.0], [100.0, 100.0]])
    q = np.array([[0.0, 0.0]])
    pos = positives_within(db, q, radius=25.0)
    np.testing.assert_array_equal(pos[0], [0, 2, 3])  # 25 m (and 3-4-5 at 25 m) in, 25.01 out


def test_positives_chunked_matches_dense():
    rng = np.random.default_rng(0)
    db = rng.uniform(0, 200, size=(500, 2))
    q = rng.uniform(0, 200, size=(37, 2))
    d = np.linalg.norm(q[:, None] - db[None], axis=2)
    dense = [np.flatnonzero(row <= 25.0) for row in d]
    for chunk in (1, 5, 37, 1000):
        got = positives_within(db, q, 25.0, chunk=chunk)
        assert len(got) == len(dense)
        for a, b in zip(got, dense):
            np.testing.assert_array_equal(a, b)
    assert sum(len(x) for x in dense) > 0


def test_recall_hand_example():
    preds = np.array([
        [3, 1, 2, 4, 5, 6],   # positive at rank 0
        [0, 1, 2, 3, 9, 8],   # positive (9) at rank 4
        [0, 1, 2, 3, 4, 7],   # positive (7) at rank 5
    ])
    positives = [np.array([3]), np.array([9]), np.array([7])]
    r = recall_at_n(preds, positives, ns=(1, 5, 10))
    assert r[1] == pytest.approx(100 / 3)
    assert r[5] == pytest.approx(200 / 3)
    assert r[10] == pytest.approx(100.0)  # N > K uses all K


def test_recall_query_without_positives_is_failure():
    preds = np.array([[0, 1], [0, 1]])
    positives = [np.array([0]), np.array([], dtype=np.int64)]
    r = recall_at_n(preds, positives, ns=(1, 2))
    assert r == {1: 50.0, 2: 50.0}


def test_rank_changes_hand_example():
    positives = [np.array([5]), np.array([1]), np.array([2]), np.array([42])]
    before = np.array([[0, 1, 5], [1, 0, 3], [0, 2, 4], [0, 1, 2]])
    after = np.array([[5, 0, 1], [0, 3, 1], [0, 2, 4], [2, 1, 0]])
    np.testing.assert_array_equal(first_positive_rank(before, positives), [2, 0, 1, -1])
    ch = rank_changes(before, after, positives)
    np.testing.assert_array_equal(ch[:3], [2.0, -2.0, 0.0])
    assert np.isnan(ch[3])
