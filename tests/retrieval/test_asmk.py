"""ASMKIndex: the Hamming padding fix against a hand-computed ASMK score, bit-equality with the
unmodified asmk package where the fix does not apply, retrieval sanity, save/load and errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("asmk")
pytest.importorskip("faiss")

from delfi.retrieval.asmk import ASMKIndex
from delfi.retrieval.storage import IndexFormatError, load_index

K = 32


def _clustered(rng, n, dim, centers, noise=0.3):
    x = centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def _data(dim, *, seed=0, n_db=12, n_q=4, empty=(5,)):
    """Training sample, database images (some empty) and queries (noisy copies of db images)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((24, dim))
    train = _clustered(rng, 40 * K, dim, centers)
    db = [_clustered(rng, int(rng.integers(15, 40)), dim, centers) for _ in range(n_db)]
    for i in empty:
        db[i] = np.zeros((0, dim), np.float32)
    src = [i for i in range(n_db) if i not in empty][:n_q]
    queries = [(db[i] + 0.05 * rng.standard_normal(db[i].shape)).astype(np.float32) for i in src]
    return train, db, queries, src


def _index(dim, train, db, **kw):
    index = ASMKIndex(dim, codebook_size=K, **kw)
    index.train(train)
    index.add(db, [f"img{i}" for i in range(len(db))])
    return index


def _full_scores(index, queries):
    """(Q, N) float64 score of every database image, from search(k = N)."""
    scores, ids = index.search(queries, len(index))
    full = np.zeros((len(queries), len(index)))
    for q in range(len(queries)):
        full[q, ids[q]] = scores[q]
    return full


def _reference(centroids, db, queries, *, ma_db=1, ma_q=5, alpha=3.0, thr=0.0, use_idf=False, binary=True,
               hamming_bits=None):
    """ASMK by hand: residual sums per word, sign bits, Hamming over `hamming_bits` (default: D)."""
    dim = centroids.shape[1]
    bits = hamming_bits or dim

    def aggregate(x, ma):
        d2 = ((x[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
        words = np.argsort(d2, axis=1, kind="stable")[:, :ma]
        out = {}
        for w in np.unique(words):
            r = (x[(words == w).any(axis=1)] - centroids[w]).sum(0)  # float32, as the package sums
            out[int(w)] = r > 0 if binary else r / (np.linalg.norm(r) + 1e-6)
        return out

    dbw = [aggregate(x, ma_db) if len(x) else {} for x in db]
    n_img = len(db)
    n_w = np.zeros(len(centroids))
    for d in dbw:
        n_w[list(d)] += 1
    idf = np.ones(len(centroids))
    if use_idf:
        idf[n_w > 0] = np.log(n_img / n_w[n_w > 0]) ** 2
    out = np.zeros((len(queries), n_img))
    for qi, q in enumerate(queries):
        qw = aggregate(q, ma_q)
        qnorm = sum(idf[w] for w in qw)
        for i, d in enumerate(dbw):
            total = 0.0
            for w in set(qw) & set(d):
                sim = 1 - 2 * np.count_nonzero(qw[w] != d[w]) / bits if binary else float(qw[w] @ d[w])
                total += idf[w] * (sim ** alpha if sim >= thr else 0.0)
            if total:
                out[qi, i] = total / np.sqrt(sum(idf[w] for w in d)) / np.sqrt(qnorm)
    return out


def _package(centroids, db, queries, *, use_idf, binary=True, ma_db=1, ma_q=5, alpha=3.0, thr=0.0):
    """The unmodified asmk pipeline (ASMKMethod) on the given centroids; (Q, N) scores."""
    from asmk import ASMKMethod, codebook, index

    params = {"index": {"gpu_id": None},
              "build_ivf": {"kernel": {"binary": binary}, "ivf": {"use_idf": use_idf},
                            "quantize": {"multiple_assignment": ma_db}, "aggregate": {}},
              "query_ivf": {"quantize": {"multiple_assignment": ma_q}, "aggregate": {}, "search": {"topk": None},
                            "similarity": {"similarity_threshold": thr, "alpha": alpha}}}
    cdb = codebook.Codebook(index.FaissL2Index(), size=len(centroids))
    cdb.index(centroids)
    method = ASMKMethod(params, {}, codebook=cdb)
    counts = [len(x) for x in db]
    method = method.build_ivf(np.concatenate(db), np.repeat(np.arange(len(db)), counts))
    qcounts = [len(x) for x in queries]
    _, _, ranks, scores = method.query_ivf(np.concatenate(queries), np.repeat(np.arange(len(queries)), qcounts))
    full = np.zeros((len(queries), ranks.shape[1]))
    for q in range(len(queries)):
        full[q, ranks[q]] = scores[q]
    return full


def test_padding_bug_and_fix_on_opposite_vectors():
    from asmk import hamming, kernel

    a = np.random.default_rng(0).standard_normal((1, 40)).astype(np.float32)
    pa, pb = hamming.binarize_and_pack_2D(a), hamming.binarize_and_pack_2D(-a)
    assert pa.shape == (1, 2)  # 40 bits padded to 64
    assert hamming.hamming_cdist_packed(pa, pb)[0, 0] == pytest.approx(40 / 64)
    kw = {"alpha": 1.0, "similarity_threshold": -1.0}
    _, sim_pkg = kernel.ASMKKernel(None, binary=True).similarity(pa[0], pb, np.array([0]), **kw)
    assert sim_pkg[0] == pytest.approx(-0.25)  # the package's value: wrong
    train, db, _, _ = _data(40)
    index = _index(40, train, db)
    _, sim = index._kernel.similarity(pa[0], np.concatenate([pb, pa]), np.array([0, 1]), **kw)
    np.testing.assert_allclose(sim, [-1.0, 1.0])


@pytest.mark.parametrize("use_idf", [False, True])
def test_d40_binary_matches_hand_reference_and_differs_from_package(use_idf):
    train, db, queries, _ = _data(40)
    index = _index(40, train, db, use_idf=use_idf)
    ours = _full_scores(index, queries)
    ref = _reference(index.centroids, db, queries, use_idf=use_idf)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    # the unpatched package differs, and is exactly the reference with 64-bit normalisation
    pkg = _package(index.centroids, db, queries, use_idf=use_idf)
    assert np.abs(pkg - ours).max() > 1e-2
    np.testing.assert_allclose(pkg, _reference(index.centroids, db, queries, use_idf=use_idf, hamming_bits=64),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("binary,use_idf", [(True, False), (True, True), (False, False), (False, True)])
def test_d64_equals_unmodified_package_exactly(binary, use_idf):
    train, db, queries, _ = _data(64, seed=1)
    index = _index(64, train, db, binary=binary, use_idf=use_idf)
    ours = _full_scores(index, queries)
    pkg = _package(index.centroids, db, queries, use_idf=use_idf, binary=binary)
    assert np.array_equal(ours, pkg.astype(np.float32).astype(np.float64))


def test_nonbinary_matches_hand_reference():
    train, db, queries, _ = _data(40, seed=2)
    index = _index(40, train, db, binary=False, alpha=2.0, similarity_threshold=0.1, multiple_assignment_db=2)
    ref = _reference(index.centroids, db, queries, binary=False, alpha=2.0, thr=0.1, ma_db=2)
    np.testing.assert_allclose(_full_scores(index, queries), ref, rtol=1e-4, atol=1e-6)


def test_codebook_is_deterministic_and_the_package_kmeans():
    from asmk import index as asmk_index

    train, _, _, _ = _data(40)
    a, b = ASMKIndex(40, codebook_size=K), ASMKIndex(40, codebook_size=K)
    a.train(train)
    b.train(train)
    assert np.array_equal(a.centroids, b.centroids)
    c = ASMKIndex(40, codebook_size=K, seed=1234)  # faiss' default seed, as the package uses
    c.train(train)
    assert np.array_equal(c.centroids, asmk_index.FaissL2Index().cluster(train, K))
    assert not np.array_equal(a.centroids, c.centroids)


@pytest.mark.parametrize("binary", [True, False])
def test_noisy_copies_rank_their_source_first(binary):
    train, db, queries, src = _data(40, seed=3, n_db=30, n_q=10, empty=(0, 29))
    index = _index(40, train, db, binary=binary)
    scores, ids = index.search(queries, 5)
    assert ids[:, 0].tolist() == src
    assert (np.diff(scores, axis=1) <= 0).all() and scores.dtype == np.float32 and ids.dtype == np.int64


def test_empty_images_queries_padding_and_torch():
    torch = pytest.importorskip("torch")
    train, db, queries, _ = _data(40)
    index = _index(40, train, db)  # db[5] is empty
    assert len(index) == 12 and index.names[5] == "img5"
    empty_q = np.zeros((0, 40), np.float32)
    scores, ids = index.search([queries[0], empty_q], 20)
    assert ids[0, :12].tolist().count(5) == 1 and (ids[0, 12:] == -1).all() and np.isneginf(scores[0, 12:]).all()
    pos5 = ids[0].tolist().index(5)
    assert scores[0, pos5] == 0 and (scores[0, :pos5] >= 0).all()  # empty image after all others scoring 0
    assert (ids[1] == -1).all() and np.isneginf(scores[1]).all()
    t_scores, t_ids = index.search([torch.from_numpy(queries[0]).double()], 20)
    assert np.array_equal(t_ids[0], ids[0]) and np.array_equal(t_scores[0], scores[0])
    # a database that ends with empty images, added in several calls, equals one call
    one = _index(40, train, db + [empty_q], use_idf=True)
    two = ASMKIndex(40, codebook_size=K, use_idf=True)
    two.train(torch.from_numpy(train))
    two.add([torch.from_numpy(x) for x in db[:7]], [f"img{i}" for i in range(7)])
    two.add(db[7:] + [empty_q], [f"img{i}" for i in range(7, 13)])
    assert two.names == one.names
    for a, b in zip(one.search(queries, 13), two.search(queries, 13)):
        assert np.array_equal(a, b)


def test_save_load_round_trip(tmp_path):
    train, db, queries, _ = _data(40)
    index = _index(40, train, db, use_idf=True)
    path = index.save(tmp_path / "asmk")
    loaded = ASMKIndex.load(path)
    assert loaded.names == index.names and loaded.config == index.config and loaded.dim == 40
    for a, b in zip(index.search(queries, 8), loaded.search(queries, 8)):
        assert np.array_equal(a, b)
    assert isinstance(load_index(path), ASMKIndex)
    assert not any(p.suffix in (".pkl", ".pickle") for p in path.iterdir())
    # adding after loading continues the ids exactly as adding to the original
    extra = [queries[1], np.zeros((0, 40), np.float32)]
    index.add(extra, ["x1", "x2"])
    loaded.add(extra, ["x1", "x2"])
    for a, b in zip(index.search(queries, 14), loaded.search(queries, 14)):
        assert np.array_equal(a, b)


def test_corrupted_files_are_named(tmp_path):
    train, db, _, _ = _data(40)
    path = _index(40, train, db).save(tmp_path / "asmk")
    vecs = path / "ivf_vecs.npy"
    raw = bytearray(vecs.read_bytes())
    raw[-1] ^= 0xFF
    vecs.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="ivf_vecs.npy"):
        ASMKIndex.load(path)
    (path / "ivf_offsets.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(IndexFormatError, match="ivf_offsets.npy"):
        ASMKIndex.load(path, verify=False)
    (path / "codebook.npy").unlink()
    with pytest.raises(IndexFormatError, match="codebook.npy"):
        load_index(path, verify=False)


def test_errors():
    train, db, queries, _ = _data(40)
    index = ASMKIndex(40, codebook_size=K)
    assert not index.is_trained
    with pytest.raises(RuntimeError, match="train"):
        index.add(db, [str(i) for i in range(len(db))])
    with pytest.raises(RuntimeError, match="train"):
        index.search(queries, 3)
    with pytest.raises(ValueError, match="at least codebook_size=32"):
        index.train(train[: K - 1])
    with pytest.raises(ValueError, match=r"\(n, 40\)"):
        index.train(train[:, :39])
    index.train(train)
    with pytest.raises(ValueError, match=r"image 'a'.*\(n, 40\)"):
        index.add([np.ones((3, 41), np.float32)], ["a"])
    with pytest.raises(ValueError, match="names"):
        index.add(db, ["a"])
    with pytest.raises(ValueError, match=r"query 0.*\(n, 40\)"):
        index.search([np.ones((3, 64), np.float32)], 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search([np.full((3, 40), np.nan, np.float32)], 3)
    with pytest.raises(ValueError, match="multiple_assignment_query"):
        ASMKIndex(40, codebook_size=4, multiple_assignment_query=5)
    index.add(db[:2], ["a", "b"])
    with pytest.raises(RuntimeError, match="already holds images"):
        index.train(train)
