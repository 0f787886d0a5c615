"""The R2D2 trainer: config strictness, exact resume, NaN skipping, checkpoints and their contract,
the run-folder rules, the sampler. Tiny networks on 48 px crops of small synthetic photos."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("kornia")

from PIL import Image  # noqa: E402

from delfi.config import ConfigError  # noqa: E402
from delfi.train.config import resolve_train_config, train_preset_names  # noqa: E402
from delfi.train.data import ResumableSampler, held_out_split  # noqa: E402
from delfi.train.trainer import RunFolderError, prepare_run_folder, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "net.mchan=1", "net.dim=16", "data.batch_size=2", "data.crop_size=48", "data.min_size=64", "data.max_size=96",
    "data.num_workers=0", "data.min_images=2", "loss.sampler.border=8", "trainer.log_every_n_steps=1",
    "val.pairs=2", "val.crop_size=48", "val.reliability_threshold=0", "val.repeatability_threshold=0", "val.batch_size=2",
]


def make_photos(folder: Path, count: int, size: int = 96, seed: int = 0) -> Path:
    """Textured synthetic photos (smoothed noise + blocks), PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.uniform(0, 255, (size // 8, size // 8, 3))
        image = np.kron(small, np.ones((8, 8, 1)))
        image += rng.normal(0, 20, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"photo_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), 6)


def tiny_config(images: Path, *extra: str):
    return resolve_train_config("r2d2", [f"data.images={images}", *TINY, *extra])


class Recorder:
    """Per-step training losses (None for a skipped step)."""

    def __new__(cls):
        import lightning.pytorch as pl

        class _Recorder(pl.Callback):
            def __init__(self):
                self.losses: dict[int, float | None] = {}

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                self.losses[trainer.global_step] = None if loss is None else float(loss)

        return _Recorder()


def crash_at(step: int):
    import lightning.pytorch as pl

    class Crash(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == step:
                raise RuntimeError("simulated crash")

    return Crash()


def run(config, out: Path, *, resume=None, callbacks=(), overwrite=False):
    folder = prepare_run_folder(out, resume=resume is not None, overwrite=overwrite)
    return train(config, folder, resume=resume, callbacks=list(callbacks), progress=False, command=["test"])


# --- config -------------------------------------------------------------------------------------


def test_presets_resolve_and_say_what_they_reproduce():
    from delfi.train.config import preset_about

    names = train_preset_names()
    assert {"r2d2", "r2d2-dice", "r2d2-jaccard", "r2d2-czekanowski", "r2d2-squared-chord", "r2d2-hardnet"} <= set(names)
    for name in names:  # the preset's method picks its schema (R2D2 or the landmark methods')
        assert resolve_train_config(name).method in ("r2d2", "delf-finetune", "delf-keypoint", "delg", "vpr", "multilevel-encoder",
                                                     "multilevel")
        assert len(preset_about(name)) > 40
    official = resolve_train_config("r2d2")
    assert (official.optim.lr, official.optim.weight_decay, official.data.batch_size, official.data.crop_size) == (1e-4, 5e-4, 8, 192)
    assert (official.loss.reliability.value, official.loss.repeatability.value, official.loss.N) == ("ap", "cosim", 16)
    assert resolve_train_config("r2d2-dice").loss.repeatability.value == "dice"
    assert resolve_train_config("r2d2-hardnet").loss.reliability.value == "hardnet"


@pytest.mark.parametrize("override, words", [
    ("loss.repeatabilty=dice", ["loss.repeatabilty", "loss.repeatability"]),
    ("lr=0.1", ["'lr'", "optim.lr"]),
    ("trainer.max_step=5", ["trainer.max_step", "trainer.max_steps"]),
    ("loss.repeatability=dicee", ["loss.repeatability", "jaccard"]),
    ("loss.reliability=ap2", ["loss.reliability", "hardnet"]),
    ("trainer.max_steps=many", ["trainer.max_steps"]),
    ("trainer.precision=bf17", ["trainer.precision", "bf16-mixed"]),
    ("optim.lr=0", ["optim.lr"]),
    ("loss.N=15", ["N"]),
    ("data.crop_size=20", ["data.crop_size", "border"]),
])
def test_config_is_strict(override, words):
    with pytest.raises(ConfigError) as info:
        resolve_train_config("r2d2", [override])
    for word in words:
        assert word in str(info.value)


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="r2d2-dice"):
        resolve_train_config("r2d2-dcie")


# --- sampler and split --------------------------------------------------------------------------


def test_sampler_is_a_function_of_seed_epoch_and_position():
    s = ResumableSampler(5, 2, seed=3)
    assert len(s) == 6 and s.batches_per_epoch == 3
    e0, e1 = list(s), list(s)
    assert [e for e, _ in e0] == [0] * 6 and [e for e, _ in e1] == [1] * 6
    assert sorted({i for _, i in e0}) == [0, 1, 2, 3, 4]
    resumed = ResumableSampler(5, 2, seed=3)
    resumed.epoch, resumed.start_batch = resumed.position(4)  # 4 batches consumed: epoch 1, batch 1
    assert list(resumed) == e1[2:] and list(resumed) == list(ResumableSampler(5, 2, 3, start_epoch=2))
    ranks = [list(ResumableSampler(5, 2, 3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 5 items padded cyclically to 2 ranks x 2 batches of 2
    assert {i for r in ranks for _, i in r} == {0, 1, 2, 3, 4}


def test_held_out_split_is_fixed():
    paths = [Path(f"d/img{i}.jpg") for i in range(20)]
    train_a, val_a = held_out_split(paths, 0.1)
    train_b, val_b = held_out_split(list(reversed(paths)), 0.1)
    assert len(val_a) == 2 and set(val_a) == set(val_b) and not set(val_a) & set(train_a)
    moved = held_out_split([Path("elsewhere") / p.name for p in paths], 0.1)[1]
    assert {p.name for p in moved} == {p.name for p in val_a}


# --- exact resume ---------------------------------------------------------------------------------

N_STEPS = 7


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory):
    rec = Recorder()
    config = tiny_config(photos, f"trainer.max_steps={N_STEPS}", "trainer.val_every_n_steps=2")
    run(config, tmp_path_factory.mktemp("full") / "run", callbacks=[rec])
    assert len(rec.losses) == N_STEPS and all(v is not None and math.isfinite(v) for v in rec.losses.values())
    return rec.losses


@pytest.mark.parametrize("how, k", [("crash", 4), ("crash", 3), ("stop", 4), ("stop", 3)])
def test_resume_gives_the_uninterrupted_loss_curve(photos, tmp_path, uninterrupted, how, k):
    """5 training images (1 of 6 held out), batch 2: 3 batches an epoch; k=4 resumes mid-epoch,
    k=3 at an epoch boundary (where Lightning opens and drops a data iterator); "crash": last.ckpt
    written at step k, then an exception; "stop": a run of max_steps=k, then continued to N_STEPS."""
    out = tmp_path / "run"
    first = Recorder()
    if how == "crash":
        config = tiny_config(photos, f"trainer.max_steps={N_STEPS}", "trainer.val_every_n_steps=2",
                             f"trainer.checkpoint_every_n_steps={k}")
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(config, out, callbacks=[first, crash_at(k)])
    else:
        run(tiny_config(photos, f"trainer.max_steps={k}", "trainer.val_every_n_steps=2"), out, callbacks=[first])
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == k
    second = Recorder()
    config = tiny_config(photos, f"trainer.max_steps={N_STEPS}", "trainer.val_every_n_steps=2")
    run(config, out, resume=out / "last.ckpt", callbacks=[second])
    curve = {**{s: v for s, v in first.losses.items() if s <= k}, **second.losses}
    assert sorted(curve) == sorted(uninterrupted)
    for step, loss in uninterrupted.items():
        assert curve[step] == pytest.approx(loss, abs=1e-6), step


# --- NaN skipping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_nan_loss_skips_the_step(photos, tmp_path, monkeypatch, precision):
    from delfi.train.module import R2D2Module

    original = R2D2Module.compute_loss

    def poisoned(self, batch):
        losses = original(self, batch)
        if self.global_step == 2:
            losses = {**losses, "total": losses["total"] * float("nan")}
        return losses

    monkeypatch.setattr(R2D2Module, "compute_loss", poisoned)
    rec = Recorder()
    config = tiny_config(photos, "trainer.max_steps=4", f"trainer.precision={precision}", "val.pairs=0")
    weights = {}

    import lightning.pytorch as pl

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights[batch_idx] = pl_module.net.ops[0].weight.detach().clone()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(config, tmp_path / "run", callbacks=[rec, Snap()])
    assert result.skipped_nan == 1
    assert any("non-finite loss" in str(w.message) for w in caught)
    losses = list(rec.losses.values())
    assert losses.count(None) == 1 and all(v is None or math.isfinite(v) for v in losses)
    skipped_batch = [i for i, v in enumerate(rec.losses.values()) if v is None][0]
    assert torch.equal(weights[skipped_batch], weights[skipped_batch - 1])  # no update on the skipped step
    assert all(torch.isfinite(p).all() for p in torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"].values())
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["callbacks"]["RunState"]["skipped_nan"] == 1


# --- checkpoints -----------------------------------------------------------------------------------


def test_best_and_last_checkpoints_follow_the_contract(photos, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(photos, "trainer.max_steps=4", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=3")
    result = run(config, out)
    assert result.best == out / "best.ckpt" and result.last == out / "last.ckpt" and result.steps == 4
    assert (out / "config.yaml").is_file() and (out / "logs").is_dir()
    saved = resolve_train_config(None, base=__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert saved == config
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(out / name, weights_only=True)
        d = ckpt["delfi"]
        assert (d["format"], d["format_version"], d["family"], d["normalisation"]) == ("delfi-checkpoint", 1, "r2d2", "imagenet")
        assert d["config"] == {"model": "r2d2", "arch": "quad_l2net", "mchan": 1, "dim": 16}
        p = d["provenance"]
        assert p["data"]["count"] == 5 and p["data"]["images"] == str(photos) and p["seed"] == 0
        assert p["command"] == ["test"] and p["loss"]["repeatability"] == "cosim" and isinstance(p["delfi_version"], str)
        assert p["steps"] == ckpt["global_step"]
        assert all(k.startswith("net.") for k in ckpt["state_dict"])
        from delfi.models.l2net import R2D2Net

        net = R2D2Net(**{k: d["config"][k] for k in ("arch", "mchan", "dim")})
        net.load_state_dict({k[len("net."):]: v for k, v in ckpt["state_dict"].items()})
    assert torch.load(out / "last.ckpt", weights_only=True)["delfi"]["provenance"]["steps"] == 4
    best = torch.load(out / "best.ckpt", weights_only=True)
    assert best["delfi"]["provenance"]["steps"] in (2, 4)
    key = [k for k in best["callbacks"] if "val/mma@3" in k][0]
    assert float(best["callbacks"][key]["best_model_score"]) == pytest.approx(result.best_score)


# --- data refusals and the run folder -------------------------------------------------------------


def test_too_few_images_are_refused_before_training(tmp_path):
    from delfi.train.data import load_training_data

    folder = make_photos(tmp_path / "few", 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="too few training images") as info:
        load_training_data(tiny_config(folder, "data.min_images=2"))
    assert "1 unreadable" in str(info.value) and "held out" in str(info.value)
    data = load_training_data(tiny_config(folder, "data.min_images=1"))
    assert [Path(p).name for p, _ in data.skipped] == ["broken.jpg"]
    with pytest.raises(ValueError, match="no training images"):
        load_training_data(resolve_train_config("r2d2", TINY))
    with pytest.raises(ValueError, match="no usable training image.*not found"):
        load_training_data(tiny_config(tmp_path / "missing"))


def test_run_folder_rules(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a delfi run folder"):
        prepare_run_folder(user)
    with pytest.raises(RunFolderError, match="not a delfi run folder"):
        prepare_run_folder(user, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine"
    with pytest.raises(RunFolderError, match="is a file"):
        prepare_run_folder(user / "notes.txt")
    run_dir = prepare_run_folder(tmp_path / "new" / "run")
    assert json.loads((run_dir / "delfi-run.json").read_text())["format"] == "delfi-train-run"
    (run_dir / "last.ckpt").write_bytes(b"x")
    (run_dir / "mine.txt").write_text("keep")
    with pytest.raises(RunFolderError, match="--resume"):
        prepare_run_folder(run_dir)
    prepare_run_folder(run_dir, resume=True)
    assert (run_dir / "last.ckpt").exists()
    prepare_run_folder(run_dir, overwrite=True)
    assert not (run_dir / "last.ckpt").exists() and (run_dir / "mine.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_folder(empty) == empty


@pytest.mark.parametrize("overrides, expected", [
    (["trainer.precision=32-true"], False),
    (["trainer.precision=bf16-mixed"], True),
    (["trainer.precision=bf16-mixed", "net.channels_last=false"], False),
    (["trainer.precision=32-true", "net.channels_last=true"], True),
])
def test_network_layout_follows_the_precision(overrides, expected):
    """Channels-last with bf16 (faster there), NCHW in float32 (faster there); the layout never
    changes the outputs beyond bf16 rounding."""
    from delfi.train.module import R2D2Module, uses_channels_last

    config = resolve_train_config("r2d2", [*overrides, "net.mchan=1", "net.dim=16"])
    assert uses_channels_last(config) is expected
    module = R2D2Module(config)
    weight = next(p for p in module.net.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected or weight.shape[-1] == 1
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = R2D2Module(resolve_train_config("r2d2", ["net.mchan=1", "net.dim=16", "net.channels_last=false"]))
    reference.net.load_state_dict(module.net.state_dict())
    out, ref = module(images), reference(images)
    assert torch.allclose(out["descriptors"], ref["descriptors"], atol=1e-5)
