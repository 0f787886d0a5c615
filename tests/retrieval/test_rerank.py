"""Reranking by spatial verification: order, fusion rules, junk, determinism, missing features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from delfi.retrieval.rerank import RerankConfig, RerankReport, fuse_scores, rerank, verify_pair  # noqa: E402
from delfi.types import Features, Ranking  # noqa: E402


def _features(rng: np.random.Generator, n: int = 300, dim: int = 32, size: int = 640) -> Features:
    desc = rng.standard_normal((n, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    kp = rng.uniform(0, size - 1, (n, 2)).astype(np.float32)
    return Features(torch.from_numpy(kp), torch.ones(n), torch.from_numpy(desc), image_size=(size, size))


def _copy(rng: np.random.Generator, f: Features, keep: float) -> Features:
    """A view of ``f``: a random affine map of a fraction ``keep`` of its features, the rest random."""
    n, dim = f.descriptors.shape
    a = np.array([[0.9, 0.1, 20.0], [-0.05, 1.1, -10.0]])
    kp = f.keypoints.numpy() @ a[:, :2].T + a[:, 2]
    desc = f.descriptors.numpy() + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    lost = rng.random(n) > keep
    desc[lost] = rng.standard_normal((int(lost.sum()), dim))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return Features(torch.from_numpy(kp.astype(np.float32)), torch.ones(n), torch.from_numpy(desc.astype(np.float32)),
                    image_size=f.image_size)


class Store(dict):
    def get(self, name):  # noqa: D102 - dict.get would return None for missing names
        return self[name]


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    q = _features(rng)
    db = Store()
    # d0..d5: unrelated; d6: 60% shared, d7: 30% shared
    for i in range(6):
        db[f"d{i}"] = _features(rng)
    db["d6"] = _copy(rng, q, 0.6)
    db["d7"] = _copy(rng, q, 0.3)
    queries = Store(q=q)
    names = sorted(db)
    # global order: unrelated first, the true matches last
    order = [0, 1, 2, 3, 4, 5, 7, 6]
    scores = np.linspace(0.9, 0.2, len(order))
    ranking = Ranking(["q"], names, [order], [scores])
    return ranking, queries, db


def test_verified_images_move_up_in_inlier_order(scene):
    ranking, queries, db = scene
    out = rerank(ranking, queries, db, RerankConfig(workers=2))
    names = [n for n, _ in out.results("q")]
    assert names[:2] == ["d6", "d7"]
    inl = dict(zip((out.database[i] for i in out.indices[0]), out.inliers[0]))
    assert inl["d6"] > inl["d7"] >= 50  # about 180 and 90 true correspondences
    assert all(inl[f"d{i}"] < 10 for i in range(6))
    # unrelated images are sorted by (inliers, global score)
    rest = [(int(inl[n]), float(g)) for n, g in zip(names[2:], out.global_scores[0, 2:])]
    assert rest == sorted(rest, reverse=True)
    # global scores are carried along, scores decrease
    assert np.all(np.diff(out.scores[0]) <= 0)
    assert sorted(out.global_scores[0].tolist()) == sorted(ranking.scores[0].tolist())


def test_deterministic_across_worker_counts(scene):
    ranking, queries, db = scene
    a = rerank(ranking, queries, db, RerankConfig(workers=1))
    b = rerank(ranking, queries, db, RerankConfig(workers=3))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.inliers, b.inliers)


def test_top_k_limits_verification_and_tail_keeps_global_order(scene):
    ranking, queries, db = scene
    out = rerank(ranking, queries, db, RerankConfig(top_k=3))
    verified = out.inliers[0] >= 0
    assert verified.sum() == 3
    # the verified block comes first, then the unverified tail in global order
    assert verified[:3].all()
    tail = out.indices[0, 3:]
    np.testing.assert_array_equal(tail, ranking.indices[0, 3:])


def test_junk_is_skipped_and_not_counted(scene):
    ranking, queries, db = scene
    out = rerank(ranking, queries, db, RerankConfig(top_k=3), junk={"q": {"d0", "d1"}})
    verified = {out.database[i] for i, n in zip(out.indices[0], out.inliers[0]) if n >= 0}
    assert verified == {"d2", "d3", "d4"}


def test_missing_features_are_reported_not_fatal(scene):
    ranking, queries, db = scene
    partial = Store({k: v for k, v in db.items() if k != "d6"})
    report = RerankReport()
    out = rerank(ranking, queries, partial, RerankConfig(), report=report)
    assert report.missing == ["d6"]
    assert report.pairs == 7
    assert out.results("q")[0][0] == "d7"
    row = dict(zip((out.database[i] for i in out.indices[0]), out.inliers[0]))
    assert row["d6"] == -1


def test_fusion_rules():
    g = np.array([0.9, 0.5, 0.1, 0.8])
    n = np.array([5, 30, 30, -1])
    lex = fuse_scores(g, n, RerankConfig())
    assert list(np.argsort(-lex, kind="stable")) == [1, 2, 0, 3]
    w = fuse_scores(g, n, RerankConfig(fusion="weighted", weight=0.01))
    np.testing.assert_allclose(w, [0.95, 0.8, 0.4, 0.8])
    m = fuse_scores(g, n, RerankConfig(fusion="min_inliers", min_inliers=10))
    assert list(np.argsort(-m, kind="stable")) == [1, 2, 0, 3]
    with pytest.raises(ValueError, match="fusion"):
        RerankConfig(fusion="max")


def test_too_few_matches_give_zero_inliers():
    rng = np.random.default_rng(1)
    a, b = _features(rng, n=3), _features(rng, n=3)
    m = verify_pair(a, b, RerankConfig().matching, min_matches=4)
    assert m.num_inliers == 0 and m.meta["status"] == "not enough matches"


def test_memo_verifies_each_pair_once(scene):
    ranking, queries, db = scene
    memo: dict = {}
    seen: list = []
    first = rerank(ranking, queries, db, RerankConfig(top_k=4), memo=memo, on_pair=lambda q, d, m: seen.append(d))
    assert len(memo) == 4 and len(seen) == 4
    # a second pass with other junk verifies only the pairs it has not seen
    second = rerank(ranking, queries, db, RerankConfig(top_k=4), memo=memo, junk={"q": {"d0"}},
                    on_pair=lambda q, d, m: seen.append(d))
    assert seen[4:] == ["d4"] and len(memo) == 5
    fresh = rerank(ranking, queries, db, RerankConfig(top_k=4), junk={"q": {"d0"}})
    np.testing.assert_array_equal(second.inliers, fresh.inliers)
    np.testing.assert_array_equal(first.indices[:, 4:], ranking.indices[:, 4:])
