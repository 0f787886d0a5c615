"""hloc interoperability (delfi.io.hloc): round trips, hloc-written files, broken entries, data safety."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from delfi.io import hloc
from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore
from delfi.io.pairs import read_pairs
from delfi.types import Features, Matches

SIZES = {"sub/a.jpg": (120, 90), "b.jpg": (64, 48), "deep/er/c.png": (33, 200), "empty.jpg": (10, 10)}


def make_features(n: int, size: tuple[int, int], seed: int, dim: int = 16, scales: bool = True) -> Features:
    rng = np.random.default_rng(seed)
    kp = rng.uniform(-0.5, 1.0, (n, 2)) * (np.array(size) - 0.5)
    desc = rng.normal(size=(n, dim))
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-9)
    glob = rng.normal(size=8)
    return Features(
        keypoints=torch.from_numpy(kp.astype(np.float32)),
        scores=torch.from_numpy(rng.uniform(0.1, 5.0, n).astype(np.float32)),
        descriptors=torch.from_numpy(desc.astype(np.float32)),
        scales=torch.from_numpy(rng.uniform(1, 9, n).astype(np.float32)) if scales else None,
        global_descriptor=torch.from_numpy((glob / np.linalg.norm(glob)).astype(np.float32)),
        image_size=size,
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, Features]]:
    entries = {name: make_features(n, size, seed) for seed, ((name, size), n)
               in enumerate(zip(SIZES.items(), (40, 25, 31, 0)))}
    path = tmp_path / "feats.h5"
    with FeatureStore(path, "w", attrs={"model": "r2d2"}) as s:
        for name, features in entries.items():
            s.put(name, features)
    return path, entries


def matches(rows: list[tuple[int, int]], scores: list[float], **kw) -> Matches:
    return Matches(indices=torch.tensor(rows, dtype=torch.int64).reshape(-1, 2),
                   scores=torch.tensor(scores, dtype=torch.float32), **kw)


# ------------------------------------------------------------------------------- features


@pytest.mark.parametrize("half", [False, True])
def test_features_round_trip_through_hloc_layout(tmp_path, store, half):
    path, entries = store
    out, glob = tmp_path / "hloc" / "features.h5", tmp_path / "hloc" / "global-feats.h5"
    out.parent.mkdir()
    report = hloc.export_features(path, out, global_out=glob, as_half=half)
    assert (report.entries, report.global_entries, report.failures) == (4, 4, [])
    assert report.keypoints == 96 and report.num_keypoints["sub/a.jpg"] == 40

    with h5py.File(out, "r") as f:  # hloc's layout, read raw
        assert f.attrs["delfi_export"] == hloc.EXPORT_MARK
        assert isinstance(f["sub"], h5py.Group) and isinstance(f["deep/er"], h5py.Group)
        group = f["sub/a.jpg"]
        a = entries["sub/a.jpg"]
        assert group["descriptors"].shape == (16, 40)  # (D, N)
        assert group["descriptors"].dtype == (np.float16 if half else np.float32)
        assert group["keypoints"].dtype == np.float32 and group["scores"].dtype == np.float32
        np.testing.assert_array_equal(group["keypoints"][()], a.keypoints.numpy())  # same convention
        np.testing.assert_array_equal(group["image_size"][()], [120, 90])  # (width, height)
        np.testing.assert_allclose(group["descriptors"][()].T, a.descriptors.numpy(), atol=1e-3 if half else 0)
        assert f["empty.jpg/descriptors"].shape == (16, 0)
        assert "global_descriptor" not in group
    with h5py.File(glob, "r") as g:
        assert set(g["sub/a.jpg"].keys()) == {"global_descriptor", "image_size"}
        assert g["sub/a.jpg/global_descriptor"].shape == (8,)

    back = tmp_path / "back.h5"
    imported = hloc.import_features(out, back, global_h5=glob)
    assert (imported.imported, imported.with_global, imported.failures) == (4, 4, [])
    assert imported.sizes_from_keypoints == [] and imported.scores_defaulted == 0
    tol = 1e-3 if half else 0
    with FeatureStore(back) as s:
        assert s.names() == sorted(entries)
        assert s.attrs["descriptor_dtype"] == ("float16" if half else "float32")
        for name, want in entries.items():
            got = s.get(name)
            assert got.image_size == want.image_size, name
            assert torch.equal(got.keypoints, want.keypoints), name
            assert torch.equal(got.scores, want.scores), name
            assert torch.equal(got.scales, want.scales), name
            assert got.descriptors.shape == want.descriptors.shape
            assert torch.allclose(got.descriptors, want.descriptors, atol=tol, rtol=0), name
            assert torch.allclose(got.global_descriptor, want.global_descriptor, atol=tol, rtol=0), name


def test_import_resumes_and_skips_entries_already_present(tmp_path, store):
    path, entries = store
    out = tmp_path / "features.h5"
    hloc.export_features(path, out)
    back = tmp_path / "back.h5"
    first = hloc.import_features(out, back)
    again = hloc.import_features(out, back)
    assert (first.imported, first.already_present) == (4, 0)
    assert (again.imported, again.already_present) == (0, 4)
    assert again.num_keypoints == {name: len(f) for name, f in entries.items()}


def write_hloc_features(path: Path, entries: dict[str, dict], half: bool = True) -> None:
    """A features file as hloc's extract_features writes it: with as_half every float32 array is float16."""
    with h5py.File(path, "w") as f:
        for name, arrays in entries.items():
            group = f.create_group(name)
            for key, value in arrays.items():
                value = np.asarray(value)
                if half and value.dtype == np.float32:
                    value = value.astype(np.float16)
                group.create_dataset(key, data=value)
            if "keypoints" in arrays:
                group["keypoints"].attrs["uncertainty"] = 1.0


def test_a_file_written_as_hloc_writes_it_imports(tmp_path):
    rng = np.random.default_rng(3)
    kp = rng.uniform(0, 500, (12, 2)).astype(np.float32)
    desc = rng.normal(size=(256, 12)).astype(np.float32)  # hloc: (D, N)
    scores = rng.uniform(0, 1, 12).astype(np.float32)
    local = tmp_path / "feats-superpoint.h5"
    write_hloc_features(local, {
        "db/img_1.jpg": {"keypoints": kp, "descriptors": desc, "scores": scores, "image_size": np.array([640, 480])},
        "query.jpg": {"keypoints": kp[:5], "descriptors": desc[:, :5], "scores": scores[:5],
                      "image_size": np.array([320, 240])},
    })
    glob = tmp_path / "global-feats-netvlad.h5"
    g = rng.normal(size=4096).astype(np.float32)
    write_hloc_features(glob, {"db/img_1.jpg": {"global_descriptor": g, "image_size": np.array([640, 480])},
                               "query.jpg": {"global_descriptor": -g, "image_size": np.array([320, 240])}})
    out = tmp_path / "delfi.h5"
    report = hloc.import_features(local, out, global_h5=glob)
    assert (report.imported, report.with_global, report.failures) == (2, 2, [])
    with FeatureStore(out) as s:
        assert s.attrs["descriptor_dtype"] == "float16"  # hloc's descriptors were float16
        got = s.get("db/img_1.jpg")
        assert got.image_size == (640, 480)
        np.testing.assert_array_equal(got.keypoints.numpy(), kp.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got.descriptors.numpy(), desc.T.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got.scores.numpy(), scores.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got.global_descriptor.numpy(), g.astype(np.float16).astype(np.float32))
        assert s.get("query.jpg").descriptors.shape == (5, 256)


def test_a_global_descriptor_file_alone_gives_entries_without_keypoints(tmp_path):
    glob = tmp_path / "global-feats.h5"
    write_hloc_features(glob, {"a.jpg": {"global_descriptor": np.ones(4, np.float32), "image_size": np.array([5, 6])}},
                        half=False)
    report = hloc.import_features(glob, tmp_path / "g.h5")
    assert (report.imported, report.global_only, report.with_global) == (1, 1, 1)
    with FeatureStore(tmp_path / "g.h5") as s:
        got = s.get("a.jpg")
        assert len(got) == 0 and got.image_size == (5, 6)
        np.testing.assert_array_equal(got.global_descriptor.numpy(), np.ones(4))


def test_broken_entries_are_named_and_skipped(tmp_path):
    kp = np.array([[1.0, 2.0], [30.2, 9.7], [4.0, 19.5]], np.float32)
    desc = np.ones((8, 3), np.float32)
    good = {"keypoints": kp, "descriptors": desc, "scores": np.ones(3, np.float32), "image_size": np.array([40, 30])}
    bad_kp = kp.copy()
    bad_kp[1, 0] = np.nan
    path = tmp_path / "feats.h5"
    write_hloc_features(path, {
        "good.jpg": good,
        "no_desc.jpg": {"keypoints": kp},
        "untransposed.jpg": {**good, "descriptors": desc.T},
        "bad_scores.jpg": {**good, "scores": np.ones(2, np.float32)},
        "nan.jpg": {**good, "keypoints": bad_kp},
        "bad_size.jpg": {**good, "image_size": np.array([40.5, 30.0])},
        "no_size_no_scores.jpg": {"keypoints": kp, "descriptors": desc},
    }, half=False)
    with h5py.File(path, "a") as f:
        f.create_group("keypoints_group.jpg").create_group("keypoints")  # a group where a dataset belongs
        f["keypoints_group.jpg"].create_dataset("descriptors", data=desc)
    out = tmp_path / "delfi.h5"
    with pytest.warns(UserWarning, match="1 entries .* no image_size"):
        report = hloc.import_features(path, out)
    reasons = dict(report.failures)
    assert set(reasons) == {"no_desc.jpg", "untransposed.jpg", "bad_scores.jpg", "nan.jpg", "bad_size.jpg",
                            "keypoints_group.jpg"}
    assert reasons["no_desc.jpg"] == "missing dataset descriptors"
    assert "transposed, (D, N)" in reasons["untransposed.jpg"]
    assert "scores shape (2,) does not match 3 keypoints" == reasons["bad_scores.jpg"]
    assert "non-finite values in keypoints" == reasons["nan.jpg"]
    assert "image_size" in reasons["bad_size.jpg"]
    assert "keypoints is a group" in reasons["keypoints_group.jpg"]
    assert report.imported == 2 and report.scores_defaulted == 1
    assert report.sizes_from_keypoints == ["no_size_no_scores.jpg"]
    with FeatureStore(out) as s:
        assert s.names() == ["good.jpg", "no_size_no_scores.jpg"]
        guessed = s.get("no_size_no_scores.jpg")
        assert guessed.image_size == (31, 20)  # ceil(max + 0.5): 30.2 -> 31, 19.5 -> 20
        np.testing.assert_array_equal(guessed.scores.numpy(), np.ones(3))


def test_a_broken_delfi_entry_is_reported_by_the_export(tmp_path, store):
    path, entries = store
    with h5py.File(path, "a") as f:
        del f["b.jpg/descriptors"]
    report = hloc.export_features(path, tmp_path / "features.h5")
    assert report.entries == 3 and [name for name, _ in report.failures] == ["b.jpg"]
    assert "descriptors" in report.failures[0][1]
    with h5py.File(tmp_path / "features.h5") as f:
        assert "b.jpg" not in f and "sub/a.jpg" in f


# ------------------------------------------------------------------------------- matches


def test_pair_names_follow_hloc():
    assert hloc.names_to_pair("sub/a.jpg", "b/c/d.jpg") == "sub-a.jpg/b-c-d.jpg"
    assert hloc.names_to_pair_old("sub/a.jpg", "b.jpg") == "sub-a.jpg_b.jpg"


def test_matches_round_trip_with_duplicates_reverse_pairs_and_inliers(tmp_path, store):
    feats, entries = store
    mpath = tmp_path / "matches.h5"
    with MatchStore(mpath, "w") as s:
        # keypoint 3 of image 0 matched twice: the 0.9 one is kept
        s.put("sub/a.jpg", "b.jpg", matches([(3, 1), (0, 24), (3, 7), (5, 5)], [0.2, 0.5, 0.9, 0.4],
                                            inliers=torch.tensor([True, False, True, True]), meta={"status": "ok"}))
        s.put("b.jpg", "sub/a.jpg", matches([(1, 3), (7, 3)], [0.6, 0.7]))  # the reverse pair, unverified
        s.put("deep/er/c.png", "b.jpg", matches([(30, 0)], [1.5], inliers=torch.tensor([True]),
                                                meta={"status": "too few inliers"}))
    out, pairs = tmp_path / "hloc-matches.h5", tmp_path / "pairs.txt"
    report = hloc.export_matches(mpath, out, features=feats, pairs_out=pairs)
    assert report.failures == [] and report.duplicates_dropped == 1 and report.matches == 6
    assert read_pairs(pairs) == [("b.jpg", "sub/a.jpg"), ("deep/er/c.png", "b.jpg"), ("sub/a.jpg", "b.jpg")]
    with h5py.File(out, "r") as f:
        m0 = f["sub-a.jpg/b.jpg/matches0"][()]
        s0 = f["sub-a.jpg/b.jpg/matching_scores0"][()]
        assert m0.shape == (40,) and s0.shape == (40,)  # N0 = keypoints of sub/a.jpg
        assert {i: int(m0[i]) for i in np.flatnonzero(m0 != -1)} == {0: 24, 3: 7, 5: 5}
        np.testing.assert_allclose(s0[[0, 3, 5]], [0.5, 0.9, 0.4])
        assert f["b.jpg/sub-a.jpg/matches0"].shape == (25,)
        assert f["deep-er-c.png/b.jpg/matches0"].shape == (31,)

    names = list(entries)
    back = tmp_path / "back.h5"
    imported = hloc.import_matches(out, back, names, num_keypoints={n: len(f) for n, f in entries.items()})
    assert (imported.imported, imported.failures, imported.layouts) == (3, [], {"/": 3, "_": 0})
    with MatchStore(back) as s:
        got = s.get("sub/a.jpg", "b.jpg")
        assert got.indices.tolist() == [[0, 24], [3, 7], [5, 5]]
        assert torch.allclose(got.scores, torch.tensor([0.5, 0.9, 0.4]))
        assert got.inliers is None and got.meta == {"source": "hloc"}
        assert s.get("b.jpg", "sub/a.jpg").indices.tolist() == [[1, 3], [7, 3]]

    only = hloc.export_matches(mpath, tmp_path / "inliers.h5", features=feats, inliers_only=True)
    assert only.unverified == 2 and only.matches == 2 and only.duplicates_dropped == 1
    with h5py.File(tmp_path / "inliers.h5", "r") as f:
        m0 = f["sub-a.jpg/b.jpg/matches0"][()]
        assert {i: int(m0[i]) for i in np.flatnonzero(m0 != -1)} == {3: 7, 5: 5}
        assert (f["deep-er-c.png/b.jpg/matches0"][()] == -1).all()  # "too few inliers": not verified
        assert (f["b.jpg/sub-a.jpg/matches0"][()] == -1).all()


def test_export_matches_reports_pairs_it_cannot_write(tmp_path, store):
    feats, _ = store
    mpath = tmp_path / "matches.h5"
    with MatchStore(mpath, "w") as s:
        s.put("b.jpg", "sub/a.jpg", matches([(24, 39)], [1.0]))
        s.put("b.jpg", "empty.jpg", matches([(0, 0)], [1.0]))  # empty.jpg has no keypoints
        s.put("b.jpg", "missing.jpg", matches([(0, 0)], [1.0]))
        s.put("b.jpg", "with space.jpg", matches([(0, 0)], [1.0]))
    report = hloc.export_matches(mpath, tmp_path / "out.h5", features=feats)
    reasons = dict(report.failures)
    assert report.pairs == [("b.jpg", "sub/a.jpg")]
    assert "beyond the 0 keypoints of 'empty.jpg'" in reasons["b.jpg empty.jpg"]
    assert "'missing.jpg' is not in the feature store" in reasons["b.jpg missing.jpg"]
    assert "whitespace" in reasons["b.jpg with space.jpg"]
    bare = hloc.export_matches(mpath, tmp_path / "bare.h5")  # no features: N0 from the indices
    with h5py.File(tmp_path / "bare.h5") as f:
        assert f["b.jpg/sub-a.jpg/matches0"].shape == (25,)
    assert len(bare.pairs) == 3


def write_hloc_matches(path: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
    """A matches file as hloc's match_features writes it: int16 matches0, float16 matching_scores0."""
    with h5py.File(path, "w") as f:
        for key, (m0, s0) in pairs.items():
            group = f.create_group(key)
            group.create_dataset("matches0", data=np.asarray(m0).astype(np.int16))
            if s0 is not None:
                group.create_dataset("matching_scores0", data=np.asarray(s0).astype(np.float16))


def test_hloc_matches_in_both_layouts_import_with_real_names(tmp_path):
    names = ["db/img_1.jpg", "query_1.jpg", "x.jpg"]
    m_new = np.array([2, -1, 0, -1], np.int64)
    m_old = np.array([-1, 1, -1], np.int64)
    path = tmp_path / "matches.h5"
    write_hloc_matches(path, {
        "query_1.jpg/db-img_1.jpg": (m_new, np.array([0.5, 0.0, 0.25, 0.0])),  # new layout, nested name
        "x.jpg_query_1.jpg": (m_old, np.array([0.0, 0.75, 0.0])),  # old layout, '_' inside a name too
        "db-img_1.jpg_x.jpg": (np.array([0, -1, -1]), None),  # old layout without scores
    })
    out = tmp_path / "m.h5"
    report = hloc.import_matches(path, out, names, num_keypoints={"db/img_1.jpg": 3, "query_1.jpg": 4, "x.jpg": 3})
    assert report.failures == [] and report.layouts == {"/": 1, "_": 2} and report.scores_defaulted == 1
    with MatchStore(out) as s:
        assert s.pairs() == [("db/img_1.jpg", "x.jpg"), ("query_1.jpg", "db/img_1.jpg"), ("x.jpg", "query_1.jpg")]
        got = s.get("query_1.jpg", "db/img_1.jpg")
        assert got.indices.tolist() == [[0, 2], [2, 0]] and got.scores.tolist() == [0.5, 0.25]
        assert s.get("x.jpg", "query_1.jpg").indices.tolist() == [[1, 1]]
        assert s.get("db/img_1.jpg", "x.jpg").scores.tolist() == [1.0]


def test_unknown_ambiguous_and_broken_pairs_are_reported_not_guessed(tmp_path):
    names = ["a/b.jpg", "a-b.jpg", "c.jpg", "p", "p_q", "q_r", "r"]
    path = tmp_path / "matches.h5"
    write_hloc_matches(path, {
        "a-b.jpg/c.jpg": (np.array([0]), np.array([1.0])),  # a/b.jpg or a-b.jpg
        "zzz.jpg/c.jpg": (np.array([0]), np.array([1.0])),  # unknown
        "p_q_r": (np.array([0]), np.array([1.0])),  # old layout: (p, q_r) or (p_q, r)
        "c.jpg/p": (np.array([-1, 0, 1]), np.array([0.0, 1.0, 1.0])),  # index 1 beyond the 1 keypoint of p
        "p/c.jpg": (np.array([0, 0]), np.array([1.0])),  # scores of the wrong length
        "r/c.jpg": (np.array([40000, 0]), np.array([1.0, 1.0])),  # int16 wraps 40000 to -25536
        "c.jpg/r": (np.array([0, -1, 1]), np.array([0.5, 0.0, 0.25])),  # fine
    })
    with h5py.File(path, "a") as f:
        f.create_group("q_r").create_group("c.jpg")  # a pair group without matches0
    counts = {n: 1 for n in names} | {"c.jpg": 3, "r": 2}
    report = hloc.import_matches(path, tmp_path / "m.h5", names, num_keypoints=counts)
    reasons = dict(report.failures)
    assert set(reasons) == {"a-b.jpg/c.jpg", "zzz.jpg/c.jpg", "p_q_r", "c.jpg/p", "p/c.jpg", "r/c.jpg", "q_r/c.jpg"}
    assert "ambiguous" in reasons["a-b.jpg/c.jpg"] and "a/b.jpg c.jpg" in reasons["a-b.jpg/c.jpg"]
    assert "'zzz.jpg'" in reasons["zzz.jpg/c.jpg"]
    assert "ambiguous" in reasons["p_q_r"] and "p q_r" in reasons["p_q_r"] and "p_q r" in reasons["p_q_r"]
    assert "beyond the 1 keypoints of 'p'" in reasons["c.jpg/p"]
    assert "does not match" in reasons["p/c.jpg"]
    assert "other than -1" in reasons["r/c.jpg"]
    assert "missing dataset matches0" == reasons["q_r/c.jpg"]
    assert report.imported == 1
    with MatchStore(tmp_path / "m.h5") as s:
        assert s.pairs() == [("c.jpg", "r")]
        assert s.get("c.jpg", "r").indices.tolist() == [[0, 0], [2, 1]]


# ------------------------------------------------------------------------------- data safety


def test_outputs_are_replaced_only_when_delfi_made_them(tmp_path, store):
    path, _ = store
    out = tmp_path / "features.h5"
    hloc.export_features(path, out)
    with pytest.raises(hloc.HlocError, match="exists; replacing it needs overwrite"):
        hloc.export_features(path, out)
    hloc.export_features(path, out, overwrite=True)  # its own file: replaced

    foreign = tmp_path / "theirs.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    before = foreign.read_bytes()
    with pytest.raises(hloc.HlocError, match="delfi did not make it"):
        hloc.export_features(path, foreign, overwrite=True)
    text = tmp_path / "notes.txt"
    text.write_text("three little words\n")
    with pytest.raises(hloc.HlocError, match="delfi did not make it"):
        hloc.export_features(path, text, overwrite=True)
    assert foreign.read_bytes() == before and text.read_text() == "three little words\n"
    with pytest.raises(hloc.HlocError, match="not a pairs file"):
        hloc.write_pairs(text, [("a", "b")], overwrite=True)
    assert text.read_text() == "three little words\n"


def test_a_failed_export_leaves_no_file_and_stale_temps_go(tmp_path, store, monkeypatch):
    path, _ = store
    out = tmp_path / "features.h5"
    calls = []

    def explode(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(*args)

    original = hloc._write_features
    monkeypatch.setattr(hloc, "_write_features", explode)
    with pytest.raises(RuntimeError, match="killed"):
        hloc.export_features(path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5"]  # no half file, no temp
    monkeypatch.undo()

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".features.h5.tmp-{int(done.stdout)}-{'0' * 32}"  # a killed run's temp
    stale.write_bytes(b"half")
    hloc.export_features(path, out)
    assert not stale.exists() and out.exists()


def test_a_re_export_without_global_descriptors_removes_only_its_own_global_file(tmp_path, store):
    path, _ = store
    plain = tmp_path / "plain.h5"
    with FeatureStore(plain, "w") as s:
        s.put("a.jpg", replace(make_features(3, (9, 9), seed=1), global_descriptor=None))
    out, glob = tmp_path / "features.h5", tmp_path / "global-feats.h5"
    assert hloc.export_features(path, out, global_out=glob).global_path == glob
    report = hloc.export_features(plain, out, global_out=glob, overwrite=True)
    assert report.global_path is None and report.global_removed and not glob.exists()
    with h5py.File(glob, "w") as f:  # somebody else's file there: refused, kept
        f.create_dataset("x", data=[1])
    with pytest.raises(hloc.HlocError, match="delfi did not make it"):
        hloc.export_features(plain, out, global_out=glob, overwrite=True)
    assert glob.exists()
