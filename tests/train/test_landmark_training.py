"""Training DELF (finetune, keypoint), DELG and DELG-VPR: losses as documented, what is frozen and
what trains, unreadable images, the checkpoint contract (extraction loads a run's checkpoint),
``--init`` across families, exact resume. ResNet-50 on 64 px images of tiny class folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

from PIL import Image  # noqa: E402

from delfi.config import ConfigError  # noqa: E402
from delfi.train.config import resolve_train_config  # noqa: E402
from delfi.train.landmark_config import LandmarkTrainConfig  # noqa: E402
from delfi.train.trainer import prepare_run_folder, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["data.batch_size=4", "data.image_size=64", "data.resize=72", "data.num_workers=0", "val.image_size=64",
        "val.batch_size=8", "trainer.log_every_n_steps=1", "data.val_fraction=0.25", "net.global_dim=32",
        "net.local_dim=16"]


def make_classes(root: Path, classes: int = 3, per_class: int = 4, size: int = 80, seed: int = 0) -> Path:
    """Class folders of blocky colour images: each class its own palette of blocks, plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"landmark-{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, (size // 16, size // 16, 3))
        for i in range(per_class):
            image = np.kron(base, np.ones((16, 16, 1))) + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory) -> Path:
    return make_classes(tmp_path_factory.mktemp("landmarks"))


def config_for(method: str, folder: Path, *extra: str) -> LandmarkTrainConfig:
    data = [f"data.root={folder}"] if method == "vpr" else [f"data.folder={folder}"]
    return resolve_train_config(method, [*data, *TINY, *extra], schema=LandmarkTrainConfig)


def module_for(config, classes=(3,)):
    from delfi.train.landmark_module import LandmarkModule

    torch.manual_seed(0)
    return LandmarkModule(config, list(classes))


def batch(n: int = 4, size: int = 64, classes: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, size, size, generator=g), "label": torch.arange(n) % classes,
            "group": torch.zeros(n, dtype=torch.long), "skipped": [""] * n}


# --- config ---------------------------------------------------------------------------------------


def test_presets_resolve_to_their_methods():
    for preset, method in (("delf-finetune", "delf-finetune"), ("delf-keypoint", "delf-keypoint"),
                           ("delf-keypoint-tf", "delf-keypoint"), ("delg", "delg"), ("delg-seed", "delg"), ("vpr", "vpr")):
        config = resolve_train_config(preset, [], schema=LandmarkTrainConfig)
        assert config.method == method
    tf = resolve_train_config("delg", [], schema=LandmarkTrainConfig)
    assert (tf.loss.margin, tf.loss.scale, tf.loss.reconstruction_weight, tf.optim.gradient_clip_val) == (0.1, 45.25, 10.0, 10.0)
    seed = resolve_train_config("delg-seed", [], schema=LandmarkTrainConfig)
    assert (seed.loss.margin, seed.loss.scale, seed.optim.nesterov, seed.optim.scheduler.value) == (0.15, 30.0, True, "cosine")
    keypoint = resolve_train_config("delf-keypoint", [], schema=LandmarkTrainConfig)
    assert keypoint.data.gamma_scaling == [0.3535, 1.0] and (keypoint.data.resize, keypoint.data.image_size) == (900, 720)


@pytest.mark.parametrize("words, message", [
    (["loss.marginn=0.2"], "loss.margin"),
    (["optim.optimizer=rmsprop"], "optim.optimizer"),
    (["vpr.only_local=true"], "only for method vpr"),
    (["data.area=[0.5, 0.1]"], "data.area"),
    (["net.init_from=/no/such.ckpt"], "no such checkpoint"),
    (["optim.scheduler=step"], "step_every"),
])
def test_config_is_strict(words, message):
    with pytest.raises(ConfigError, match=message):
        resolve_train_config("delg", words, schema=LandmarkTrainConfig)


def test_only_local_needs_a_saved_model():
    with pytest.raises(ConfigError, match="--init"):
        resolve_train_config("vpr", ["vpr.only_local=true"], schema=LandmarkTrainConfig)


def test_short_keys_expand_only_when_unique():
    from delfi.cli.train_landmarks import expand_short_keys

    words = expand_short_keys(["groups=8", "backbone_weights=r.pth", "min_images_per_class=3", "seed=2", "lr=0.1"], LandmarkTrainConfig)
    assert words == ["vpr.groups=8", "net.backbone_weights=r.pth", "min_images_per_class=3", "seed=2", "optim.lr=0.1"]


# --- losses and what trains ----------------------------------------------------------------------


def test_delg_loss_is_global_plus_attention_plus_ten_reconstruction(landmarks):
    config = config_for("delg", landmarks)
    module = module_for(config).train()
    b = batch()
    module.eval()  # batch norm statistics fixed: the same outputs in the check below
    with torch.no_grad():
        losses = module.losses(b)
    with torch.no_grad():
        out = module.net(module.prepare(b["image"]))
        labels = b["label"]
        global_ce = F.cross_entropy(module.heads["global"][0](out["global"], labels), labels)
        attention_ce = F.cross_entropy(module.heads["attention"][0](out["attended"]), labels)
        mse = F.mse_loss(out["reconstruction"], out["features"])
    assert float(losses["total"]) == pytest.approx(float(global_ce + attention_ce + 10 * mse), rel=1e-5)
    assert float(losses["global"]) == pytest.approx(float(global_ce), rel=1e-5)


def _grads(module) -> dict[str, bool]:
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()}


def test_delg_local_losses_never_reach_the_backbone(landmarks):
    """Stop-gradient: with the global term off, no backbone tensor gets a gradient, while the
    autoencoder and attention do."""
    module = module_for(config_for("delg", landmarks, "loss.global_weight=0")).train()
    module.losses(batch())["total"].backward()
    grads = _grads(module)
    assert not any(v for k, v in grads.items() if k.startswith("net.backbone."))
    assert grads["net.autoencoder.encoder.weight"] and grads["net.attention.conv1.weight"]
    module.zero_grad()
    module_full = module_for(config_for("delg", landmarks)).train()
    module_full.losses(batch())["total"].backward()
    assert _grads(module_full)["net.backbone.layer3.0.conv1.weight"]


def test_keypoint_stage_freezes_the_backbone_and_its_batch_norm(landmarks):
    module = module_for(config_for("delf-keypoint", landmarks)).train()
    stats = {k: v.clone() for k, v in module.net.backbone.state_dict().items() if "running" in k}
    module.losses(batch())["total"].backward()
    grads = _grads(module)
    assert not any(v for k, v in grads.items() if k.startswith("net.backbone."))
    assert grads["net.attention.conv2.weight"] and grads["heads.attention.fc.weight"]
    after = module.net.backbone.state_dict()
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net.attention.", "heads.")) for n in trainable)


def test_finetune_stage_trains_the_backbone_not_the_attention(landmarks):
    module = module_for(config_for("delf-finetune", landmarks)).train()
    module.losses(batch())["total"].backward()
    grads = _grads(module)
    assert grads["net.backbone.layer3.5.conv3.weight"] and grads["heads.classifier.fc.weight"]
    assert not any(v for k, v in grads.items() if k.startswith("net.attention."))


def test_gamma_scaling_draws_one_factor_per_step(landmarks):
    module = module_for(config_for("delf-keypoint", landmarks, "data.gamma_scaling=[0.5, 0.5]"))
    scaled = module.gamma_scale(torch.rand(2, 3, 64, 64))
    assert tuple(scaled.shape) == (2, 3, 32, 32)


def test_cosface_subtracts_the_margin_from_the_target_only():
    from delfi.models.heads import CosFaceHead

    head = CosFaceHead(4, 3, margin=0.4, scale=30.0)
    x = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    plain, margin = head(x), head(x, labels)
    difference = plain - margin
    expected = torch.zeros(5, 3).scatter(1, labels[:, None], 30.0 * 0.4)
    assert torch.allclose(difference, expected, atol=1e-5)


def test_schedules():
    from delfi.train.landmark_module import LandmarkSchedule

    linear = LandmarkSchedule("linear", 0, 100, 0.0)
    assert linear(0) == 1.0 and linear(50) == pytest.approx(0.5) and linear(100) == 0.0
    step = LandmarkSchedule("step", 0, 100, 0.0, every=10, gamma=0.5)
    assert (step(9), step(10), step(25)) == (1.0, 0.5, 0.25)
    warm = LandmarkSchedule("cosine", 10, 110, 0.0)
    assert warm(0) == pytest.approx(0.1) and warm(10) == pytest.approx(1.0) and warm(60) == pytest.approx(0.5)


# --- runs: checkpoints, extraction, init, unreadable images, resume -------------------------------


class Recorder:
    def __new__(cls):
        import lightning.pytorch as pl

        class _Recorder(pl.Callback):
            def __init__(self):
                self.losses: dict[int, float] = {}

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                self.losses[trainer.global_step] = float(loss)

        return _Recorder()


def run(config, out: Path, *, resume=None, callbacks=()):
    folder = prepare_run_folder(out, resume=resume is not None, method=config.method)
    return train(config, folder, resume=resume, callbacks=list(callbacks), progress=False, command=["test"])


def test_a_delg_run_checkpoint_extracts_with_the_delg_preset(landmarks, tmp_path):
    from delfi.models import create
    from delfi.models.checkpoints import load_checkpoint

    result = run(config_for("delg", landmarks, "trainer.max_steps=2", "trainer.val_every_n_steps=2", "data.val_fraction=0.5",
                            "net.normalisation=unit"),
                 tmp_path / "run")
    assert result.best is not None and result.last is not None
    assert set(result.initial_metrics) >= {"accuracy", "map", "reconstruction"}
    info = load_checkpoint(result.best)
    assert info.family == "delg" and info.config["global_dim"] == 32 and info.config["local_dim"] == 16
    assert info.provenance["train_config"]["method"] == "delg" and info.provenance["steps"] == 2
    assert not any(k.startswith("heads.") for k in info.state_dict)
    model = create("delg", weights=str(result.best), max_image_size=96)
    features = model.extract(landmarks / "landmark-0" / "0_0.png")
    assert features.global_descriptor.shape == (32,) and features.descriptors.shape[1] == 16
    assert model.normalisation_name == "unit"  # the training's, carried by the checkpoint (the preset says tf-delf)


def test_init_from_a_delf_checkpoint_loads_the_shared_tensors(landmarks, tmp_path):
    from delfi.train.landmark_module import LandmarkModule

    result = run(config_for("delf-finetune", landmarks, "trainer.max_steps=1", "val.enabled=false"), tmp_path / "ft")
    trained = torch.load(result.last, weights_only=True)["state_dict"]
    config = config_for("delg", landmarks, f"net.init_from={result.last}")
    module = LandmarkModule(config, [3])
    report = module.init_reports[-1]
    assert "backbone.layer3.5.conv3.weight" in report.loaded and "whitening.fc.weight" in report.kept
    assert torch.equal(module.net.backbone.layer3[5].conv3.weight, trained["net.backbone.layer3.5.conv3.weight"])


def test_unreadable_images_are_reported_and_replaced(landmarks, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(landmarks, folder)
    broken = folder / "landmark-1" / "1_2.png"
    broken.write_bytes(b"not an image")
    config = config_for("delf-finetune", folder, "trainer.max_steps=4", "val.enabled=false", "data.batch_size=3")
    with pytest.warns(RuntimeWarning, match="1_2.png: unreadable image skipped"):
        result = run(config, tmp_path / "run")
    assert result.steps == 4


def test_an_unreadable_validation_image_is_named_and_left_out_of_the_metrics(landmarks, tmp_path):
    import shutil

    from delfi.train.landmark_data import load_landmark_data
    from delfi.train.landmark_module import LandmarkModule

    folder = tmp_path / "data"
    shutil.copytree(landmarks, folder)
    config = config_for("delf-finetune", folder, "data.val_fraction=0.5")
    data = load_landmark_data(config)
    broken = data.val.paths[0]
    broken.write_bytes(b"not an image")
    module = module_for(config)
    with pytest.warns(RuntimeWarning, match=f"{broken.name}: unreadable image skipped"), torch.no_grad():
        rows = [module.val_rows(b) for b in torch.utils.data.DataLoader(data.val, batch_size=4)]
    assert len(data.val) == 6 and sum(int(r["valid"].sum()) for r in rows) == 5
    with torch.no_grad():
        metrics = module.val_metrics(rows)
    correct = metrics["accuracy"] * 5  # a fraction of the 5 readable images, not of 6 with a black stand-in
    assert correct == pytest.approx(round(correct), abs=1e-6)


def test_resume_gives_the_uninterrupted_losses(landmarks, tmp_path):
    extra = ("trainer.val_every_n_steps=100", "val.enabled=false", "optim.lr=0.001", "optim.scheduler=constant")  # the same lr whatever max_steps
    full = Recorder()
    run(config_for("delg", landmarks, "trainer.max_steps=5", *extra), tmp_path / "full", callbacks=[full])
    first, second = Recorder(), Recorder()
    run(config_for("delg", landmarks, "trainer.max_steps=3", *extra), tmp_path / "part", callbacks=[first])
    run(config_for("delg", landmarks, "trainer.max_steps=5", *extra), tmp_path / "part", resume=tmp_path / "part" / "last.ckpt",
        callbacks=[second])
    curve = {**first.losses, **second.losses}
    assert sorted(curve) == sorted(full.losses) == [1, 2, 3, 4, 5]
    for step, loss in full.losses.items():
        assert math.isfinite(loss) and curve[step] == pytest.approx(loss, rel=1e-5), step


def test_balanced_sampler_draws_every_class_alike_and_resumes():
    from delfi.train.landmark_data import BalancedSampler

    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    consumed = {"n": 0}
    sampler = BalancedSampler(labels, batch_size=10, seed=3, consumed=lambda: consumed["n"])
    draws = []
    for epoch in range(30):
        consumed["n"] = epoch * sampler.batches_per_epoch  # as the training loop advances it
        draws.append(labels[[i for _, i in sampler]])
    draws = np.concatenate(draws)
    shares = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(shares, 1 / 3, atol=0.03), shares  # a plain permutation gives 0.9 / 0.09 / 0.01
    first = [i for _, i in BalancedSampler(labels, 10, 3, consumed=lambda: 0)]
    consumed["n"] = 4  # four batches done: the iterator starts at the fifth of epoch 0
    assert [i for _, i in sampler] == first[40:]
