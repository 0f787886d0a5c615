"""`delfi export hloc` / `delfi import hloc`: round trip, outputs that are refused, broken entries, exit codes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore
from delfi.io.pairs import read_pairs
from delfi.types import Features, Matches

from .conftest import invoke


def make_stores(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    feats, matches = folder / "feats.h5", folder / "matches.h5"
    with FeatureStore(feats, "w", attrs={"model": "t"}) as store:
        for name, n in (("sub/a.jpg", 20), ("b.jpg", 15)):
            desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)), dim=1)
            store.put(name, Features(torch.from_numpy(rng.uniform(0, 60, (n, 2)).astype(np.float32)),
                                     torch.from_numpy(rng.uniform(0, 1, n).astype(np.float32)), desc,
                                     global_descriptor=torch.tensor([0.6, 0.8]), image_size=(64, 61)))
    with MatchStore(matches, "w") as store:
        store.put("sub/a.jpg", "b.jpg", Matches(torch.tensor([[0, 3], [4, 14], [4, 2]]), torch.tensor([0.9, 0.3, 0.8]),
                                                inliers=torch.tensor([True, False, True]), meta={"status": "ok"}))
    return feats, matches


def test_export_then_import_round_trip(tmp_path):
    feats, matches = make_stores(tmp_path)
    out = tmp_path / "hloc"
    result = invoke("export", "hloc", "--features", feats, "--matches", matches, "--half", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"features.h5", "global-feats.h5", "matches.h5", "pairs.txt"}
    assert "2 images, 35 keypoints (float16 descriptors)" in result.output
    assert read_pairs(out / "pairs.txt") == [("sub/a.jpg", "b.jpg")]
    with h5py.File(out / "matches.h5") as f:
        m0 = f["sub-a.jpg/b.jpg/matches0"][()]
        assert m0.shape == (20,) and m0[0] == 3 and m0[4] == 2  # keypoint 4: the better of two kept
    with h5py.File(out / "features.h5") as f:
        assert f["sub/a.jpg/descriptors"].shape == (8, 20) and f["sub/a.jpg/descriptors"].dtype == np.float16

    back, back_matches = tmp_path / "back" / "f.h5", tmp_path / "back" / "m.h5"
    result = invoke("import", "hloc", "--features", out / "features.h5", "--global", out / "global-feats.h5",
                    "--matches", out / "matches.h5", "--out", back, "--matches-out", back_matches)
    assert result.exit_code == 0, result.output
    assert "2 images imported" in result.output and "1 pairs imported" in result.output
    with FeatureStore(feats) as a, FeatureStore(back) as b:
        assert a.names() == b.names()
        for name in a.names():
            x, y = a.get(name), b.get(name)
            assert torch.equal(x.keypoints, y.keypoints) and torch.equal(x.scores, y.scores)
            assert torch.allclose(x.descriptors, y.descriptors, atol=1e-3, rtol=0)
            assert torch.allclose(x.global_descriptor, y.global_descriptor, atol=1e-3, rtol=0)
            assert x.image_size == y.image_size == (64, 61)
    with MatchStore(back_matches) as m:
        got = m.get("sub/a.jpg", "b.jpg")
        assert got.indices.tolist() == [[0, 3], [4, 2]] and torch.allclose(got.scores, torch.tensor([0.9, 0.8]))

    again = invoke("import", "hloc", "--features", out / "features.h5", "--out", back)  # resumed: nothing new
    assert again.exit_code == 0 and "0 images imported, 2 already present" in again.output
    default = invoke("import", "hloc", "--features", out / "features.h5", "--matches", out / "matches.h5",
                     "--out", tmp_path / "d.h5")
    assert default.exit_code == 0 and (tmp_path / "d-matches.h5").exists()


def test_export_replaces_only_its_own_files(tmp_path):
    feats, matches = make_stores(tmp_path)
    out = tmp_path / "hloc"
    assert invoke("export", "hloc", "--features", feats, "--out", out).exit_code == 0
    result = invoke("export", "hloc", "--features", feats, "--out", out)
    assert result.exit_code == 2 and "features.h5 exists" in result.output and "--overwrite" in result.output
    assert invoke("export", "hloc", "--features", feats, "--out", out, "--overwrite").exit_code == 0

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    with h5py.File(theirs / "matches.h5", "w") as f:  # hloc's own matches: never replaced
        f.create_group("x.jpg/y.jpg").create_dataset("matches0", data=np.array([-1], np.int16))
    (theirs / "pairs.txt").write_text("these are not pairs\n")
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    result = invoke("export", "hloc", "--features", feats, "--matches", matches, "--out", theirs, "--overwrite")
    assert result.exit_code == 2 and "delfi did not make it" in result.output and "matches.h5" in result.output
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before  # nothing written, not even features.h5
    (theirs / "matches.h5").unlink()
    result = invoke("export", "hloc", "--features", feats, "--matches", matches, "--out", theirs, "--overwrite")
    assert result.exit_code == 2 and "pairs.txt: it is not a pairs file" in result.output
    assert (theirs / "pairs.txt").read_text() == "these are not pairs\n" and not (theirs / "features.h5").exists()


def test_outputs_among_inputs_are_refused(tmp_path):
    feats, matches = make_stores(tmp_path)
    hloc_dir = tmp_path / "hloc"
    assert invoke("export", "hloc", "--features", feats, "--out", hloc_dir).exit_code == 0
    before = {p: p.read_bytes() for p in (feats, matches, hloc_dir / "features.h5")}
    cases = [
        ("export", "hloc", "--features", hloc_dir / "features.h5", "--out", hloc_dir, "--overwrite"),
        ("export", "hloc", "--features", feats, "--matches", tmp_path / "matches.h5", "--out", tmp_path),
        ("import", "hloc", "--features", hloc_dir / "features.h5", "--out", hloc_dir / "features.h5"),
        ("import", "hloc", "--features", hloc_dir / "features.h5", "--matches", matches, "--out", tmp_path / "n.h5",
         "--matches-out", matches),
        ("import", "hloc", "--features", hloc_dir / "features.h5", "--matches", matches, "--out", tmp_path / "n.h5",
         "--matches-out", tmp_path / "n.h5"),
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "also an input" in result.output and "Traceback" not in result.output
    assert {p: p.read_bytes() for p in before} == before


def test_import_reports_broken_entries_and_refuses_foreign_outputs(tmp_path):
    hloc_feats = tmp_path / "feats-hloc.h5"
    with h5py.File(hloc_feats, "w") as f:
        good = f.create_group("good.jpg")
        good.create_dataset("keypoints", data=np.array([[1.0, 2.0]], np.float16))
        good.create_dataset("descriptors", data=np.ones((4, 1), np.float16))
        good.create_dataset("scores", data=np.ones(1, np.float16))
        good.create_dataset("image_size", data=np.array([8, 9]))
        bad = f.create_group("nested/bad.jpg")
        bad.create_dataset("keypoints", data=np.array([[1.0, 2.0]], np.float32))
    out = tmp_path / "out.h5"
    result = invoke("import", "hloc", "--features", hloc_feats, "--out", out)
    assert result.exit_code == 1, result.output
    assert "nested/bad.jpg" in result.output and "missing dataset descriptors" in result.output
    with FeatureStore(out) as store:
        assert store.names() == ["good.jpg"]

    notes = tmp_path / "notes.h5"
    notes.write_text("not a store\n")
    result = invoke("import", "hloc", "--features", hloc_feats, "--out", notes, "--overwrite")
    assert result.exit_code == 2 and "not a readable delfi feature store" in result.output
    assert notes.read_text() == "not a store\n"
    result = invoke("import", "hloc", "--features", notes, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "notes.h5 cannot be read as an HDF5 file" in result.output
    assert not (tmp_path / "x.h5").exists()
    result = invoke("import", "hloc", "--features", tmp_path / "missing.h5", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "missing.h5 does not exist" in result.output


def test_usage_errors(tmp_path):
    feats, matches = make_stores(tmp_path)
    result = invoke("export", "hloc", "--features", feats, "--inliers-only", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--inliers-only needs --matches" in result.output
    result = invoke("import", "hloc", "--features", feats, "--matches-out", tmp_path / "m2.h5", "--out", tmp_path / "o.h5")
    assert result.exit_code == 2 and "--matches-out needs --matches" in result.output
    result = invoke("export", "hloc", "--features", tmp_path / "nope.h5", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "nope.h5" in result.output and "Traceback" not in result.output
    result = invoke("export", "hloc", "--features", feats, "--out", feats)
    assert result.exit_code == 2 and "is a file" in result.output
