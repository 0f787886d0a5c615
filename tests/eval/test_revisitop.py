"""Revisited Oxford/Paris: the safe ground-truth reader and the E/M/H mAP, mP@k evaluation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from delfi.datasets.revisitop import RevisitOPError, image_path, load_ground_truth, query_bbox
from delfi.eval.revisitop import evaluate, format_results, ranks_from_scores

N_DB = 12


def _column(order, n_db=N_DB):
    """A full ranking: ``order`` first, then the remaining images in index order."""
    order = list(order)
    rest = [i for i in range(n_db) if i not in order]
    return np.array(order + rest)


def _ranks(*columns):
    return np.stack(columns, axis=1)


def _hand_gnd():
    return [
        {"bbx": [0, 0, 10, 10], "easy": [0, 1], "hard": [2], "junk": [3]},
        {"bbx": [0, 0, 10, 10], "easy": [], "hard": [4, 5], "junk": [6]},  # no Easy positives
        {"bbx": [0, 0, 10, 10], "easy": [7, 8], "hard": [], "junk": [9]},  # no Hard positives
    ]


def _perfect(q, n_db=N_DB):
    return _column(list(q["easy"]) + list(q["hard"]) + list(q["junk"]), n_db)


# ---------------------------------------------------------------- evaluation, hand cases


def test_perfect_ranking_is_100_for_every_protocol():
    gnd = _hand_gnd()
    res = evaluate(_ranks(*[_perfect(q) for q in gnd]), gnd)
    for p in ("easy", "medium", "hard"):
        assert res[p]["map"] == pytest.approx(100.0)
        for k in (1, 5, 10):
            assert res[p]["mp@k"][k] == pytest.approx(100.0)
    # queries without positives are skipped: E lacks query 1, H lacks query 2
    assert [res[p]["n_queries"] for p in ("easy", "medium", "hard")] == [2, 3, 2]


def test_known_positive_ranks_give_hand_computed_ap():
    # one query, 5 images, positives at 0-based ranks 0 and 2, no junk
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [10, 12], "hard": [], "junk": []}]
    col = np.array([10, 11, 12, 13, 14])
    expected = ((1 + 1 / 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2  # = 19/24
    assert expected == pytest.approx(19 / 24)
    res = evaluate(col[:, None], gnd)
    assert res["easy"]["map"] == pytest.approx(100 * expected)
    assert res["medium"]["map"] == pytest.approx(100 * expected)
    assert res["hard"]["n_queries"] == 0 and np.isnan(res["hard"]["map"])


def test_missing_positive_counts_in_denominator():
    # 3 positives, only 2 are ranked: AP divides by 3
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [0, 1, 99], "hard": [], "junk": []}]
    col = np.array([0, 5, 1, 6])
    expected = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert evaluate(col[:, None], gnd)["easy"]["map"] == pytest.approx(100 * expected)


def test_junk_anywhere_does_not_change_map():
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [0, 1], "hard": [], "junk": [2, 3, 4]}]
    base = np.array([0, 5, 1, 6, 7, 8, 9, 10, 11])  # positives at 0 and 2 after junk removal
    ref = evaluate(base[:, None], gnd)["easy"]["map"]
    assert ref == pytest.approx(100 * 19 / 24)
    rng = np.random.default_rng(0)
    for _ in range(20):
        col = list(base)
        for j in (2, 3, 4):
            col.insert(int(rng.integers(0, len(col) + 1)), j)
        assert evaluate(np.array(col)[:, None], gnd)["easy"]["map"] == pytest.approx(ref)


def test_hard_images_are_junk_for_easy_and_easy_are_junk_for_hard():
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [1], "junk": []}]
    col = np.array([1, 0, 2, 3])  # hard first, then easy
    res = evaluate(col[:, None], gnd)
    assert res["easy"]["map"] == pytest.approx(100.0)  # hard removed -> easy at rank 0
    assert res["hard"]["map"] == pytest.approx(100.0)
    # medium: positives at ranks 0 and 1 -> perfect too; now swap in a distractor
    col = np.array([1, 2, 0, 3])
    res = evaluate(col[:, None], gnd)
    assert res["easy"]["map"] == pytest.approx(100 * (0 / 1 + 1 / 2) / 2)  # hard removed: easy at rank 1
    assert res["medium"]["map"] == pytest.approx(100 * 19 / 24)
    assert res["hard"]["map"] == pytest.approx(100.0)


def test_mp_at_k_uses_kq_rule():
    # positives at 1-based ranks 2, 4, 8 of 12
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [1, 3, 7], "hard": [], "junk": []}]
    col = np.arange(N_DB)
    mp = evaluate(col[:, None], gnd, kappas=(1, 5, 10))["easy"]["mp@k"]
    assert mp[1] == pytest.approx(0.0)
    assert mp[5] == pytest.approx(100 * 2 / 5)
    assert mp[10] == pytest.approx(100 * 3 / 8)  # kq = min(8, 10) = 8, not 3/10


def test_mp_at_k_after_junk_removal_and_averaging():
    gnd = [
        {"bbx": [0, 0, 1, 1], "easy": [5, 6], "hard": [], "junk": [0]},  # 1-based after junk: 5, 6
        {"bbx": [0, 0, 1, 1], "easy": [0], "hard": [], "junk": []},  # rank 1
    ]
    col0 = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    mp = evaluate(_ranks(col0, col0), gnd)["easy"]["mp@k"]
    # query 0: k=1 -> 0; k=5 -> 1/5; k=10 -> kq=6, 2/6. query 1: 1 everywhere.
    assert mp[1] == pytest.approx(100 * (0 + 1) / 2)
    assert mp[5] == pytest.approx(100 * (1 / 5 + 1) / 2)
    assert mp[10] == pytest.approx(100 * (2 / 6 + 1) / 2)


def test_query_without_hard_positives_is_skipped():
    gnd = _hand_gnd()
    cols = [_perfect(q) for q in gnd]
    cols[0] = _column([0, 1, 9, 10, 11, 2])  # query 0's hard positive at rank 3 (easy junk removed)
    res = evaluate(_ranks(*cols), gnd)
    # H averages queries 0 and 1 only (query 2 has no hard positives)
    ap0 = ((0 / 3) + (1 / 4)) / 2  # after removing easy (0, 1) the hard image sits at rank 3
    assert res["hard"]["n_queries"] == 2
    assert res["hard"]["map"] == pytest.approx(100 * (ap0 + 1.0) / 2)


def test_shape_checks():
    with pytest.raises(ValueError):
        evaluate(np.zeros((5, 2), dtype=int), _hand_gnd())
    with pytest.raises(ValueError):
        evaluate(np.zeros(5, dtype=int), _hand_gnd())


def test_ranks_from_scores_descending_and_stable():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    ranks = ranks_from_scores(scores)
    assert ranks.shape == (4, 2)
    assert ranks[:, 0].tolist() == [1, 3, 2, 0]  # tie 0.9: index 1 before 3
    assert ranks[:, 1].tolist() == [0, 1, 2, 3]


def test_format_results():
    res = {
        p: {"map": m, "mp@k": {1: a, 5: b, 10: c}, "n_queries": 1}
        for p, m, a, b, c in (("easy", 84.31, 90, 80, 70), ("medium", 65.1, 60, 50, 40), ("hard", 40.24, 30, 20, 10))
    }
    line = format_results(res)
    assert line.startswith("mAP E 84.3 M 65.1 H 40.2 | mP@1/5/10 ")
    assert "E 90.0/80.0/70.0" in line and "H 30.0/20.0/10.0" in line
    assert "\n" not in line


# ---------------------------------------------------------------- reader


def _write(tmp_path, obj, name="gnd.pkl", protocol=4):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_reader_refuses_foreign_globals(tmp_path):
    path = _write(tmp_path, {"imlist": [], "qimlist": [], "gnd": [_Evil()]}, name="evil.pkl")
    with pytest.raises(RevisitOPError, match=r"evil\.pkl.*posix\.getcwd|evil\.pkl.*getcwd"):
        load_ground_truth(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reader_accepts_numpy_arrays_and_scalars(tmp_path, protocol):
    obj = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"bbx": np.array([1.5, 2.0, 3.0, 4.0]), "easy": np.array([0, 2]), "hard": [np.int64(1)],
                 "junk": np.array([], dtype=np.int64)}],
    }
    gt = load_ground_truth(_write(tmp_path, obj, protocol=protocol))
    assert gt["gnd"][0] == {"bbx": (1.5, 2.0, 3.0, 4.0), "easy": [0, 2], "hard": [1], "junk": []}
    assert query_bbox(gt, 0) == (1.5, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "obj, msg",
    [
        ([1, 2], "expected a dict"),
        ({"imlist": [], "gnd": []}, "missing keys"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": []}, "gnd has 0 entries"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [], "hard": []}]}, "lacks 'junk'"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1], "easy": [], "hard": [], "junk": []}]}, "bbx"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [1], "hard": [], "junk": []}]},
         "outside imlist"),
    ],
)
def test_reader_validates_structure(tmp_path, obj, msg):
    with pytest.raises(RevisitOPError, match=msg):
        load_ground_truth(_write(tmp_path, obj, name="bad.pkl"))


def test_reader_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_ground_truth(tmp_path / "nope.pkl")
    bad = tmp_path / "corrupt.pkl"
    bad.write_bytes(b"\x80\x03not a pickle")
    with pytest.raises(RevisitOPError, match="corrupt.pkl"):
        load_ground_truth(bad)


def test_image_path(tmp_path):
    assert image_path(tmp_path, "roxford5k", "all_souls_000013") == tmp_path / "roxford5k" / "jpg" / "all_souls_000013.jpg"


# ---------------------------------------------------------------- real ground truth


@pytest.mark.parametrize(
    "name, n_db, first_query",
    [("roxford5k", 4993, "all_souls_000013"), ("rparis6k", 6322, "paris_defense_000605")],
)
def test_real_ground_truth(shared_data, name, n_db, first_query):
    path = shared_data / "revisitop" / f"gnd_{name}.pkl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gt = load_ground_truth(path)
    assert len(gt["imlist"]) == n_db
    assert len(gt["qimlist"]) == 70 and len(gt["gnd"]) == 70
    assert gt["qimlist"][0] == first_query
    gnd = gt["gnd"]

    perfect = _ranks(*[_perfect(q, n_db) for q in gnd])
    res = evaluate(perfect, gnd)
    for p in ("easy", "medium", "hard"):
        assert res[p]["map"] == pytest.approx(100.0)
        assert all(v == pytest.approx(100.0) for v in res[p]["mp@k"].values())
    assert res["medium"]["n_queries"] == 70

    rng = np.random.default_rng(0)
    random = np.stack([rng.permutation(n_db) for _ in gnd], axis=1)
    res = evaluate(random, gnd)
    for p in ("easy", "medium", "hard"):
        assert 0.0 < res[p]["map"] < 10.0
    assert format_results(res).startswith("mAP E ")


def test_real_roxford_query0(shared_data):
    path = shared_data / "revisitop" / "gnd_roxford5k.pkl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gt = load_ground_truth(path)
    assert query_bbox(gt["gnd"], 0) == pytest.approx((136.5, 34.1, 648.5, 955.7))
    # the shared Oxford pair: all_souls_000055 is an Easy positive of query 0
    easy_names = {gt["imlist"][j] for j in gt["gnd"][0]["easy"]}
    assert "all_souls_000055" in easy_names
