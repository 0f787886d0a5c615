"""CosPlace classes and groups from sf-xs names: cells, heading bins, group keys, drops, order."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from delfi.datasets.vpr_groups import GroupSettings, list_train_images, parse_heading, place_groups


def name(east: float, north: float, heading: str | float = "", pano: str = "pano") -> str:
    """A full sf-xs / CosPlace name: heading is field 9 of the '@'-split stem."""
    return f"@{east}@{north}@10@S@37.76596@-122.43231@{pano}@@{heading}@@@@201703@@.jpg"


def names(east: float, north: float, heading: float, count: int, tag: str) -> list[str]:
    return [name(east, north, heading, pano=f"{tag}{i}") for i in range(count)]


def test_parse_heading_reads_field_nine():
    assert name(1, 2, 123).split("@")[9] == "123"
    assert parse_heading(name(550000.5, 4180000.25, 123)) == 123.0
    assert parse_heading(Path("/data/sf_xs/train") / name(1, 2, "271.5")) == 271.5
    assert parse_heading(name(1, 2, -10)) == -10.0
    # sf-xs test names often carry no heading: an empty field, or too few fields
    assert parse_heading(name(1, 2, "")) is None
    assert parse_heading("@550000.00@4180000.00@10@S@37.7@-122.4@.jpg") is None
    for bad in ("north", "nan", "inf"):
        with pytest.raises(ValueError, match="heading"):
            parse_heading(name(1, 2, bad))


def test_classes_and_group_keys_computed_by_hand():
    paths = (names(550003.2, 4180007.9, 45, 2, "a")  # cell (55000, 418000), bin 1 -> group (0, 0, 1)
             + names(550047, 4180012, 359, 2, "b")  # cell (55004, 418001), bin 11 -> group (4, 1, 1)
             + names(550047.5, 4180019.9, -10, 1, "b")  # heading -10 = 350: the same class as b
             + names(550051, 4180007, 61, 3, "c")  # cell (55005, 418000), bin 2 -> group (0, 0, 0)
             + names(550009.9, 4180000, 0, 2, "d"))  # cell (55000, 418000), bin 0 -> group (0, 0, 0)
    result = place_groups(paths, GroupSettings(min_images_per_class=2, groups=50))
    got = {g.key: g.classes for g in result.groups}
    assert got == {(0, 0, 0): [(55000, 418000, 0), (55005, 418000, 2)],
                   (4, 1, 1): [(55004, 418001, 11)],
                   (0, 0, 1): [(55000, 418000, 1)]}
    assert [g.key for g in result.groups] == [(0, 0, 0), (4, 1, 1), (0, 0, 1)]  # 5, 3, 2 images
    first = result.groups[0]
    assert first.num_classes == 2 and len(first) == 5
    assert first.labels.dtype == np.int64
    by_label = {int(label): {p.name.split("@")[7][0] for p, lab in zip(first.paths, first.labels) if lab == label}
                for label in first.labels}
    assert by_label == {0: {"d"}, 1: {"c"}}
    assert result.skipped == [] and result.unused == []
    assert result.num_classes == 4 and result.num_images == 10


def test_images_without_heading_go_to_bin_zero():
    paths = names(550001, 4180001, 10, 2, "h") + [name(550002, 4180002, "", pano="x"),
                                                   "@550003@4180003@10@S@37.7@-122.4@short.jpg"]
    result = place_groups(paths, GroupSettings(min_images_per_class=4))
    assert len(result.groups) == 1
    assert result.groups[0].classes == [(55000, 418000, 0)] and len(result.groups[0]) == 4


def test_small_classes_and_malformed_names_are_reported():
    small = names(550100, 4180000, 90, 2, "s")
    bad_utm, bad_heading = "holiday.jpg", name(550000, 4180000, "east")
    paths = names(550000, 4180000, 0, 3, "k") + small + [bad_utm, bad_heading]
    result = place_groups(paths, GroupSettings(min_images_per_class=3))
    assert [g.classes for g in result.groups] == [[(55000, 418000, 0)]]
    reasons = dict(result.skipped)
    assert set(reasons) == set(small) | {bad_utm, bad_heading}
    for path in small:
        assert "(55010, 418000, 3) has 2 image(s)" in reasons[path] and "min_images_per_class=3" in reasons[path]
    assert reasons[bad_utm].startswith("malformed name") and "heading" in reasons[bad_heading]
    assert [f for f, _ in result.skipped] == sorted(f for f, _ in result.skipped)


def test_groups_sorted_by_size_ties_by_key_and_limited():
    paths = (names(550020, 4180000, 0, 3, "x")  # cell_e 55002 -> group (2, 0, 0), 3 images
             + names(550010, 4180000, 0, 5, "y")  # group (1, 0, 0), 5 images
             + names(550030, 4180000, 0, 2, "z")  # group (3, 0, 0), 2 images
             + names(550000, 4180000, 30, 3, "w"))  # group (0, 0, 1), 3 images: ties with (2, 0, 0)
    settings = GroupSettings(min_images_per_class=2, groups=2)
    result = place_groups(paths, settings)
    assert [g.key for g in result.groups] == [(1, 0, 0), (0, 0, 1)]
    assert result.unused == [((2, 0, 0), 3), ((3, 0, 0), 2)]
    assert result.settings is settings
    everything = place_groups(paths, GroupSettings(min_images_per_class=2, groups=50))
    assert len(everything.groups) == 4  # fewer groups exist than asked: no error


def test_classes_of_a_group_are_never_adjacent():
    rng = np.random.default_rng(3)
    paths = [name(550000 + rng.uniform(0, 300), 4180000 + rng.uniform(0, 300), rng.uniform(0, 360), pano=f"r{i}")
             for i in range(4000)]
    settings = GroupSettings(min_images_per_class=1, groups=50)
    result = place_groups(paths, settings)
    assert len(result.groups) == 50
    seen = set()
    for group in result.groups:
        keys = np.array(group.classes)
        assert np.all((keys[:, :2] - keys[0, :2]) % 5 == 0) and np.all((keys[:, 2] - keys[0, 2]) % 2 == 0)
        assert group.classes == sorted(group.classes)
        assert set(group.labels.tolist()) == set(range(group.num_classes))
        seen.update(group.classes)
    assert len(seen) == sum(g.num_classes for g in result.groups)  # a class is in one group only
    assert result.num_images == 4000


def test_same_paths_in_any_order_give_the_same_groups():
    paths = [name(550000 + 7 * (i % 13), 4180000 + 11 * (i % 5), 37 * i % 360, pano=f"o{i}") for i in range(300)]
    settings = GroupSettings(min_images_per_class=2, groups=6)
    reference = place_groups(paths, settings)
    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    again = place_groups(shuffled + [paths[0]], settings)  # and a duplicate
    assert again.skipped == sorted(reference.skipped + [(paths[0], "duplicate path")])
    assert [g.key for g in again.groups] == [g.key for g in reference.groups]
    for a, b in zip(again.groups, reference.groups):
        assert a.paths == b.paths and a.classes == b.classes
        np.testing.assert_array_equal(a.labels, b.labels)


def test_nothing_left_says_why():
    paths = names(550000, 4180000, 0, 3, "a") + ["no_utm.jpg"]
    with pytest.raises(ValueError, match=r"read 4 image\(s\), skipped 4 \(3 class too small, 1 malformed name\)"
                                         r".*min_images_per_class=10"):
        place_groups(paths)
    with pytest.raises(ValueError, match="read 0 image"):
        place_groups([])


def test_settings_are_checked():
    for bad in ({"cell_size": 0}, {"heading_bin": -1}, {"cells_apart": 0}, {"groups": 2.5},
                {"min_images_per_class": 0}):
        with pytest.raises(ValueError):
            GroupSettings(**bad)


def test_list_train_images_is_recursive_and_sorted(tmp_path):
    for rel in ("b/2.jpg", "a.JPEG", "b/c/1.png", "notes.txt", "d.jpg/inner.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert list_train_images(tmp_path) == [tmp_path / "a.JPEG", tmp_path / "b/2.jpg", tmp_path / "b/c/1.png",
                                           tmp_path / "d.jpg/inner.jpg"]
    with pytest.raises(FileNotFoundError):
        list_train_images(tmp_path / "missing")
