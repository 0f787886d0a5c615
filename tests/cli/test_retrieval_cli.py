"""`delfi index build`, `delfi search`, `delfi rerank` on a synthetic scene."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("cv2")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from retrieval_scene import make_scene, write_store  # noqa: E402

from delfi.io.rankings import read_ranking  # noqa: E402

from .conftest import invoke  # noqa: E402


def _copy_store(src: Path, dst: Path, model: str, change=None) -> None:
    """Copy a feature store under another model name, applying ``change(features)`` to each entry."""
    from delfi.io.features import FeatureStore

    with FeatureStore(src) as source, FeatureStore(dst, "w", attrs={"model": model, "weights_sha256": "none", "config": {}}) as out:
        for name in source.names():
            features = source[name]
            if change is not None:
                change(features)
            out.put(name, features)


@pytest.fixture
def stores(tmp_path):
    queries, db, truth = make_scene()
    return write_store(tmp_path / "q.h5", queries), write_store(tmp_path / "db.h5", db), truth


def test_build_search_rerank(tmp_path, stores):
    q, db, truth = stores
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "db.index")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "db.index" / "meta.json").read_text())
    assert meta["kind"] == "exact" and meta["count"] == 15 and "names.txt" in meta["files"]

    result = invoke("search", "--index", tmp_path / "db.index", "--features", q, "--top-k", 5, "--out", tmp_path / "r.txt")
    assert result.exit_code == 0, result.output
    ranking = read_ranking(tmp_path / "r.txt")
    assert ranking.queries == ["q0", "q1", "q2"] and ranking.depth == 5
    assert all(ranking.results(qn)[0][0] == f"{qn}_lookalike" for qn in ranking.queries)

    result = invoke("rerank", "--ranking", tmp_path / "r.txt", "--query-features", q, "--db-features", db,
                    "--top-k", 5, "--out", tmp_path / "rr.txt", "--matches", tmp_path / "m.h5")
    assert result.exit_code == 0, result.output
    assert "pairs verified" in result.output
    after = read_ranking(tmp_path / "rr.txt")
    for qn in after.queries:
        top2 = {name for name, _ in after.results(qn)[:2]}
        assert top2 == set(truth[qn])
    assert after.inliers is not None and after.global_scores is not None

    from delfi.io.matches import MatchStore

    with MatchStore(tmp_path / "m.h5") as store:
        assert ("q0", truth["q0"][0]) in store
        assert store.get("q0", truth["q0"][0]).num_inliers >= 50


def test_rerank_reports_missing_features(tmp_path, stores):
    q, db, _ = stores
    ranking = tmp_path / "r.txt"
    ranking.write_text("q0 nowhere 0.9\nq0 other1 0.5\n")
    result = invoke("rerank", "--ranking", ranking, "--query-features", q, "--db-features", db, "--out", tmp_path / "rr.txt")
    assert result.exit_code == 1
    assert "nowhere" in result.output
    assert read_ranking(tmp_path / "rr.txt").depth == 2  # the rest was still written


def test_usage_errors(tmp_path, stores):
    q, db, _ = stores
    result = invoke("index", "build", "--features", tmp_path / "none.h5", "--out", tmp_path / "i")
    assert result.exit_code == 2 and "no such feature store" in result.output
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i", "--kind", "hnsw")
    assert result.exit_code == 2 and "--kind" in result.output
    result = invoke("search", "--index", tmp_path / "missing", "--features", q)
    assert result.exit_code == 2 and "not an index directory" in result.output
    bad = tmp_path / "bad.txt"
    bad.write_text("q0 other1\n")
    result = invoke("rerank", "--ranking", bad, "--query-features", q, "--db-features", db)
    assert result.exit_code == 2 and "bad.txt:1" in result.output
    result = invoke("rerank", "--ranking", bad, "--query-features", q, "--db-features", db, "--fusion", "max")
    assert result.exit_code == 2 and "fusion" in result.output


def test_local_only_store_needs_asmk(tmp_path, stores):

    q, db, _ = stores
    local = tmp_path / "local.h5"
    _copy_store(db, local, "x", lambda f: setattr(f, "global_descriptor", None))
    result = invoke("index", "build", "--features", local, "--out", tmp_path / "i")
    assert result.exit_code == 2 and "--asmk" in result.output


def test_asmk_index_over_local_descriptors(tmp_path, stores):
    pytest.importorskip("asmk")
    q, db, truth = stores
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "asmk.index", "--asmk", "codebook_size=32")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "asmk.index" / "meta.json").read_text())["kind"] == "asmk"
    result = invoke("search", "--index", tmp_path / "asmk.index", "--features", q, "--top-k", 3, "--out", tmp_path / "r.txt")
    assert result.exit_code == 0, result.output
    ranking = read_ranking(tmp_path / "r.txt")
    # local descriptors shared with the query make its positives the two best ASMK matches
    for qn in ranking.queries:
        assert {name for name, _ in ranking.results(qn)[:2]} == set(truth[qn])
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "big.index", "--asmk", "codebook_size=100000")
    assert result.exit_code == 2 and "codebook" in result.output.lower()


def test_report_command(tmp_path, stores):
    from retrieval_scene import write_images

    q, db, truth = stores
    write_images(tmp_path / "photos", ["q0", "q1", "q2"] + [f"q{i}_pos{k}" for i in range(3) for k in range(2)])
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--top-k", 5, "--out", tmp_path / "r.txt").exit_code == 0
    assert invoke("rerank", "--ranking", tmp_path / "r.txt", "--query-features", q, "--db-features", db, "--top-k", 5,
                  "--out", tmp_path / "rr.txt", "--matches", tmp_path / "m.h5").exit_code == 0
    result = invoke("report", "--ranking", tmp_path / "rr.txt", "--before", tmp_path / "r.txt", "--images",
                    tmp_path / "photos", "--matches", tmp_path / "m.h5", "--query-features", q, "--db-features", db,
                    "--top-n", 4, "--out", tmp_path / "out" / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert all(name in page for name in ("q0_pos0", "q1_pos1", "q2_pos0"))
    assert "data:image/jpeg;base64," in page  # thumbnails embedded
    pictures = list((tmp_path / "out" / "report_matches").glob("*.png"))
    names = {p.name for p in pictures}
    # at most 3 per query, and each query's two positives (ranked first after reranking) are drawn
    assert len(pictures) <= 9 and {f"q{i}+q{i}_pos{k}.png" for i in range(3) for k in range(2)} <= names
    result = invoke("report", "--ranking", tmp_path / "rr.txt", "--images", tmp_path / "photos", "--matches",
                    tmp_path / "m.h5", "--out", tmp_path / "x.html")
    assert result.exit_code == 2 and "--query-features" in result.output


def test_ivfpq_index_and_nprobe(tmp_path, stores):
    pytest.importorskip("faiss")
    q, db, _ = stores
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "big", "--kind", "ivfpq", "nlist=2", "m=4")
    assert result.exit_code == 2 and "training vectors" in result.output and "kind=exact" in result.output
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "ivf", "--kind", "ivfpq", "nlist=2", "m=4",
                    "nbits=2", "refine=4", "refine_type=flat")
    assert result.exit_code == 0, result.output
    result = invoke("search", "--index", tmp_path / "ivf", "--features", q, "--top-k", 3, "--nprobe", 2,
                    "--out", tmp_path / "r.txt")
    assert result.exit_code == 0, result.output
    ranking = read_ranking(tmp_path / "r.txt")
    # every cell scanned and exact re-scoring: the look-alike comes first as with exact search
    assert all(ranking.results(qn)[0][0] == f"{qn}_lookalike" for qn in ranking.queries)
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "exact")
    result = invoke("search", "--index", tmp_path / "exact", "--features", q, "--nprobe", 2)
    assert result.exit_code == 2 and "ivfpq" in result.output


def test_putative_rule_follows_the_feature_family(tmp_path, stores):

    q, db, _ = stores
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--out", tmp_path / "r.txt").exit_code == 0
    args = ["rerank", "--ranking", tmp_path / "r.txt", "--query-features", q, "--db-features", db, "--out", tmp_path / "rr.txt"]
    result = invoke(*args)
    assert result.exit_code == 0 and "mutual NN (mutual, features: synthetic)" in result.output
    result = invoke(*args, "--putative", "tf")
    assert result.exit_code == 0 and "NN, distance < 1 (tf" in result.output
    result = invoke(*args, "--putative", "mutual", "--max-distance", 0.7)
    assert result.exit_code == 0 and "mutual NN, distance < 0.7" in result.output
    result = invoke(*args, "--putative", "best")
    assert result.exit_code == 2 and "--putative" in result.output
    # a DELG store gets the TF rule by default
    delg = tmp_path / "delg_q.h5"
    _copy_store(q, delg, "delg")
    result = invoke("rerank", "--ranking", tmp_path / "r.txt", "--query-features", delg, "--db-features", db,
                    "--out", tmp_path / "rr.txt")
    assert result.exit_code == 0 and "NN, distance < 1 (tf, features: delg)" in result.output


def test_features_of_different_models_are_refused_by_name(tmp_path, stores):
    import torch

    q, db, _ = stores
    other = tmp_path / "other.h5"

    def other_dims(f):
        f.descriptors = torch.nn.functional.normalize(torch.randn(len(f), 8), dim=1)
        f.global_descriptor = torch.nn.functional.normalize(torch.randn(4), dim=0)

    _copy_store(q, other, "x", other_dims)
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    result = invoke("search", "--index", tmp_path / "i", "--features", other)
    assert result.exit_code == 2 and "16" in result.output and "4" in result.output
    ranking = tmp_path / "r.txt"
    ranking.write_text("q0 other1 0.9\n")
    result = invoke("rerank", "--ranking", ranking, "--query-features", other, "--db-features", db, "--out", tmp_path / "rr.txt")
    assert result.exit_code == 2 and "'q0' has 8-D descriptors but 'other1' 32-D" in result.output


def test_search_and_rerank_never_overwrite_a_file_that_is_not_a_ranking(tmp_path, stores):
    q, db, _ = stores
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = invoke("search", "--index", tmp_path / "i", "--features", q, "--out", notes)
    assert result.exit_code == 2 and "is not a delfi ranking" in result.output
    assert notes.read_text() == "my notes\n"
    ranking = tmp_path / "r.txt"
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--out", ranking).exit_code == 0
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--out", ranking).exit_code == 0  # ours: replaced
    result = invoke("rerank", "--ranking", ranking, "--query-features", q, "--db-features", db, "--out", notes)
    assert result.exit_code == 2 and "is not a delfi ranking" in result.output
    assert notes.read_text() == "my notes\n"
