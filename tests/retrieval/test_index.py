"""GlobalIndex: exact / flat / IVF-PQ search, persistence and errors (small random data, fixed seeds)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from delfi.retrieval.index import GlobalIndex
from delfi.retrieval.storage import IndexFormatError, load_index


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _names(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _brute_force(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ db.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties -> lower id
    return np.take_along_axis(scores, order, 1), order


def _clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres with a decaying noise spectrum (like real descriptors)."""
    rng = np.random.default_rng(seed)
    centres = _unit(np.random.default_rng(1234), clusters, d)
    spectrum = np.arange(1, d + 1) ** -0.5
    x = centres[rng.integers(clusters, size=n)] + rng.standard_normal((n, d)) * spectrum / np.linalg.norm(spectrum)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    return _unit(rng, 3000, 32), _unit(rng, 40, 32)


@pytest.fixture(scope="module")
def clustered():
    pytest.importorskip("faiss")
    db, q = _clustered(20_000, 64, 100, seed=1), _clustered(200, 64, 100, seed=2)
    _, truth = GlobalIndex.build(db, _names(len(db))).search(q, 10)
    return db, q, truth


@pytest.fixture(scope="module")
def ivfpq(clustered):
    db = clustered[0]
    return GlobalIndex.build(db, _names(len(db)), "ivfpq", nlist=64, m=16, nprobe=8, refine=0)


# ----------------------------------------------------------------------------------------- exact
def test_exact_equals_brute_force(small):
    db, q = small
    index = GlobalIndex.build(db, _names(len(db)))
    scores, ids = index.search(q, 10)
    ref_scores, ref_ids = _brute_force(db, q, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (40, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_results_do_not_depend_on_batch_size_or_input_type(small):
    db, q = small
    index = GlobalIndex.build(torch.from_numpy(db), _names(len(db)))
    scores, ids = index.search(q, 25)
    for batch_size in (1, 3, 7, 1000):
        s, i = index.search(q, 25, batch_size=batch_size)
        np.testing.assert_array_equal(s, scores)
        np.testing.assert_array_equal(i, ids)
    s, i = index.search(torch.from_numpy(q).double(), 25)
    np.testing.assert_array_equal(s, scores)
    np.testing.assert_array_equal(i, ids)


def test_exact_pads_when_k_exceeds_the_database(small):
    db, q = small
    index = GlobalIndex.build(db[:5], _names(5))
    scores, ids = index.search(q[:3], 8)
    assert scores.shape == ids.shape == (3, 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert (np.sort(ids[:, :5], axis=1) == np.arange(5)).all() and np.isfinite(scores[:, :5]).all()
    empty = GlobalIndex(32)
    s, i = empty.search(q[:2], 3)
    assert (i == -1).all() and np.isneginf(s).all() and len(empty) == 0


def test_exact_ties_go_to_the_lower_id():
    base = _unit(np.random.default_rng(3), 5, 16)
    db = np.tile(base, (40, 1))  # row r is a copy of base[r % 5]: 40 equal rows per vector
    index = GlobalIndex.build(db, _names(len(db)))
    scores, ids = index.search(base[[2]], 10)
    np.testing.assert_array_equal(ids[0], 2 + 5 * np.arange(10))
    assert len(set(scores[0].tolist())) == 1
    _, ids = index.search(np.zeros((1, 16), np.float32), 7)  # every score is 0
    np.testing.assert_array_equal(ids[0], np.arange(7))


def test_exact_ties_across_database_chunks(monkeypatch):
    monkeypatch.setattr("delfi.retrieval.index._SCORE_BUDGET", 1)  # chunks of 4096 database rows
    base = _unit(np.random.default_rng(5), 5, 8)
    db = np.tile(base, (2000, 1))  # 10000 rows in 3 chunks, 2000 copies of each vector
    index = GlobalIndex.build(db, _names(len(db)))
    scores, ids = index.search(base[[2, 4]], 1000)
    np.testing.assert_array_equal(ids, [2 + 5 * np.arange(1000), 4 + 5 * np.arange(1000)])
    s1, i1 = index.search(base[[2, 4]], 1000, batch_size=1)
    np.testing.assert_array_equal(i1, ids)
    np.testing.assert_array_equal(s1, scores)


# ------------------------------------------------------------------------------------------- faiss
def test_flat_equals_exact(small):
    pytest.importorskip("faiss")
    db, q = small
    s_exact, i_exact = GlobalIndex.build(db, _names(len(db))).search(q, 10)
    s_flat, i_flat = GlobalIndex.build(db, _names(len(db)), "flat").search(q, 10)
    np.testing.assert_array_equal(i_flat, i_exact)
    np.testing.assert_allclose(s_flat, s_exact, atol=1e-5)
    s, i = GlobalIndex.build(db[:4], _names(4), "flat").search(q[:2], 6)
    assert (i[:, 4:] == -1).all() and np.isneginf(s[:, 4:]).all()


def test_ivfpq_recall(clustered, ivfpq):
    _, q, truth = clustered
    assert ivfpq.is_trained and len(ivfpq) == 20_000 and ivfpq.kind == "ivfpq"
    scores, ids = ivfpq.search(q, 10)
    assert (np.diff(scores, axis=1) <= 0).all() and (ids >= 0).all()
    # measured 0.62 for seeds 0-2 (at any nprobe >= 4: the PQ16x8 code on 64-D limits recall, not the
    # cells); exact re-scoring (refine) is what lifts it, see below
    assert _recall(ids, truth) >= 0.55
    np.testing.assert_array_equal(ivfpq.search(q, 10, nprobe=8)[1], ids)
    assert _recall(ivfpq.search(q, 10, nprobe=1)[1], truth) < _recall(ids, truth)


@pytest.fixture(scope="module")
def refined(clustered):
    db = clustered[0]
    return GlobalIndex.build(db, _names(len(db)), "ivfpq", nlist=64, m=16, nprobe=4, refine=8, refine_type="flat",
                             train_vectors=db[:10_000])  # fmt: skip


def test_ivfpq_nprobe_override_does_not_lower_recall(clustered, refined):
    _, q, truth = clustered
    recalls = [_recall(refined.search(q, 10, nprobe=p)[1], truth) for p in (1, 4, 16, 64, 1000)]
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1], recalls
    np.testing.assert_array_equal(refined.search(q, 10, nprobe=4)[1], refined.search(q, 10)[1])


@pytest.mark.parametrize("refine_type, min_recall", [("flat", 0.99), ("sq8", 0.97)])
def test_ivfpq_with_refine_and_all_cells_is_nearly_exact(clustered, refined, refine_type, min_recall):
    db, q, truth = clustered
    if refine_type == "flat":
        index = refined
    else:  # measured 0.985: the 8-bit copy is not exact
        index = GlobalIndex.build(db, _names(len(db)), "ivfpq", nlist=64, m=16, refine=8, refine_type=refine_type,
                                  train_vectors=db[:10_000])  # fmt: skip
    scores, ids = index.search(q, 10, nprobe=64)
    assert _recall(ids, truth) >= min_recall  # flat: measured 0.998-1.0
    assert (np.diff(scores, axis=1) <= 0).all()
    codes = len(db) * (16 + 8)
    per_vector = {"flat": 64 * 4, "sq8": 64}[refine_type]
    assert codes + len(db) * per_vector <= index.memory_bytes() < codes + len(db) * per_vector + 200_000


def test_ivfpq_training_errors():
    pytest.importorskip("faiss")
    db = _unit(np.random.default_rng(4), 300, 32)
    index = GlobalIndex(32, "ivfpq", nlist=64, m=8)
    assert not index.is_trained
    with pytest.raises(ValueError, match="not trained"):
        index.add(db, _names(300))
    with pytest.raises(ValueError, match="not trained"):
        index.search(db[:2], 5)
    with pytest.raises(ValueError, match="at least 256 training vectors"):
        index.train(db[:100])
    with pytest.raises(ValueError, match="divide"):
        GlobalIndex(30, "ivfpq", m=8)


# ------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", GlobalIndex.KINDS)
def test_save_load_round_trip(kind, small, tmp_path):
    if kind != "exact":
        pytest.importorskip("faiss")
    db, q = small
    params = {"nlist": 16, "m": 8, "nprobe": 4, "refine": 2, "refine_type": "fp16"} if kind == "ivfpq" else {}
    index = GlobalIndex.build(db, _names(len(db)), kind, **params)
    path = index.save(tmp_path / "idx")
    meta = json.loads((path / "meta.json").read_text())
    own = "vectors.npy" if kind == "exact" else "index.faiss"
    assert meta["kind"] == kind and meta["dim"] == 32 and meta["count"] == len(db)
    assert set(meta["files"]) == {"names.txt", own} and all(len(v) == 64 for v in meta["files"].values())
    if kind == "ivfpq":
        assert {k: meta["config"][k] for k in params} == params
    for loaded in (GlobalIndex.load(path), load_index(path)):
        assert isinstance(loaded, GlobalIndex) and loaded.kind == kind and loaded.names == index.names
        assert loaded.params == index.params and len(loaded) == len(index)
        for a, b in zip(loaded.search(q, 10), index.search(q, 10)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_corrupted_file_is_named(kind, small, tmp_path):
    if kind != "exact":
        pytest.importorskip("faiss")
    db, _ = small
    path = GlobalIndex.build(db, _names(len(db)), kind).save(tmp_path / "idx")
    file = path / ("vectors.npy" if kind == "exact" else "index.faiss")
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=file.name):
        GlobalIndex.load(path)
    with pytest.raises(IndexFormatError, match=file.name):
        load_index(path)


def test_missing_meta_or_file_raises(small, tmp_path):
    db, _ = small
    path = GlobalIndex.build(db[:10], _names(10)).save(tmp_path / "idx")
    (path / "vectors.npy").unlink()
    with pytest.raises(IndexFormatError, match="vectors.npy"):
        GlobalIndex.load(path)
    (path / "meta.json").unlink()
    with pytest.raises(IndexFormatError, match="meta.json"):
        GlobalIndex.load(path)
    with pytest.raises(IndexFormatError):
        load_index(tmp_path / "nowhere")


def test_save_replaces_an_existing_index(small, tmp_path):
    db, _ = small
    GlobalIndex.build(db[:10], _names(10)).save(tmp_path / "idx")
    GlobalIndex.build(db, _names(len(db), "new")).save(tmp_path / "idx")
    loaded = GlobalIndex.load(tmp_path / "idx")
    assert len(loaded) == len(db) and loaded.names[0] == "new00000"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


# ------------------------------------------------------------------------------------------ errors
def test_input_errors(small):
    db, q = small
    index = GlobalIndex.build(db[:10], _names(10))
    with pytest.raises(ValueError, match=r"queries: expected an \(n, 32\) array, got shape \(\d+, 16\)"):
        index.search(q[:, :16], 3)
    with pytest.raises(ValueError, match=r"vectors: expected an \(n, 32\) array, got shape \(2, 16\)"):
        index.add(db[:2, :16], ["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        index.search(q[0], 3)
    bad = q[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.search(bad, 3)
    with pytest.raises(ValueError, match="3 vectors but 2 names"):
        index.add(db[10:13], ["x", "y"])
    with pytest.raises(ValueError, match="duplicate names.*'img00003'"):
        index.add(db[10:12], ["img00003", "fresh"])
    with pytest.raises(ValueError, match="duplicate names.*'twice'"):
        index.add(db[10:12], ["twice", "twice"])
    assert len(index) == 10  # failed adds change nothing
    with pytest.raises(ValueError, match="unknown index kind"):
        GlobalIndex(32, "hnsw")
    index.add(db[10:12], ["p", "q"])
    assert index.names[-2:] == ["p", "q"] and index.search(db[11:12], 1)[1][0, 0] == 11


def test_exact_works_without_faiss(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    db, q = small
    assert GlobalIndex.build(db, _names(len(db))).search(q, 3)[1].shape == (40, 3)
    with pytest.raises(ImportError, match=r'pip install "delfi\[index\]"'):
        GlobalIndex(32, "flat")
