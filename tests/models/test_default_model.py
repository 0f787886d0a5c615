"""delfi's own default model ("delfi-lite"): embedded in the package, listed, the default of the API and
the command line, recorded with its recipe; and (with the shared data) its measured quality against
OpenCV SIFT on real photos."""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import pytest

from delfi.config import DEFAULT_PRESET, load_preset
from delfi.models import weights as w

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "default_model"


def test_the_default_weights_ship_inside_the_package_with_their_recorded_sha256():
    info = w.get_weights_info(w.DEFAULT_WEIGHTS)
    assert info.embedded and info.preset == DEFAULT_PRESET and info.url == ""
    path, found = w.resolve_weights(w.DEFAULT_WEIGHTS)  # DELFI_HOME is an empty folder in tests
    assert found == info and path == w.embedded_dir() / info.filename and path.is_file()
    assert w.sha256_file(path) == info.sha256
    assert path.stat().st_size < 2_000_000  # a few MB at most in the wheel
    assert w.download_weights(info, progress=False) == path  # nothing to fetch
    assert w.known_weights_by_sha256(info.sha256) == info


def test_the_default_preset_loads_the_embedded_model_without_warnings():
    import delfi

    assert load_preset(DEFAULT_PRESET)["weights"] == w.DEFAULT_WEIGHTS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = delfi.models.create()
    assert not model.untrained
    assert model.network.architecture() == {"arch": "fast_quad_l2net", "mchan": 2, "dim": 64}


def test_the_embedded_file_records_how_it_was_made():
    from delfi.demo.photos import PHOTOS
    from delfi.models.checkpoints import load_checkpoint
    from delfi.train.config import resolve_train_config

    path = w.resolve_weights(w.DEFAULT_WEIGHTS)[0]
    provenance = load_checkpoint(path).provenance
    stage1 = resolve_train_config("delfi-lite", [])
    stage2 = resolve_train_config("delfi-lite-reliability", [f"net.init_from={path}"])  # stage 1's checkpoint in the recipe
    assert provenance["stages"] == [
        {"preset": "delfi-lite", "seed": stage1.seed, "steps": stage1.trainer.max_steps},
        {"preset": "delfi-lite-reliability", "seed": stage2.seed, "steps": stage2.trainer.max_steps},
    ]
    assert provenance["seed"] == stage2.seed and provenance["steps"] == stage2.trainer.max_steps
    assert provenance["command"] == ["python", "recipes/default_model/train.py", "--out", "RUN"]
    assert provenance["data"]["images"] == [Path(p.filename).name for p in PHOTOS]
    assert provenance["data"]["val_images"] == ["cell.png"]
    trained = provenance["train_config"]
    assert trained["net"] == {"arch": "fast_quad_l2net", "mchan": 2, "dim": 64, "channels_last": None,
                              "init_from": "RUN/stage1/last.ckpt", "reinit_heads": ["clf"]}
    assert trained["optim"]["lr"] == stage2.optim.lr and trained["trainer"]["precision"] == "bf16-mixed"


def test_the_recipe_lists_every_training_photo_with_its_licence_and_checksum():
    from delfi.demo.photos import PHOTOS, data_dir, photo_path

    with open(RECIPE / "photos.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    train = [r for r in rows if r["role"] == "train"]
    assert [r["file"] for r in train] == [Path(p.filename).name for p in PHOTOS]
    assert all(r["licence"] in ("CC0", "public domain") for r in rows)
    for row, photo in zip(train, PHOTOS):
        assert row["licence"] == photo.licence
        assert hashlib.sha256(photo_path(photo).read_bytes()).hexdigest() == row["sha256"], row["file"]
    (val,) = [r for r in rows if r["role"] == "validation"]
    assert hashlib.sha256((data_dir() / val["file"]).read_bytes()).hexdigest() == val["sha256"]
    assert "delfi-lite.pt" in (RECIPE / "README.md").read_text() and w.get_weights_info("delfi-lite").sha256 in (
        RECIPE / "README.md").read_text()


def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("default_model_benchmark", REPO / "benchmarks" / "default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.one_thread  # MMA / EVD bounds far above float rounding: any thread count
def test_the_default_model_beats_sift_on_real_photos(shared_data, tmp_path):
    """The issue's targets on the data we have: MMA@3 on HPatches v_wormhole at least SIFT's + 0.10, and
    EVD homography accuracy (10 px) at least SIFT's, both measured here."""
    pytest.importorskip("cv2")
    from delfi.eval.evd import run_evd
    from delfi.eval.homography import homography_accuracy
    from delfi.eval.hpatches_run import run_hpatches

    if not (shared_data / "hpatches" / "v_wormhole").is_dir() or not (shared_data / "evd").is_dir():
        pytest.skip("HPatches v_wormhole or EVD not in the shared data")
    bench = _benchmark_module()
    methods = {"sift": bench.sift_extractor(), "default": bench.delfi_extractor("delfi-lite", "delfi-lite", ["tile_pixels=0"])}  # whole levels: faster, same outputs
    mma, evd = {}, {}
    for name, extract in methods.items():
        hp = run_hpatches(shared_data / "hpatches", extract, tmp_path, method=name, sequences=["v_wormhole"], plot=False)
        mma[name] = hp.summary()["mma"][3]
        pairs = run_evd(shared_data / "evd", extract, tmp_path, method=name, pictures=False).pairs
        evd[name] = homography_accuracy([p.corner_error for p in pairs], (10,))[10]
    assert mma["sift"] == pytest.approx(0.56, abs=0.03)  # the SIFT number: the protocol is the same
    assert mma["default"] >= mma["sift"] + 0.10, mma
    assert evd["default"] >= evd["sift"], evd
