"""Never lose a user's data, never stop on one bad item, say what went wrong: indexes, search,
reranking, rankings, PCA and the report, through the library and the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from retrieval_scene import make_scene, write_store  # noqa: E402

from delfi.cli.app import app  # noqa: E402
from delfi.io.features import FeatureStore  # noqa: E402
from delfi.io.rankings import RankingFormatError, read_ranking  # noqa: E402
from delfi.retrieval.index import GlobalIndex  # noqa: E402
from delfi.retrieval.settings import IndexSettingsError, check_index_settings  # noqa: E402
from delfi.retrieval.storage import (  # noqa: E402
    IndexFormatError,
    IndexPathError,
    load_index,
    sha256_file,
    write_index_dir,
)
from delfi.types import Features, Ranking  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _names(n: int) -> list[str]:
    return [f"img{i}" for i in range(n)]


@pytest.fixture
def scene(tmp_path):
    queries, db, truth = make_scene()
    return write_store(tmp_path / "q.h5", queries), write_store(tmp_path / "db.h5", db), truth


def _break_entries(monkeypatch, bad: dict[str, str]) -> None:
    """FeatureStore.get raises ValueError for the names in ``bad`` ("error") or returns NaN ("nan")."""
    original = FeatureStore.get

    def get(self, name, device=None):
        how = bad.get(name)
        if how == "error":
            raise ValueError(f"{self.path}: entry {name!r} is damaged (dataset 'descriptors' missing)")
        features = original(self, name, device)
        if how == "nan":
            features.descriptors = torch.full_like(features.descriptors, float("nan"))
            if features.global_descriptor is not None:
                features.global_descriptor = torch.full_like(features.global_descriptor, float("nan"))
        return features

    monkeypatch.setattr(FeatureStore, "get", get)
    monkeypatch.setattr(FeatureStore, "__getitem__", get)


# --- 1. an index never replaces what delfi did not write -------------------------------------------


def test_index_build_refuses_a_folder_of_other_files_and_a_plain_file(tmp_path, scene):
    _, db, _ = scene
    folder = tmp_path / "mydir"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    result = invoke("index", "build", "--features", db, "--out", folder)
    assert result.exit_code == 2 and "not a delfi index" in result.output
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"] and (folder / "thesis.tex").read_text() == "years of work"
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    result = invoke("index", "build", "--features", db, "--out", plain, "--overwrite")
    assert result.exit_code == 2 and "is a file" in result.output
    assert plain.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.h5", "mydir", "notes.txt", "q.h5"]  # nothing aside


def test_an_index_is_replaced_only_with_overwrite_and_only_when_it_holds_its_own_files(tmp_path, scene):
    _, db, _ = scene
    out = tmp_path / "db.index"
    assert invoke("index", "build", "--features", db, "--out", out).exit_code == 0
    first = (out / "meta.json").read_text()
    result = invoke("index", "build", "--features", db, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "meta.json").read_text() == first
    result = invoke("index", "build", "--features", db, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(load_index(out)) == 15
    (out / "my_notes.md").write_text("mine")
    result = invoke("index", "build", "--features", db, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "my_notes.md" in result.output
    assert (out / "my_notes.md").read_text() == "mine" and len(load_index(out)) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.h5", "db.index", "q.h5"]


def test_an_empty_folder_may_receive_an_index(tmp_path):
    (tmp_path / "empty").mkdir()
    GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "empty", overwrite=False)
    assert len(load_index(tmp_path / "empty")) == 5


def test_a_failed_save_keeps_the_old_index_whole(tmp_path):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(tmp: Path) -> None:
        (tmp / "vectors.npy").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_index_dir(path, "exact", 8, _names(3), {}, broken, overwrite=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary or old copy left


def test_asmk_indexes_follow_the_same_rule(tmp_path):
    pytest.importorskip("asmk")
    from delfi.retrieval.asmk import ASMKIndex

    index = ASMKIndex(8, codebook_size=4, multiple_assignment_query=2)
    index.train(_unit(64))
    index.add([_unit(5, seed=1), _unit(3, seed=2)], ["a", "b"])
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(IndexPathError, match="not a delfi index"):
        index.save(folder)
    assert [p.name for p in folder.iterdir()] == ["cat.jpg"]
    path = index.save(tmp_path / "asmk")
    with pytest.raises(IndexPathError, match="overwrite"):
        index.save(path, overwrite=False)
    assert load_index(index.save(path, overwrite=True)).names == ["a", "b"]


# --- 2. meta.json names only files inside the index, with the right types --------------------------


def _rewrite_meta(path: Path, change) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("entry", ["../outside.txt", "/etc/passwd", "sub/names.txt", "..", ""])
def test_meta_json_cannot_name_files_outside_the_index(tmp_path, entry):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    _rewrite_meta(path, lambda m: m["files"].__setitem__(entry, sha256_file(outside)))
    with pytest.raises(IndexFormatError, match="meta.json.*not a plain file name") as info:
        load_index(path)
    assert repr(entry) in str(info.value)


def test_a_link_leading_out_of_the_index_is_refused(tmp_path):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    outside = tmp_path / "outside.npy"
    os.replace(path / "vectors.npy", outside)
    (path / "vectors.npy").symlink_to(outside)
    with pytest.raises(IndexFormatError, match="'vectors.npy' is a link to .*outside"):
        load_index(path)


@pytest.mark.parametrize("key, value, message", [
    ("dim", "abc", "'dim' must be a positive integer, got 'abc'"),
    ("count", -1, "'count' must be a non-negative integer"),
    ("files", ["names.txt"], "'files' must be an object"),
    ("kind", 3, "'kind' must be a string"),
    ("config", {"nlist": "abc"}, None),
])
def test_meta_json_values_of_the_wrong_type_are_named(tmp_path, key, value, message):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    if key == "config":  # an ivfpq config with a bad value
        pytest.importorskip("faiss")
        path = GlobalIndex.build(_unit(300, 8), _names(300), "ivfpq", nlist=2, m=2, nbits=2).save(tmp_path / "ivf")
        _rewrite_meta(path, lambda m: m["config"].update(value))
        with pytest.raises(IndexFormatError, match=r"meta.json: bad config .*nlist='abc'.*integer"):
            load_index(path)
        return
    _rewrite_meta(path, lambda m: m.__setitem__(key, value))
    with pytest.raises(IndexFormatError, match="meta.json: " + message.replace("(", r"\(")):
        load_index(path, verify=False)


def test_names_txt_must_be_utf8_with_one_name_per_vector(tmp_path):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    names = path / "names.txt"
    for content, message in ((b"img0\n\xff\xfe\nimg2\nimg3\nimg4\n", "names.txt: not UTF-8"),
                             (b"img0\nimg1\n", "names.txt: 2 names but meta.json says 5")):
        names.write_bytes(content)
        _rewrite_meta(path, lambda m: m["files"].__setitem__("names.txt", sha256_file(names)))
        with pytest.raises(IndexFormatError, match=message):
            load_index(path)
    (path / "names.txt").unlink()
    with pytest.raises(IndexFormatError, match="names.txt: listed in meta.json but missing"):
        load_index(path)


def test_non_finite_index_vectors_are_refused_naming_the_image(tmp_path):
    path = GlobalIndex.build(_unit(5), _names(5)).save(tmp_path / "idx")
    vectors = np.load(path / "vectors.npy")
    vectors[3, 1] = np.inf
    np.save(path / "vectors.npy", vectors)
    _rewrite_meta(path, lambda m: m["files"].__setitem__("vectors.npy", sha256_file(path / "vectors.npy")))
    with pytest.raises(IndexFormatError, match=r"vectors.npy: NaN or infinite .* 1 image\(s\) \('img3'\)"):
        load_index(path)


# --- 3. index settings are checked by kind ----------------------------------------------------------


def test_settings_typos_and_types_are_named_for_every_kind():
    with pytest.raises(IndexSettingsError, match=r"unknown setting 'nlsit' for an ivfpq index \(known: nlist, m, "
                                                 r"nbits, nprobe, refine.*\); did you mean nlist\?"):
        check_index_settings("ivfpq", {"nlsit": 4096})
    with pytest.raises(IndexSettingsError, match=r"nlist='abc' for an ivfpq index: expected an integer"):
        check_index_settings("ivfpq", {"nlist": "abc"})
    with pytest.raises(IndexSettingsError, match="did you mean codebook_size"):
        check_index_settings("asmk", {"codebook_sise": 8})
    with pytest.raises(IndexSettingsError, match="use_idf='yes' for an asmk index: expected true or false"):
        check_index_settings("asmk", {"use_idf": "yes"})
    with pytest.raises(IndexSettingsError, match="'nlist' for an exact index .*takes no settings"):
        check_index_settings("exact", {"nlist": 8})
    with pytest.raises(IndexSettingsError, match="did you mean nlist"):
        GlobalIndex.build(_unit(5), _names(5), "ivfpq", nlsit=2)
    assert check_index_settings("ivfpq", {"nlist": 8, "refine_type": "fp16"}) == {"nlist": 8, "refine_type": "fp16"}


def test_build_index_checks_settings_before_reading_anything(tmp_path):
    from delfi.retrieval.search import build_index

    with pytest.raises(IndexSettingsError, match="did you mean nprobe"):
        build_index(tmp_path / "not-read.h5", tmp_path / "i", kind="ivfpq", params={"nprobes": 4})
    assert not (tmp_path / "i").exists()


def test_cli_setting_typo_is_a_usage_error(tmp_path, scene):
    _, db, _ = scene
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i", "--kind", "ivfpq", "nlsit=4096")
    assert result.exit_code == 2 and "did you mean nlist?" in result.output
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i", "--kind", "ivfpq", "nlist=abc")
    assert result.exit_code == 2 and "nlist='abc'" in result.output and "integer" in result.output
    assert not (tmp_path / "i").exists()


# --- 4. non-finite values are refused where they enter ----------------------------------------------


class _Store:
    """A minimal feature source: names -> Features, ValueError for a bad entry."""

    def __init__(self, items: dict, bad: set[str] = frozenset()):
        self.items, self.bad, self.path = items, set(bad), "fake.h5"

    def names(self):
        return sorted(self.items)

    def __contains__(self, name):
        return name in self.items

    def get(self, name):
        if name in self.bad:
            raise ValueError(f"fake.h5: entry {name!r} is damaged")
        if name not in self.items:
            raise KeyError(name)
        return self.items[name]


def _features(glob: np.ndarray | None, n: int = 4, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(torch.from_numpy(rng.uniform(0, 50, (n, 2)).astype(np.float32)), torch.ones(n),
                    torch.from_numpy(_unit(n, 8, seed)),
                    global_descriptor=None if glob is None else torch.from_numpy(glob), image_size=(64, 64))


def test_descriptors_left_out_are_reported_or_raise():
    from delfi.retrieval.search import BadEntryError, global_descriptors, local_descriptors

    g = _unit(4)
    nan = g[2].copy()
    nan[0] = np.nan
    store = _Store({"a": _features(g[0]), "b": _features(g[1]), "c": _features(nan), "d": _features(g[3])}, bad={"b"})
    failed = []
    names, vectors = global_descriptors(store, on_failure=lambda n, why: failed.append((n, why)))
    assert names == ["a", "d"] and vectors.shape == (2, 8) and np.isfinite(vectors).all()
    assert [n for n, _ in failed] == ["b", "c"]
    assert "damaged" in failed[0][1] and "'c'" in failed[1][1] and "NaN or infinite" in failed[1][1]
    with pytest.raises(BadEntryError, match="damaged"):
        global_descriptors(store)
    store.bad = set()
    store.items["c"].descriptors[1, 3] = float("inf")
    with pytest.raises(BadEntryError, match=r"'c'.*NaN or infinite values in the local descriptors"):
        local_descriptors(store)


def test_index_build_and_search_list_bad_images_and_go_on(tmp_path, scene, monkeypatch):
    q, db, _ = scene
    _break_entries(monkeypatch, {"other0": "nan", "other1": "error", "q1": "nan"})
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i")
    assert result.exit_code == 1, result.output
    assert "other0" in result.output and "other1" in result.output and "damaged" in result.output
    index = load_index(tmp_path / "i")
    assert len(index) == 13 and "other0" not in index.names
    result = invoke("search", "--index", tmp_path / "i", "--features", q, "--top-k", 5, "--out", tmp_path / "r.txt")
    assert result.exit_code == 1 and "q1" in result.output and "NaN or infinite" in result.output
    ranking = read_ranking(tmp_path / "r.txt")
    assert ranking.queries == ["q0", "q2"] and np.isfinite(ranking.scores).all()


def test_a_long_failure_list_is_written_in_full(tmp_path, scene, monkeypatch):
    _, db, _ = scene
    with FeatureStore(db) as store:
        names = store.names()
    bad = {n: "error" for n in names[:12]}
    _break_entries(monkeypatch, bad)
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i")
    assert result.exit_code == 1 and "and 2 more" in result.output
    listed = (tmp_path / "i.failures.tsv").read_text().splitlines()
    assert listed[0].startswith("#") and sorted(line.split("\t")[0] for line in listed[1:]) == sorted(bad)


def test_nothing_usable_is_a_usage_error(tmp_path, scene, monkeypatch):
    _, db, _ = scene
    with FeatureStore(db) as store:
        _break_entries(monkeypatch, {n: "nan" for n in store.names()})
    result = invoke("index", "build", "--features", db, "--out", tmp_path / "i")
    assert result.exit_code == 2 and "no usable entry" in result.output and not (tmp_path / "i").exists()


def test_ranking_files_with_non_finite_scores_are_refused_by_line(tmp_path):
    path = tmp_path / "r.txt"
    for text, what in (("q a 0.5\nq b inf\n", "score 'inf'"), ("q a 0.5 -inf 3\n", "global score '-inf'"),
                       ("q a nan\n", "score 'nan'")):
        path.write_text(text)
        with pytest.raises(RankingFormatError, match=f"r.txt:{text.count(chr(10))}: the {what} is not finite"):
            read_ranking(path)


def test_lexicographic_fusion_orders_by_inliers_whatever_the_global_score():
    from delfi.retrieval.rerank import RerankConfig, _reorder, fuse_scores

    # tanh(25) rounds to 1 and tanh(-25) to -1: 4 + 1 == 5 + 0 as fused scores
    ranking = Ranking(["q"], ["a", "b", "c"], [[0, 1, 2]], [[25.0, 0.0, -25.0]])
    out = _reorder(ranking, np.array([[4, 3, 5]]), RerankConfig())
    assert [out.database[i] for i in out.indices[0]] == ["c", "a", "b"]
    assert (np.diff(out.scores[0]) <= 0).all()
    with pytest.raises(ValueError, match="finite"):
        fuse_scores(np.array([np.inf, 0.0]), np.array([4, 5]), RerankConfig(fusion="weighted"))


def test_rerank_refuses_infinite_global_scores_at_input():
    from delfi.retrieval.rerank import rerank

    ranking = Ranking(["q"], ["a", "b"], [[0, 1]], [[np.inf, 0.5]])
    store = _Store({"q": _features(None), "a": _features(None, seed=1), "b": _features(None, seed=2)})
    with pytest.raises(ValueError, match=r"NaN or infinite score.*'q'.*'a'"):
        rerank(ranking, store, store)


def test_pca_fit_skips_non_finite_entries_and_refuses_when_nothing_is_left(tmp_path, scene, monkeypatch):
    from delfi.extract.pca import fit_pca_streaming, load_pca

    _, db, _ = scene
    with pytest.raises(ValueError, match="batch 1: NaN or infinite"):
        fit_pca_streaming([np.ones((3, 2)), np.full((3, 2), np.nan)])
    _break_entries(monkeypatch, {"other0": "nan", "other1": "error"})
    out = tmp_path / "pca.h5"
    result = invoke("pca", "fit", "--features", db, "--dims", 8, "--out", out)
    assert result.exit_code == 1, result.output
    assert "other0" in result.output and "other1" in result.output
    pca = load_pca(out)
    assert np.isfinite(pca.components).all() and pca.source["images"] == 13
    with FeatureStore(db) as store:
        _break_entries(monkeypatch, {n: "nan" for n in store.names()})
    result = invoke("pca", "fit", "--features", db, "--dims", 8, "--out", tmp_path / "none.h5")
    assert result.exit_code == 2 and "15 entries skipped" in result.output and not (tmp_path / "none.h5").exists()


# --- 5. wrong shapes, bad files, outputs among inputs ------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"q a 0.5\nq b\n", r"r.txt:2: expected .* got 2 column"),
    (b"q a 0.5 0.4\n", r"r.txt:1: expected .* got 4 column"),
    (b"q a high\n", r"r.txt:1: the score 'high' is not a number"),
    (b"q a 0.5\n\xff\xfe 0.1\n", r"r.txt:2: not UTF-8"),
    (b"q a 0.5\nq a 0.4\n", r"r.txt:2: 'a' is listed twice"),
    (b"q a 0.5 0.5 -3\n", r"r.txt:1: the inlier count -3 is negative"),
])
def test_bad_ranking_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "r.txt").write_bytes(content)
    with pytest.raises(RankingFormatError, match=message):
        read_ranking(tmp_path / "r.txt")


def test_search_results_of_the_wrong_shape_are_refused():
    from delfi.retrieval.search import ranking_from_scores

    with pytest.raises(ValueError, match="3 queries"):
        ranking_from_scores(["a", "b", "c"], ["x", "y"], np.zeros((2, 2)), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"\[-1, 2\)"):
        ranking_from_scores(["a"], ["x", "y"], np.zeros((1, 2)), np.array([[0, 5]]))


def test_outputs_that_are_inputs_are_refused_untouched(tmp_path, scene):
    q, db, _ = scene
    sizes = {p: p.stat().st_size for p in (q, db)}
    assert invoke("index", "build", "--features", db, "--out", db).exit_code == 2
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    r = tmp_path / "r.txt"
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--out", q).exit_code == 2
    result = invoke("search", "--index", tmp_path / "i", "--features", q, "--out", tmp_path / "i" / "names.txt")
    assert result.exit_code == 2 and "inside the index" in result.output
    assert invoke("search", "--index", tmp_path / "i", "--features", q, "--out", r).exit_code == 0
    assert invoke("pca", "fit", "--features", db, "--dims", 8, "--out", db).exit_code == 2
    assert invoke("report", "--ranking", r, "--images", tmp_path, "--out", r).exit_code == 2
    assert {p: p.stat().st_size for p in (q, db)} == sizes
    load_index(tmp_path / "i")  # intact
    text = r.read_text()
    pytest.importorskip("cv2")
    result = invoke("rerank", "--ranking", r, "--query-features", q, "--db-features", db, "--out", r)
    assert result.exit_code == 2 and "also an input" in result.output
    assert r.read_text() == text


def test_search_out_a_folder_or_in_a_new_folder(tmp_path, scene):
    q, db, _ = scene
    assert invoke("index", "build", "--features", db, "--out", tmp_path / "i").exit_code == 0
    (tmp_path / "folder").mkdir()
    result = invoke("search", "--index", tmp_path / "i", "--features", q, "--out", tmp_path / "folder")
    assert result.exit_code == 2 and "is a folder" in result.output
    result = invoke("search", "--index", tmp_path / "i", "--features", q, "--out", tmp_path / "new" / "r.txt")
    assert result.exit_code == 0 and read_ranking(tmp_path / "new" / "r.txt").queries == ["q0", "q1", "q2"]


def test_rerank_never_replaces_a_file_that_is_not_its_match_store(tmp_path, scene):
    pytest.importorskip("cv2")
    q, db, _ = scene
    r = tmp_path / "r.txt"
    r.write_text("q0 q0_pos0 0.9\nq0 other1 0.5\n")
    precious = tmp_path / "photos.h5"
    precious.write_bytes(b"not a match store")
    args = ["rerank", "--ranking", r, "--query-features", q, "--db-features", db, "--out", tmp_path / "rr.txt"]
    result = invoke(*args, "--matches", precious)
    assert result.exit_code == 2 and "not a delfi match store" in result.output
    assert precious.read_bytes() == b"not a match store" and not (tmp_path / "rr.txt").exists()
    result = invoke(*args, "--matches", tmp_path / "m.h5")
    assert result.exit_code == 0, result.output
    assert invoke(*args, "--matches", tmp_path / "m.h5").exit_code == 0  # its own store is started afresh


def test_pca_out_that_is_not_a_delfi_pca_is_refused(tmp_path, scene):
    from delfi.extract.pca import PCAFileError, load_pca

    _, db, _ = scene
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    result = invoke("pca", "fit", "--features", db, "--dims", 8, "--out", mine)
    assert result.exit_code == 2 and "not a delfi PCA" in result.output
    assert mine.read_bytes() == b"\x89HDF\r\n\x1a\n not really"
    with pytest.raises(PCAFileError, match="mine.h5"):
        load_pca(mine)
    good = tmp_path / "pca.npz"
    assert invoke("pca", "fit", "--features", db, "--dims", 8, "--out", good).exit_code == 0
    assert invoke("pca", "fit", "--features", db, "--dims", 4, "--out", good).exit_code == 0  # delfi's own: replaced
    assert load_pca(good).dims == 4


def test_pca_files_with_wrong_shapes_or_fields_are_named(tmp_path):
    from delfi.extract.pca import PCAFileError, load_pca

    path = tmp_path / "bad.npz"
    attrs = json.dumps({"format": "delfi-pca", "format_version": 1, "dims": 2})
    np.savez(path, mean=np.zeros(3), components=np.eye(2), eigenvalues=np.ones(3), attrs=np.array(attrs))
    with pytest.raises(PCAFileError, match=r"bad.npz is malformed.*\(3,\)"):
        load_pca(path)
    attrs = json.dumps({"format": "delfi-pca", "format_version": "abc"})
    np.savez(path, mean=np.zeros(2), components=np.eye(2), eigenvalues=np.ones(2), attrs=np.array(attrs))
    with pytest.raises(PCAFileError, match="bad.npz: format_version 'abc'"):
        load_pca(path)


# --- 6. bad entries during reranking -----------------------------------------------------------------


def test_rerank_lists_bad_entries_with_their_reason_and_verifies_the_rest():
    from delfi.retrieval.rerank import RerankConfig, RerankReport, rerank

    db = {f"d{i}": _features(None, n=30, seed=i) for i in range(4)}
    queries = _Store({"q": _features(None, n=30, seed=0), "p": _features(None, n=30, seed=1)}, bad={"p"})
    ranking = Ranking(["q", "p"], list(db), [[0, 1, 2, 3], [0, 1, 2, 3]], [[0.9, 0.8, 0.7, 0.6]] * 2)
    report = RerankReport()
    out = rerank(ranking, queries, _Store(db, bad={"d2"}), RerankConfig(workers=2), report=report)
    assert report.missing == ["d2", "p"] and "damaged" in report.failed["d2"] and "damaged" in report.failed["p"]
    assert report.pairs == 3
    row = dict(zip((out.database[i] for i in out.indices[0]), out.inliers[0]))
    assert row["d2"] == -1 and row["d0"] >= 0 and (out.inliers[1] == -1).all()


def test_rerank_cli_lists_a_bad_entry_and_writes_the_rest(tmp_path, scene, monkeypatch):
    pytest.importorskip("cv2")
    q, db, _ = scene
    r = tmp_path / "r.txt"
    r.write_text("q0 q0_pos0 0.9\nq0 other1 0.5\nq1 q1_pos0 0.9\n")
    _break_entries(monkeypatch, {"other1": "error"})
    result = invoke("rerank", "--ranking", r, "--query-features", q, "--db-features", db, "--out", tmp_path / "rr.txt")
    assert result.exit_code == 1 and "other1" in result.output and "damaged" in result.output
    after = read_ranking(tmp_path / "rr.txt")
    assert after.queries == ["q0", "q1"] and after.inliers[0, 0] > 0


# --- 7. the report ---------------------------------------------------------------------------------


def test_report_refuses_a_missing_images_folder_and_a_foreign_out(tmp_path):
    r = tmp_path / "r.txt"
    r.write_text("q a 0.5\n")
    result = invoke("report", "--ranking", r, "--images", tmp_path / "nowhere", "--out", tmp_path / "p.html")
    assert result.exit_code == 2 and "--images" in result.output and "nowhere" in result.output
    page = tmp_path / "index.html"
    page.write_text("<html>my homepage</html>")
    result = invoke("report", "--ranking", r, "--images", tmp_path, "--out", page)
    assert result.exit_code == 2 and "not a delfi report" in result.output
    assert page.read_text() == "<html>my homepage</html>"
    ours = tmp_path / "report.html"
    assert invoke("report", "--ranking", r, "--images", tmp_path, "--out", ours).exit_code == 0
    assert invoke("report", "--ranking", r, "--images", tmp_path, "--out", ours).exit_code == 0  # its own page


def test_write_report_never_overwrites_a_foreign_file(tmp_path):
    from delfi.viz.report import ReportPathError, is_delfi_report, write_report

    ranking = Ranking(["q"], ["a"], [[0]], [[0.5]])
    foreign = tmp_path / "notes.html"
    foreign.write_text("mine")
    with pytest.raises(ReportPathError, match="not a delfi report"):
        write_report(foreign, ranking)
    assert foreign.read_text() == "mine"
    assert is_delfi_report(write_report(tmp_path / "ok.html", ranking))


def test_the_current_folder_is_never_swapped_out_as_an_index(tmp_path, monkeypatch):
    """An index is written beside its target and swapped in: the folder the user stands in (even
    empty) is refused by name instead of being moved away under them."""
    from delfi.retrieval.storage import IndexPathError, check_index_target

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for spelling in (".", str(here), ".."):
        with pytest.raises(IndexPathError, match="current folder"):
            check_index_target(spelling)
    assert check_index_target("db.index") == []  # a new folder inside it is fine
