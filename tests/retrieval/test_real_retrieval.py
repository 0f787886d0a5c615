"""Retrieval on real photos: official R2D2 weights, ASMK search, spatial-verification reranking.

Database: 10 Sacre Coeur photos (hloc), a second Sacre Coeur photo, DSC_0411 and all_souls_000055;
queries: sacre_coeur1, DSC_0410 and all_souls_000013 (each with its true partner in the database,
the Oxford pair being a revisited-Oxford query and one of its Easy positives).
"""

from __future__ import annotations

import pytest

pytest.importorskip("cv2")
pytest.importorskip("asmk")

pytestmark = pytest.mark.slow

SACRE_COEUR = "sacre_coeur"
TRUTH = {"DSC_0410.JPG": {"DSC_0411.JPG"}, "all_souls_000013.jpg": {"all_souls_000055.jpg"}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared_data):
    from delfi.config import config_to_dict
    from delfi.extract.extractor import extract_to_store
    from delfi.io.images import ImageEntry
    from delfi.models import create, resolve_config

    weights = shared_data / "r2d2" / "models" / "r2d2_WASF_N16.pt"
    images = shared_data / "images"
    db = [ImageEntry(p, p.name) for p in sorted((images / SACRE_COEUR).glob("*.jpg"))]
    db += [ImageEntry(images / "pairs" / "sacre_coeur2.jpg", "sacre_coeur2.jpg"),
           ImageEntry(images / "pairs" / "DSC_0411.JPG", "DSC_0411.JPG"),
           ImageEntry(shared_data / "oxford" / "all_souls_000055.jpg", "all_souls_000055.jpg")]
    queries = [ImageEntry(images / "pairs" / "sacre_coeur1.jpg", "sacre_coeur1.jpg"),
               ImageEntry(images / "pairs" / "DSC_0410.JPG", "DSC_0410.JPG"),
               ImageEntry(shared_data / "oxford" / "all_souls_000013.jpg", "all_souls_000013.jpg")]
    config = resolve_config("r2d2", [f"weights={weights}", "top_k=1000", "max_size=512", "precision=bfloat16"])
    model = create("r2d2", **config_to_dict(config))
    out = tmp_path_factory.mktemp("real_retrieval")
    for entries, path in ((db, out / "db.h5"), (queries, out / "q.h5")):
        report = extract_to_store(model, entries, path, config=config_to_dict(config))
        assert report.failed == 0
    return out, [e.name for e in db]


def _is_correct(query: str, result: str) -> bool:
    if query == "sacre_coeur1.jpg":
        return result == "sacre_coeur2.jpg" or "_" in result and result[0].isdigit()  # any Sacre Coeur photo
    return result in TRUTH[query]


def test_asmk_then_rerank_puts_the_true_partner_first(stores):
    from delfi.match.pipeline import MatchingConfig
    from delfi.retrieval.rerank import RerankConfig, rerank_stores
    from delfi.retrieval.search import build_index, search

    out, db_names = stores
    index = build_index(out / "db.h5", out / "asmk", kind="asmk", params={"codebook_size": 256})
    before = search(index, out / "q.h5", top_k=len(db_names))
    # ASMK alone already finds each partner in its top 3
    for q in before.queries:
        assert any(_is_correct(q, name) for name, _ in before.results(q)[:3]), (q, before.results(q)[:3])
    # R2D2 descriptors need mutual nearest neighbours (the TF distance-1.0 rule is made for DELG's)
    config = RerankConfig(top_k=len(db_names), matching=MatchingConfig(
        mutual=True, max_distance=None, geometry="homography", threshold=20.0, max_iters=1000, seed=0))
    after = rerank_stores(before, out / "q.h5", out / "db.h5", config)
    for qi, q in enumerate(after.queries):
        name = after.results(q)[0][0]
        assert _is_correct(q, name), (q, after.results(q)[:3])
        # the partner's inliers stand well above the best wrong image's
        wrong = [n for (res, _), n in zip(after.results(q), after.inliers[qi]) if not _is_correct(q, res)]
        assert after.inliers[qi, 0] >= 2 * max(wrong) + 5
