"""The revisitop and VPR runners on a synthetic scene where reranking must repair the global ranking."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

pytest.importorskip("cv2")

from retrieval_scene import make_scene, write_images, write_store  # noqa: E402

from delfi.eval.retrieval_run import RetrievalSettings  # noqa: E402
from delfi.eval.revisitop import evaluate  # noqa: E402
from delfi.io.rankings import read_ranking  # noqa: E402
from delfi.retrieval.rerank import RerankConfig  # noqa: E402


@pytest.fixture
def revisitop_root(tmp_path):
    queries, db, truth = make_scene()
    imlist = sorted(db)
    qimlist = sorted(queries)
    gnd = []
    for q in qimlist:
        pos = [imlist.index(n) for n in truth[q]]
        junk = [imlist.index("other0")]
        gnd.append({"bbx": [0.0, 0.0, 100.0, 100.0], "easy": pos[:1], "hard": pos[1:], "junk": junk})
    root = tmp_path / "data"
    (root / "roxford5k" / "jpg").mkdir(parents=True)
    with open(root / "roxford5k" / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, fh)
    out = tmp_path / "run"
    out.mkdir()
    write_store(out / "queries.h5", queries)
    write_store(out / "db.h5", db)
    return root, out, gnd, imlist


def test_revisitop_reranking_repairs_the_global_ranking(revisitop_root):
    from delfi.eval.revisitop_run import run_revisitop

    root, out, gnd, imlist = revisitop_root
    report = run_revisitop(root, "roxford5k", out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)))
    # globally, a look-alike distractor outranks the positives of every query
    assert report.before["medium"]["map"] < 90
    assert report.before["medium"]["mp@k"][1] == 0.0
    for protocol in ("easy", "medium", "hard"):
        assert report.after[protocol]["map"] == pytest.approx(100.0)
    # the numbers are those of the written rankings
    for name, key in (("ranking.txt", "before"), ("reranked.txt", "after")):
        ranking = read_ranking(out / name, database=imlist)
        assert ranking.depth == len(imlist)  # the whole database is ranked
        assert evaluate(ranking.ranks(), gnd) == getattr(report, key)
    saved = json.loads((out / "results.json").read_text())
    assert saved["after"]["medium"]["map"] == pytest.approx(100.0)
    assert saved["settings"]["rerank"]["top_k"] == 5
    # junk is never verified and does not use one of the K slots
    after = read_ranking(out / "reranked.txt", database=imlist)
    junk = imlist.index("other0")
    for q in range(len(after)):
        row = list(after.indices[q])
        assert after.inliers[q, row.index(junk)] == -1
        assert (after.inliers[q] >= 0).sum() == 5


def test_revisitop_without_features_says_what_is_missing(revisitop_root, tmp_path):
    from delfi.eval.revisitop_run import run_revisitop

    root, *_ = revisitop_root
    with pytest.raises(FileNotFoundError, match="queries.h5"):
        run_revisitop(root, "roxford5k", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k.pkl"):
        run_revisitop(root, "rparis6k", tmp_path / "empty")


@pytest.fixture
def vpr_root(tmp_path):
    queries, db, truth = make_scene(n_queries=3)
    rng = np.random.default_rng(3)
    places = {q: rng.uniform(0, 10_000, 2) for q in queries}
    names_q, names_db = {}, {}
    for q, (east, north) in places.items():
        names_q[q] = f"queries/@{east:.2f}@{north:.2f}@{q}@.jpg"
        for k, pos in enumerate(truth[q]):  # positives within 25 m
            names_db[pos] = f"database/@{east + 5 + k:.2f}@{north - 3:.2f}@{pos}@.jpg"
        names_db[f"{q}_lookalike"] = f"database/@{east + 300:.2f}@{north:.2f}@{q}_lookalike@.jpg"
    for d in range(6):
        names_db[f"other{d}"] = f"database/@{50_000 + 1000 * d:.2f}@0.00@other{d}@.jpg"
    root = tmp_path / "sf_xs"
    write_images(root / "test", list(names_q.values()) + list(names_db.values()), suffix="")
    out = tmp_path / "vpr"
    out.mkdir()
    write_store(out / "queries.h5", {names_q[k]: v for k, v in queries.items()})
    write_store(out / "db.h5", {names_db[k]: v for k, v in db.items()})
    return root, out


def test_vpr_recall_before_and_after(vpr_root):
    from delfi.eval.vpr_run import run_vpr

    root, out = vpr_root
    report = run_vpr(root, out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)))
    assert report.recall_before[1] == 0.0  # the look-alike (300 m away) wins globally
    assert report.recall_before[5] == 100.0
    assert report.recall_after[1] == 100.0
    assert report.summary() == {"improved": 3, "worse": 0, "unchanged": 0, "undefined": 0}
    assert all(v >= 1 for v in report.rank_change.values())
    saved = json.loads((out / "results.json").read_text())
    assert saved["recall_after"]["1"] == 100.0
    # each positive's move: both positives of every query end at ranks 0 and 1; before, the
    # look-alike held rank 0
    for query, moves in saved["positive_ranks"].items():
        assert [m["after"] for m in moves] == [0, 1]
        assert min(m["before"] for m in moves) >= 1


def test_vpr_sweep_table_and_plot(vpr_root):
    from delfi.eval.vpr_run import plot_sweep, run_vpr, sweep_rerank

    root, out = vpr_root
    run_vpr(root, out, settings=RetrievalSettings(rerank=None))
    sweep = sweep_rerank(root, out, top_ks=(1, 5), max_distances=(1.0,), thresholds=(5.0, 20.0))
    rows = sweep.rows
    assert sweep.recall_before[1] == 0.0 and sweep.best.top_k == 5
    assert [(r.top_k, r.threshold) for r in rows] == [(1, 5.0), (1, 20.0), (5, 5.0), (5, 20.0)]
    by_k = {r.top_k: r.recall[1] for r in rows}
    assert by_k[1] == 0.0  # reranking the top 1 cannot change anything
    assert by_k[5] == 100.0
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["top_k"] == 1
    picture = plot_sweep(rows, out / "sweep.png", before=0.0)
    assert picture.stat().st_size > 5000


def test_a_query_without_features_counts_as_a_miss(revisitop_root):
    from delfi.eval.revisitop_run import run_revisitop
    from delfi.io.features import FeatureStore

    root, out, gnd, imlist = revisitop_root
    with FeatureStore(out / "queries.h5") as store:
        kept = {name: store[name] for name in store.names() if name != "q1"}
    write_store(out / "queries.h5", kept)
    report = run_revisitop(root, "roxford5k", out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)))
    assert report.missing == ["q1"]
    ranking = read_ranking(out / "reranked.txt", database=imlist)
    assert ranking.queries == ["q0", "q2"]  # q1 has no line at all
    # 2 of 3 queries perfect, q1 ranked by the id-order fallback (its positives are not first)
    assert 60 < report.after["medium"]["map"] < 100


def test_each_protocol_reranks_without_its_own_junk(revisitop_root):
    from delfi.eval.revisitop_run import run_revisitop

    root, out, gnd, imlist = revisitop_root
    report = run_revisitop(root, "roxford5k", out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)))
    easy = read_ranking(out / "reranked_easy.txt", database=imlist)
    hard = read_ranking(out / "reranked_hard.txt", database=imlist)
    medium = read_ranking(out / "reranked.txt", database=imlist)
    for q, query in enumerate(medium.queries):
        verified = {name: {imlist[i] for i, n in zip(r.indices[q], r.inliers[q]) if n >= 0}
                    for name, r in (("easy", easy), ("medium", medium), ("hard", hard))}
        pos_easy, pos_hard = imlist[gnd[q]["easy"][0]], imlist[gnd[q]["hard"][0]]
        assert pos_hard not in verified["easy"] and pos_hard in verified["medium"]  # hard = junk for E
        assert pos_easy not in verified["hard"] and pos_easy in verified["medium"]  # easy = junk for H
        assert all(len(v) == 5 for v in verified.values())
    assert report.files["reranked_hard"].endswith("reranked_hard.txt")
    assert json.loads((out / "results.json").read_text())["rerank_junk"] == "protocol"
    common = run_revisitop(root, "roxford5k", out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)),
                           rerank_junk="common")
    assert "reranked_hard" not in common.files
    with pytest.raises(ValueError, match="rerank_junk"):
        run_revisitop(root, "roxford5k", out, rerank_junk="tf")


def test_a_database_entry_with_nan_values_is_left_out_with_its_reason(revisitop_root):
    """An entry written by another tool with a NaN global descriptor: left out of the index, named with
    the reason, and the run scores the rest."""
    import h5py

    from delfi.eval.revisitop_run import run_revisitop

    root, out, gnd, imlist = revisitop_root
    bad = "other1"
    with h5py.File(out / "db.h5", "a") as f:
        f[bad]["global_descriptor"][0] = np.nan
    report = run_revisitop(root, "roxford5k", out, settings=RetrievalSettings(rerank=RerankConfig(top_k=5)))
    assert bad in report.missing
    assert "non-finite" in report.reasons[bad] or "nan" in report.reasons[bad].lower()
    assert report.after["medium"]["map"] == pytest.approx(100.0)
    saved = json.loads((out / "results.json").read_text())
    assert bad in saved["missing_reasons"]
