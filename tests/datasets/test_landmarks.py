"""Labelled landmark image lists: class folders, GLDv2 csv files, the per-class split, balanced weights."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from delfi.datasets.landmarks import (LandmarkSamples, class_balanced_weights, gldv2_csv, landmark_folders,
                                      split_samples)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded")  # listing never decodes: any bytes will do
    return path


def rel(samples: LandmarkSamples, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in samples.paths]


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    root = tmp_path / "landmarks"
    for name in ("zebra/b.JPG", "zebra/a.png", "zebra/deep/er/c.webp", "zebra/.hidden.jpg", "zebra/notes.txt",
                 "apple/1.jpeg", "apple/2.tif", "apple/.cache/3.jpg",
                 "mango/only.ppm", "empty/readme.md", "stray.jpg", ".git/x.jpg"):
        touch(root / name)
    return root


def test_folders_give_sorted_classes_labels_and_recursive_images(folders: Path):
    s = landmark_folders(folders)
    assert s.classes == ["apple", "mango", "zebra"]
    assert rel(s, folders) == ["apple/1.jpeg", "apple/2.tif", "mango/only.ppm",
                               "zebra/a.png", "zebra/b.JPG", "zebra/deep/er/c.webp"]
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert s.num_classes == 3 and len(s) == 6 and s.class_counts().tolist() == [2, 1, 3]
    assert s.source == f"folders under {folders}"
    reasons = dict(s.skipped)
    assert "not in a class folder" in reasons[str(folders / "stray.jpg")]
    assert "0 image(s)" in reasons[str(folders / "empty")]
    assert not any(".hidden" in f or ".cache" in f or ".git" in f for f, _ in s.skipped)


def test_folders_drop_small_classes_and_report_them(folders: Path):
    s = landmark_folders(folders, min_images_per_class=3)
    assert s.classes == ["zebra"] and s.labels.tolist() == [0, 0, 0]
    dropped = {Path(f).name for f, why in s.skipped if "min_images_per_class=3" in why}
    assert dropped == {"apple", "mango", "empty"}


def test_folders_errors_name_the_root(tmp_path: Path):
    with pytest.raises(ValueError, match="no such folder") as info:
        landmark_folders(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(ValueError, match="not a folder"):
        landmark_folders(touch(tmp_path / "file.jpg"))
    touch(tmp_path / "flat" / "a.jpg")
    with pytest.raises(ValueError, match="no sub-folder"):
        landmark_folders(tmp_path / "flat")
    touch(tmp_path / "textonly" / "c" / "a.txt")
    with pytest.raises(ValueError, match="no class folder with images"):
        landmark_folders(tmp_path / "textonly")
    with pytest.raises(ValueError, match="min_images_per_class"):
        landmark_folders(tmp_path / "flat", min_images_per_class=0)


GLD_IDS = {  # image id -> landmark id
    "00a1f3c9e2b4d5f6": 7, "00b2aa00ffee1122": 7, "1c3e5a7b9d0f2468": 7,
    "ab12cd34ef56ab78": 12, "ffe0d1c2b3a49586": 12, "0123456789abcdef": 3,
}


def gld_tree(root: Path, flat: set[str] = frozenset(), missing: set[str] = frozenset()) -> Path:
    for image_id in GLD_IDS:
        if image_id in missing:
            continue
        if image_id in flat:
            touch(root / f"{image_id}.jpg")
        else:
            touch(root / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
    return root


def test_gldv2_train_list_both_layouts_and_numeric_class_order(tmp_path: Path):
    root = gld_tree(tmp_path / "train", flat={"ab12cd34ef56ab78"})
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,url,landmark_id\n" + "".join(f"{i},http://x/{i}.jpg,{lm}\n" for i, lm in GLD_IDS.items()))
    s = gldv2_csv(csv_path, root)
    assert s.classes == ["3", "7", "12"]  # numeric, not string order
    got = {p.name[:-4]: s.classes[label] for p, label in zip(s.paths, s.labels)}
    assert got == {i: str(lm) for i, lm in GLD_IDS.items()}
    assert root / "ab12cd34ef56ab78.jpg" in s.paths  # flat layout
    assert root / "0" / "0" / "a" / "00a1f3c9e2b4d5f6.jpg" in s.paths  # GLDv2 layout
    assert s.skipped == [] and s.source == f"csv {csv_path}"
    assert s.class_counts().tolist() == [1, 3, 2]


def test_gldv2_clean_list_reports_malformed_rows_and_missing_files_with_lines(tmp_path: Path):
    root = gld_tree(tmp_path / "train", missing={"ffe0d1c2b3a49586"})
    csv_path = tmp_path / "clean.csv"
    csv_path.write_text(
        "landmark_id,images\n"                                      # line 1
        "7,00a1f3c9e2b4d5f6 00b2aa00ffee1122 1c3e5a7b9d0f2468\n"     # 2
        "12,ab12cd34ef56ab78 ffe0d1c2b3a49586\n"                     # 3: second image missing
        "x9,0123456789abcdef\n"                                      # 4: landmark id not an integer
        "3\n"                                                        # 5: one column
        "\n"                                                         # 6: blank, ignored
        "3,0123456789abcdef ../../etc 00a1f3c9e2b4d5f6\n"            # 7: path-like id, id listed again
        "5,\n")                                                      # 8: no image
    s = gldv2_csv(csv_path, root)
    assert s.classes == ["3", "7", "12"] and s.class_counts().tolist() == [1, 3, 1]
    skipped = dict(s.skipped)
    missing = str(root / "f" / "f" / "e" / "ffe0d1c2b3a49586.jpg")
    assert skipped[missing].startswith("no such file") and "csv:3" in skipped[missing]
    lines = sorted(f for f, _ in s.skipped if f.startswith("csv:"))
    assert lines == ["csv:4", "csv:5", "csv:7", "csv:7", "csv:8"]
    reasons = " | ".join(why for f, why in s.skipped)
    assert "'x9' is not a non-negative integer" in reasons and "expected 2 columns" in reasons
    assert "not a plain file name stem" in reasons and "listed again (first on line 2)" in reasons
    assert "empty image id list" in reasons
    small = gldv2_csv(csv_path, root, min_images_per_class=2)
    assert small.classes == ["7"]
    assert ("landmark_id 3", "1 usable image(s), fewer than min_images_per_class=2: dropped") in small.skipped


def test_gldv2_train_list_malformed_rows(tmp_path: Path):
    root = gld_tree(tmp_path / "train")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,url,landmark_id\n00a1f3c9e2b4d5f6,u,7\n,u,7\n1c3e5a7b9d0f2468,u\n"
                        "ab12cd34ef56ab78,u,-4\n0123456789abcdef,u,3,extra\n")
    s = gldv2_csv(csv_path, root)
    assert len(s) == 1 and s.classes == ["7"]
    assert s.skipped == [("csv:3", "empty image id"),
                         ("csv:4", "expected 3 columns (id,url,landmark_id), got 2"),
                         ("csv:5", "landmark_id '-4' is not a non-negative integer"),
                         ("csv:6", "expected 3 columns (id,url,landmark_id), got 4")]


def test_gldv2_errors_name_the_csv(tmp_path: Path):
    root = gld_tree(tmp_path / "train")
    with pytest.raises(ValueError, match="no such csv file"):
        gldv2_csv(tmp_path / "absent.csv", root)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\na,1\n")
    with pytest.raises(ValueError, match="unknown header 'image,label'; accepted: 'id,url,landmark_id'") as info:
        gldv2_csv(bad, root)
    assert str(bad) in str(info.value) and "landmark_id,images" in str(info.value)
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("landmark_id,images\n4,deadbeefdeadbeef\n")
    with pytest.raises(ValueError, match="no usable image") as info:
        gldv2_csv(nothing, root)
    assert str(nothing) in str(info.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty csv"):
        gldv2_csv(tmp_path / "empty.csv", root)


def names_of(samples: LandmarkSamples) -> list[tuple[str, str]]:
    return sorted((samples.classes[label], p.name) for p, label in zip(samples.paths, samples.labels))


def test_split_per_class_by_name_hash(tmp_path: Path):
    root = tmp_path / "a"
    counts = {"big": 10, "mid": 3, "pair": 2, "solo": 1}
    for cls, n in counts.items():
        for i in range(n):
            touch(root / cls / f"{cls}-{i}.png")
    s = landmark_folders(root)
    train, val = split_samples(s, 0.25)
    assert train.classes == val.classes == s.classes
    sizes = dict(zip(s.classes, val.class_counts().tolist()))
    assert sizes == {"big": 3, "mid": 1, "pair": 1, "solo": 0}  # ceil(0.25 n), singletons stay in training
    assert len(train) + len(val) == len(s) and not set(train.paths) & set(val.paths)
    for cls, n in counts.items():  # the held-out images are those whose name has the smallest sha1
        names = sorted((f"{cls}-{i}.png" for i in range(n)), key=lambda x: hashlib.sha1(x.encode()).hexdigest())
        expected = names[: min(n - 1, math.ceil(0.25 * n))]
        assert sorted(name for c, name in names_of(val) if c == cls) == sorted(expected)
    assert split_samples(s, 0.9)[0].class_counts().tolist() == [1, 1, 1, 1]  # always one left to train on

    # the same names elsewhere and listed in another order: the same split
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    s2 = landmark_folders(moved)
    order = np.random.default_rng(0).permutation(len(s2))
    train2, val2 = split_samples(s2.subset(order), 0.25)
    assert names_of(val2) == names_of(val) and names_of(train2) == names_of(train)
    assert [p.name for p in val2.paths] == [s2.paths[i].name for i in order if s2.paths[i].name in
                                            {p.name for p in val.paths}]  # listing order kept

    train0, val0 = split_samples(s, 0.0)
    assert len(val0) == 0 and len(train0) == len(s) and val0.classes == s.classes
    with pytest.raises(ValueError, match="val_fraction"):
        split_samples(s, 1.0)


def test_subset_keeps_classes_and_accepts_masks(folders: Path):
    s = landmark_folders(folders)
    part = s.subset([5, 0])
    assert part.classes == s.classes and part.labels.tolist() == [2, 0]
    assert part.class_counts().tolist() == [1, 0, 1]
    masked = s.subset(s.labels == 2)
    assert [p.name for p in masked.paths] == ["a.png", "b.JPG", "c.webp"]
    with pytest.raises(ValueError):
        LandmarkSamples([Path("a")], np.array([3]), ["x"], "test")


def test_class_balanced_weights():
    labels = np.array([0, 0, 0, 1, 2, 2, 0])
    w = class_balanced_weights(labels)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, np.array([1 / 4, 1 / 4, 1 / 4, 1, 1 / 2, 1 / 2, 1 / 4]) / 3)
    per_class = np.bincount(labels, weights=w)
    np.testing.assert_allclose(per_class, [1 / 3] * 3)  # every class drawn equally often
    with pytest.raises(ValueError):
        class_balanced_weights(np.array([], np.int64))
    with pytest.raises(ValueError):
        class_balanced_weights(np.array([0, -1]))
