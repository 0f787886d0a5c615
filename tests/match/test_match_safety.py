"""Matching runs never stop on one bad item: bad entries, missing names and unmatchable features are
failures of their pairs (named, with the reason), the other pairs are matched."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from delfi.io.features import FeatureStore
from delfi.io.matches import MatchStore
from delfi.match.pipeline import MatchingConfig, match_features, match_pairs
from delfi.types import Features

ATTRS = {"model": "test", "weights_sha256": "none", "config": {}}


def features(n: int, dim: int = 16, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    kp = torch.from_numpy(rng.uniform(0, 100, (n, 2)).astype(np.float32))
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32)), dim=1)
    return Features(kp, torch.ones(n), desc, image_size=(100, 100))


def make_store(path: Path, entries: dict[str, Features]) -> Path:
    with FeatureStore(path, "w", attrs=ATTRS) as store:
        for name, found in entries.items():
            store.put(name, found)
    return path


def break_entries(path: Path) -> None:
    """'nodesc' loses its descriptors, 'nokp' its keypoints, 'transposed' gets (D, N) descriptors."""
    with h5py.File(path, "r+") as f:
        del f["nodesc/descriptors"]
        del f["nokp/keypoints"]
        desc = f["transposed/descriptors"][()]
        del f["transposed/descriptors"]
        f["transposed/descriptors"] = desc.T
        assert f["nodesc"].attrs["complete"]  # still listed as a complete entry


@pytest.fixture
def store(tmp_path) -> Path:
    names = ["a", "b", "nodesc", "nokp", "transposed", "empty", "wide"]
    entries = {n: features(40, seed=i) for i, n in enumerate(names)}
    entries["empty"] = features(0)
    entries["wide"] = features(40, dim=32)
    path = make_store(tmp_path / "f.h5", entries)
    break_entries(path)
    return path


def test_bad_entries_fail_their_pairs_and_the_run_goes_on(store, tmp_path):
    pairs = [("a", "nodesc"), ("nokp", "b"), ("a", "transposed"), ("a", "wide"), ("a", "b"), ("nodesc", "b"),
             ("a", "empty"), ("b", "a")]
    report = match_pairs(store, pairs, tmp_path / "m.h5", MatchingConfig(geometry="homography"))
    failed = {(a, b): reason for a, b, reason in report.failures}
    assert set(failed) == {("a", "nodesc"), ("nokp", "b"), ("a", "transposed"), ("a", "wide"), ("nodesc", "b")}
    for (a, b), reason in failed.items():
        bad = b if b in ("nodesc", "transposed") else a if a in ("nokp", "nodesc") else None
        if bad is not None:
            assert repr(bad) in reason and str(store) in reason, reason  # names the entry and the store
    assert "descriptors" in failed[("a", "nodesc")] and "keypoints" in failed[("nokp", "b")]
    assert "(16, 40)" in failed[("a", "transposed")]  # the shape found
    assert "descriptor dimensions differ: 16 vs 32" in failed[("a", "wide")]
    assert report.matched == 3 and report.total == len(pairs)
    with MatchStore(tmp_path / "m.h5") as matches:
        assert matches.pairs() == [("a", "b"), ("a", "empty"), ("b", "a")]
        empty = matches.get("a", "empty")
        assert len(empty) == 0 and empty.meta["status"] == "not enough matches"


def test_missing_names_are_checked_up_front_and_listed(store, tmp_path):
    db = make_store(tmp_path / "db.h5", {"x": features(30, seed=9)})
    pairs = [("a", "x"), ("ghost", "x"), ("a", "a"), ("a", "b")]  # 'a' is not in db, 'x' is
    report = match_pairs(store, pairs, tmp_path / "m.h5", MatchingConfig(geometry=None), features_db=db)
    assert report.matched == 1 and len(report.failures) == 3
    assert report.failures[0] == ("ghost", "x", f"image 0 not in feature store {store}")
    assert report.failures[1] == ("a", "a", f"image 1 not in feature store {db}")
    assert report.failures[1][2] is report.failures[2][2]  # one shared reason string, not one per pair


def test_resumed_run_skips_done_pairs_first(store, tmp_path):
    out = tmp_path / "m.h5"
    assert match_pairs(store, [("a", "b")], out, MatchingConfig(geometry=None)).matched == 1
    again = match_pairs(store, [("a", "b"), ("a", "nodesc")], out, MatchingConfig(geometry=None))
    assert again.skipped == 1 and again.matched == 0 and len(again.failures) == 1


def test_statuses_are_counted_and_only_ok_is_verified(store, tmp_path):
    report = match_pairs(store, [("a", "b"), ("a", "empty")], tmp_path / "m.h5")
    assert report.matched == 2 and report.verified == 0  # random descriptors: chance inliers only
    assert sum(report.statuses.values()) == 2 and "ok" not in report.statuses
    assert report.statuses.get("not enough matches") == 1


@pytest.mark.parametrize("bad", [{"ratio": 1.5}, {"min_inliers": -1}, {"threshold": 0.0}, {"geometry": "sphere"}])
def test_bad_options_fail_before_anything_is_written(store, tmp_path, bad):
    with pytest.raises(ValueError):
        match_pairs(store, [("a", "b")], tmp_path / "m.h5", MatchingConfig(**bad))
    assert not (tmp_path / "m.h5").exists()


def test_match_features_validates_its_input():
    good = features(20)
    with pytest.raises(ValueError, match="descriptor dimensions differ"):
        match_features(good, features(20, dim=8))
    nan = Features(good.keypoints.clone(), good.scores, good.descriptors, image_size=(100, 100))
    nan.keypoints[3, 0] = float("nan")
    with pytest.raises(ValueError, match="features0: keypoints hold non-finite"):
        match_features(nan, good)
    empty = match_features(good, features(0))
    assert len(empty) == 0 and empty.meta["status"] == "not enough matches"
