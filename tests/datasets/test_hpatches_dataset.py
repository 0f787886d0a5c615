"""The HPatches-sequences folder reader, on hand-made folders and on the real v_wormhole."""

from __future__ import annotations

import numpy as np
import pytest

from delfi.datasets.hpatches import (
    HPatchesError,
    HPatchesMissingError,
    image_path,
    list_sequences,
    load_homography,
    read_image_list,
    sequence_type,
)


def _make_root(tmp_path, names=("v_b", "i_a", "v_c")):
    root = tmp_path / "hpatches"
    for name in names:
        (root / name).mkdir(parents=True)
        for k in range(1, 7):
            (root / name / f"{k}.ppm").write_bytes(b"P6 1 1 255 \x00\x00\x00")
        for k in range(2, 7):
            np.savetxt(root / name / f"H_1_{k}", np.eye(3) * k)
    (root / "not_a_sequence").mkdir()
    (root / "i_file_not_dir").write_text("x")
    return root


def test_list_sequences_sorted_and_filtered(tmp_path):
    root = _make_root(tmp_path)
    assert list_sequences(root) == ["i_a", "v_b", "v_c"]
    lst = tmp_path / "list.txt"
    lst.write_text("hpatches_sequences/release/v_c/1.ppm\nv_c/2.ppm\n\ni_a/1.ppm\nv_zz/1.ppm\n")
    assert read_image_list(lst) == ["v_c", "i_a", "v_zz"]
    assert list_sequences(root, lst) == ["i_a", "v_c"]
    with pytest.raises(HPatchesMissingError, match="v_zz"):
        list_sequences(root, lst, strict=True)


def test_errors_name_the_file(tmp_path):
    root = _make_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_sequences(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"i_a[/\\]H_1_2"):
        (root / "i_a" / "H_1_2").unlink()
        load_homography(root, "i_a", 2)
    (root / "i_a" / "H_1_3").write_text("1 0 0\n0 1\n0 0 1\n")
    with pytest.raises(HPatchesError, match="H_1_3.*3x3"):
        load_homography(root, "i_a", 3)
    (root / "i_a" / "H_1_4").write_text("1 0 0\n0 one 0\n0 0 1\n")
    with pytest.raises(HPatchesError, match="H_1_4.*numeric"):
        load_homography(root, "i_a", 4)
    (root / "i_a" / "H_1_5").write_text("1 0 0\n0 nan 0\n0 0 1\n")
    with pytest.raises(HPatchesError, match="H_1_5.*finite"):
        load_homography(root, "i_a", 5)
    (root / "i_a" / "H_1_6").write_text("1 0 0\n1 0 0\n0 0 1\n")
    with pytest.raises(HPatchesError, match="H_1_6.*singular"):
        load_homography(root, "i_a", 6)
    (root / "v_b" / "4.ppm").unlink()
    with pytest.raises(FileNotFoundError, match=r"v_b[/\\]4\.ppm"):
        image_path(root, "v_b", 4)
    assert image_path(root, "v_b", 4, must_exist=False).name == "4.ppm"
    with pytest.raises(ValueError):
        image_path(root, "v_b", 7)
    with pytest.raises(ValueError):
        load_homography(root, "v_b", 1)
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("foo/1.ppm\n")
    with pytest.raises(HPatchesError, match="bad.txt:1"):
        read_image_list(bad_list)


def test_homography_values(tmp_path):
    root = _make_root(tmp_path)
    H = load_homography(root, "v_c", 5)
    assert H.dtype == np.float64 and H.shape == (3, 3)
    np.testing.assert_array_equal(H, np.eye(3) * 5)


def test_sequence_type():
    assert sequence_type("i_ajuntament") == "i"
    assert sequence_type("some/root/v_wormhole") == "v"
    with pytest.raises(ValueError):
        sequence_type("x_foo")


def test_real_v_wormhole(shared_data):
    root = shared_data / "hpatches"
    assert list_sequences(root) == ["v_wormhole"]
    image_list = root / "image_list_hpatches_sequences.txt"
    listed = read_image_list(image_list)
    assert len(listed) == 108
    assert sum(s.startswith("i_") for s in listed) == 52 and sum(s.startswith("v_") for s in listed) == 56
    assert list_sequences(root, image_list) == ["v_wormhole"]
    with pytest.raises(FileNotFoundError, match="107 sequence"):
        list_sequences(root, image_list, strict=True)
    for k in range(1, 7):
        assert image_path(root, "v_wormhole", k).stat().st_size > 0
    H = load_homography(root, "v_wormhole", 2)
    np.testing.assert_allclose(H[0], [1.4733, -0.014435, 76.772])
    np.testing.assert_allclose(H[2], [0.00088206, 8.1414e-05, 1.002])
    for k in range(3, 7):
        assert load_homography(root, "v_wormhole", k).shape == (3, 3)
