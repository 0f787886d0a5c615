"""``delfi train multilevel-encoder`` / ``delfi train multilevel`` end to end on tiny data: the two
stages, which weights each trains, the checkpoint contract, depth + pose pairs, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("kornia")

from tests.train.test_train_cli import assert_clean_refusal, delfi, make_photos  # noqa: E402

TINY = ["data.batch_size=2", "data.crop_size=96", "data.min_size=128", "data.max_size=160", "data.num_workers=0",
        "val.pairs=2", "val.crop_size=96", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
        "loss.min_correspondences=16"]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), 5, size=160)


@pytest.fixture(scope="module")
def stage_one(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "enc"
    result = delfi("train", "multilevel-encoder", "--images", photos, "--out", out, "--no-progress", *TINY, "trainer.max_steps=3")
    assert result.exit_code == 0, result.output
    assert "reconstruction + triplet" in result.output and "val/mma@3" in result.output
    return out


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_stage_one_trains_the_encoders_only(stage_one):
    checkpoint = torch.load(stage_one / "last.ckpt", map_location="cpu", weights_only=True)
    meta = checkpoint["delfi"]
    assert meta["family"] == "multilevel" and meta["provenance"]["stage"] == "encoders"
    assert meta["config"] == {"model": "multilevel", "depth": 50, "stride_in": "3x3", "code_dim": 64, "first_stride1": False}
    assert (stage_one / "best.ckpt").is_file() and (stage_one / "config.yaml").is_file()


def test_stage_two_from_stage_one_trains_the_attention_only_and_extracts(stage_one, photos, tmp_path):
    out = tmp_path / "ml"
    result = delfi("train", "multilevel", "--images", photos, "--init", stage_one / "last.ckpt", "--out", out, "--no-progress",
                   *TINY, "trainer.max_steps=3", "loss=distinctiveness+", "loss.peaky_n=2", "loss.peaky_lambda=0.5")
    assert result.exit_code == 0, result.output
    assert "distinctiveness+" in result.output and "0.5 x peaky N=2" in result.output
    before, after = state(stage_one / "last.ckpt"), state(out / "last.ckpt")
    assert not changed(before, after, "net.encoders.") and not changed(before, after, "net.backbone.")
    assert changed(before, after, "net.attentions.")
    config = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["delfi"]["provenance"]["train_config"]
    assert (config["loss"]["kind"], config["loss"]["peaky_n"], config["loss"]["peaky_lambda"]) == ("distinctiveness+", 2, 0.5)
    # the training checkpoint is extraction weights as it is
    features = tmp_path / "f.h5"
    result = delfi("extract", photos / "photo_00.png", "--preset", "multilevel", "--weights", out / "last.ckpt", "--out", features)
    assert result.exit_code == 0, result.output
    from delfi.io.features import FeatureStore

    with FeatureStore(features) as store:
        (name,) = store.names()
        f = store.get(name)
    assert f.descriptors.shape[1] == 64 and len(f.keypoints) > 0


def test_weighted_triplet_variant_trains(stage_one, photos, tmp_path):
    out = tmp_path / "mlw"
    result = delfi("train", "multilevel", "--images", photos, "--init", stage_one / "last.ckpt", "--out", out, "--no-progress",
                   *TINY, "trainer.max_steps=2", "val.pairs=0", "loss=triplet-weighted")
    assert result.exit_code == 0, result.output
    assert "score-weighted triplet" in result.output


def test_depth_pose_pairs_train(tmp_path):
    from delfi.datasets.synthetic_depth import make_synthetic_depth_scene

    make_synthetic_depth_scene(tmp_path / "mega", num_cameras=3, size=(192, 144))
    out = tmp_path / "run"
    result = delfi("train", "multilevel-encoder", "--pairs", tmp_path / "mega", "--out", out, "--no-progress", *TINY,
                   "trainer.max_steps=2", "data.pairs_per_scene=4")
    assert result.exit_code == 0, result.output
    assert "depth + pose pairs per epoch" in result.output and "validation images │ none" in result.output
    assert (out / "last.ckpt").is_file() and not (out / "best.ckpt").exists()


@pytest.mark.parametrize("args, words", [
    (["train", "multilevel", "loss=encoder"], ["loss.kind", "multilevel stage trains with"]),
    (["train", "multilevel", "loss=focal"], ["loss.kind", "distinctiveness+"]),
    (["train", "multilevel", "loss.peaky_n=3"], ["loss.peaky_n", "even"]),
    (["train", "multilevel-encoder", "loss=distinctiveness+"], ["loss.kind", "encoder"]),
    (["train", "multilevel", "--preset", "r2d2"], ["r2d2", "delfi train r2d2"]),
    (["train", "multilevel", "--pairs", "no/such/root"], ["data.pairs", "no/such/root"]),
    (["train", "multilevel"], ["--images", "--pairs"]),
])
def test_refusals(photos, tmp_path, args, words):
    if "--images" not in args and args != ["train", "multilevel"]:
        args = args + ["--images", str(photos)]
    assert_clean_refusal(delfi(*args, "--out", tmp_path / "out", *TINY), *words)
    assert not (tmp_path / "out").exists()


def test_resume_of_the_other_stage_is_refused(stage_one, tmp_path):
    assert_clean_refusal(delfi("train", "multilevel", "--resume", stage_one / "last.ckpt"), "multilevel-encoder",
                         "delfi train multilevel-encoder --resume")
