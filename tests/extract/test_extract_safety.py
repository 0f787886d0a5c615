"""Extraction runs never lose or overwrite data and say what went wrong: names checked before any
network runs, foreign npz files kept, empty results counted, settings and weights that cannot give
features refused, random weights flagged, large images decoded at the working size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import delfi
from delfi.config import ConfigError
from delfi.extract.extractor import extract_to_store, read_bbox_file
from delfi.io.features import FeatureStore
from delfi.io.images import ImageEntry, read_image
from delfi.models import RandomWeightsWarning, create
from delfi.models.checkpoints import CheckpointError
from delfi.types import Features


class CountingModel:
    """A stand-in extractor: N random features per image, counting its calls."""

    family, weights_sha256 = "fake", "0" * 64

    def __init__(self, count: int = 4) -> None:
        self.calls, self.count = 0, count

    def extract(self, image):
        self.calls += 1
        rgb = read_image(image) if isinstance(image, (str, Path)) else image
        n = self.count
        return Features(torch.rand(n, 2) * 8, torch.rand(n), torch.rand(n, 4), torch.ones(n), None, (rgb.shape[-1], rgb.shape[-2]))


def _image(path: Path, size=(16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("bad", ["/abs/x.png", "../x.png", "a//b.png", "scores/x.png", "", "x/./y.png"])
def test_unstorable_names_fail_before_any_network_runs(tmp_path, bad):
    good = _image(tmp_path / "good.png")
    model = CountingModel()
    entries = [ImageEntry(good, bad), ImageEntry(good, "good.png")]
    report = extract_to_store(model, entries, tmp_path / "f.h5", config={})
    assert model.calls == 1 and report.extracted == 1
    ((name, reason),) = report.failures
    assert name == bad and "cannot be stored" in reason
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.names() == ["good.png"]


def test_one_name_for_two_files_the_later_fails(tmp_path):
    a, b = _image(tmp_path / "a" / "x.png"), _image(tmp_path / "b" / "x.png")
    model = CountingModel()
    report = extract_to_store(model, [ImageEntry(a, "x.png"), ImageEntry(b, "x.png")], tmp_path / "f.h5", config={})
    assert model.calls == 1 and report.failures == [("x.png", f"its store name 'x.png' is already used by {a} in this run")]


def test_a_foreign_npz_file_is_never_overwritten(tmp_path):
    image = _image(tmp_path / "img.png")
    theirs = tmp_path / "img.png.r2d2"
    theirs.write_bytes(b"the user's own file")
    report = extract_to_store(CountingModel(), [ImageEntry(image, "img.png")], tmp_path / "f.h5", config={}, export_npz=True)
    assert theirs.read_bytes() == b"the user's own file"
    ((_, reason),) = report.failures
    assert str(theirs) in reason and "--overwrite" in reason
    again = extract_to_store(CountingModel(), [ImageEntry(image, "img.png")], tmp_path / "f.h5", config={}, export_npz=True, overwrite=True)
    assert again.extracted == 1 and theirs.read_bytes() != b"the user's own file"
    resumed = extract_to_store(CountingModel(), [ImageEntry(image, "img.png")], tmp_path / "f.h5", config={}, export_npz=True)
    assert resumed.skipped == 1 and not resumed.failures  # its own npz, beside a stored entry


def test_images_with_no_features_are_counted(tmp_path):
    entries = [ImageEntry(_image(tmp_path / f"{i}.png"), f"{i}.png") for i in range(3)]
    report = extract_to_store(CountingModel(count=0), entries, tmp_path / "f.h5", config={})
    assert report.extracted == 3 and report.empty == ["0.png", "1.png", "2.png"]


def test_bbox_file_errors_name_file_and_line(tmp_path):
    cases = {
        b"\xff\xfe bad bytes": "not a UTF-8 text file",
        b"a.png 1 2 3 4\na.png 1 2 3 4\n": ":2: a second box for a.png (first at line 1)",
        b"# c\na.png 1 2 nan 4\n": ":2: box coordinates must be finite",
        b"a.png 5 2 3 4\n": ":1: empty box",
        b"a.png 1 2 x 4\n": ":1: expected 'name x0 y0 x1 y1'",
    }
    for i, (data, message) in enumerate(cases.items()):
        path = tmp_path / f"b{i}.txt"
        path.write_bytes(data)
        with pytest.raises(ValueError) as info:
            read_bbox_file(path)
        assert str(path) in str(info.value) and message in str(info.value)
    with pytest.raises(OSError, match="gone.txt: cannot read"):
        read_bbox_file(tmp_path / "gone.txt")


# ---------------------------------------------------------------- settings that cannot give features


@pytest.mark.parametrize(
    "preset, overrides, key",
    [
        ("r2d2", {"max_size": 256}, "max_size"),  # with the default min_size 256
        ("r2d2", {"min_size": 5000}, "max_size"),
        ("r2d2", {"reliability_threshold": float("nan")}, "reliability_threshold"),
        ("r2d2", {"repeatability_threshold": 1.5}, "repeatability_threshold"),
        ("r2d2", {"top_k": -5}, "top_k"),
        ("r2d2", {"scale_f": float("nan")}, "scale_f"),
        ("r2d2", {"max_scale": float("nan")}, "max_scale"),
        ("delf", {"score_threshold": float("nan")}, "score_threshold"),
        ("delf", {"iou_threshold": -0.5}, "iou_threshold"),
        ("delf", {"top_k": -1}, "top_k"),
        ("delf", {"scales": [1.0, float("nan")]}, "scales"),
        ("delg", {"global_scales": []}, "global_scales"),
        ("delg", {"gem_p": float("inf")}, "gem_p"),
    ],
)
def test_settings_that_cannot_produce_features_are_refused(preset, overrides, key):
    with pytest.raises(ConfigError) as info:
        delfi.models.resolve_config(preset, overrides)
    assert str(info.value).startswith(f"{key}:")


def test_sensible_settings_still_pass():
    for overrides in ({"min_size": 0, "max_size": 9999}, {"min_size": 256, "max_size": 305}, {"top_k": 0},
                      {"reliability_threshold": 0.0}):  # fmt: skip
        delfi.models.resolve_config("r2d2", overrides)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"top_kk.*[Dd]id you mean:? '?top_k"):
        delfi.models.resolve_config("r2d2", ["top_kk=5"])


def test_nan_weights_are_refused_naming_the_checkpoint(tmp_path):
    from delfi.models.l2net import R2D2Net

    net = R2D2Net()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    path = tmp_path / "diverged.pt"
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": net.state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        create("r2d2", weights=path)
    assert str(path) in str(info.value) and "NaN" in str(info.value)


@pytest.mark.parametrize("preset", ["delf", "delg", "r2d2"])
def test_random_weights_are_flagged(tmp_path, preset):
    if preset == "r2d2":  # the shipped presets name weights: a user's preset without any
        (tmp_path / "mine.yaml").write_text("model: r2d2\nmin_size: 32\n")
        preset = str(tmp_path / "mine.yaml")
    with pytest.warns(RandomWeightsWarning, match="random"):
        model = create(preset)
    assert model.untrained
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        quiet = create(preset, load=False)  # explicit: tests, training
    assert quiet.untrained
    report_attrs = delfi.extract.extractor.store_attributes(model, {})
    assert report_attrs["untrained"] is True


# ---------------------------------------------------------------- large images at the working size


def _big(path: Path, size=(1400, 1050)) -> Path:
    x = np.linspace(0, 6 * np.pi, size[0])[None, :]
    y = np.linspace(0, 4 * np.pi, size[1])[:, None]
    rgb = np.stack([np.sin(x) * np.cos(y), np.cos(x + y), np.sin(x * y / 9)], 2)
    return _image_array(path, ((rgb + 1) * 127.5).astype(np.uint8))


def _image_array(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_r2d2_on_a_large_file_keeps_the_pyramid_of_the_original(tmp_path):
    path = _big(tmp_path / "big.png")
    model = create("r2d2", load=False, max_size=320, min_size=160, reliability_threshold=0.0,
                   repeatability_threshold=0.0, top_k=0, tile_pixels=0)  # fmt: skip
    torch.manual_seed(0)
    from_file, from_tensor = model.extract(path), model.extract(read_image(path))
    assert from_file.image_size == from_tensor.image_size == (1400, 1050)
    assert sorted(set(from_file.scales.tolist())) == sorted(set(from_tensor.scales.tolist()))  # same levels
    for found in (from_file, from_tensor):  # keypoints in original pixels
        assert float(found.keypoints.min()) >= -0.5 and float(found.keypoints[:, 0].max()) <= 1399.5
    assert abs(len(from_file) - len(from_tensor)) < 0.1 * len(from_tensor)


def test_delf_limited_image_from_a_large_file_matches_the_full_decode(tmp_path):
    path = _big(tmp_path / "big.jpg")
    model = create("delf", load=False, max_image_size=300)
    reduced, factor, offset, original = model.prepare(path)
    full, full_factor, _, full_original = model.prepare(read_image(path))
    assert reduced.shape == full.shape == (3, 225, 300) and original == full_original == (1400, 1050)
    assert factor == full_factor == (1400 / 300, 1050 / 225) and offset == (0, 0)
    assert float((reduced - full).abs().mean()) < 0.02
