"""`R2D2Module`: the LightningModule training an `R2D2Net` with the R2D2 loss.

- The network is ``self.net``: the checkpoint's state_dict keys are ``net.<R2D2Net key>`` (nothing
  else: the ImageNet normalisation constants are non-persistent buffers, the loss has no state).
- ``checkpoint["delfi"]`` (added in `on_save_checkpoint`) follows the delfi checkpoint contract:
  ``format``, ``format_version``, ``family``, ``config`` (the network's R2D2Config fields),
  ``normalisation`` and ``provenance`` (data, seed, steps, delfi version, command, loss, and the
  whole training config); plain dicts / lists / str / numbers only (``torch.load(weights_only=True)``).
- Each step: both images of the pairs through the network (two passes, as the official
  ``train.py``), the loss with a `torch.Generator` seeded from ``(seed, global step, rank)`` (so
  the sampler's random positions depend on nothing else), and a **non-finite check**: a NaN / inf
  loss returns None (Lightning then skips backward and the optimiser step), non-finite gradients
  are dropped before the optimiser step (Adam skips parameters without gradient); both count in
  ``train/skipped_nan`` and warn. Under DDP the decision is taken by all ranks together.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from delfi.models.l2net import R2D2Net
from delfi.train.config import TrainConfig, config_dict, loss_config
from delfi.train.losses.r2d2 import R2D2Loss
from delfi.train.validation import IMAGENET_MEAN, IMAGENET_STD, THRESHOLDS, evaluate_pairs, pair_precisions, summarise, threshold_name

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "R2D2Module", "SkipNonFinite", "checkpoint_metadata", "network_config", "step_seed",
           "uses_channels_last"]

CHECKPOINT_FORMAT = "delfi-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the loss sampler's generator at a training step."""
    return int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def uses_channels_last(config: TrainConfig) -> bool:
    """Whether the network trains in channels-last layout: ``net.channels_last``, by default only
    with bf16 precision (measured on a 2-core AVX-512 / AMX CPU, batch 8 pairs of 192 px: bf16
    network forward + backward 9.3 s NCHW -> 7.5 s channels-last; float32 23.7 s NCHW -> 31.3 s)."""
    if config.net.channels_last is not None:
        return bool(config.net.channels_last)
    return str(config.trainer.precision).startswith("bf16")


def network_config(config: TrainConfig) -> dict[str, Any]:
    """The R2D2Config fields that define the network."""
    return {"model": "r2d2", "arch": config.net.arch.value, "mchan": int(config.net.mchan), "dim": int(config.net.dim)}


class SkipNonFinite:
    """Mixin of a LightningModule with ``self.net`` and a ``skipped_nan`` counter: a step whose
    loss (`_all_finite` in ``training_step``) or gradients are not finite is skipped and counted,
    with a warning; under DDP all ranks decide together."""

    skipped_nan: int

    def _all_finite(self, finite: bool) -> bool:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return finite
        return bool(trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _skip(self, why: str) -> None:
        self.skipped_nan += 1
        warnings.warn(f"training step {self.global_step}: {why}; the step is skipped "
                      f"({self.skipped_nan} skipped so far, logged as train/skipped_nan)", RuntimeWarning, stacklevel=2)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:
            return
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all().item())
        if not self._all_finite(finite):
            for p in self.net.parameters():
                p.grad = None
            self._skip("non-finite gradients")


class R2D2Module(SkipNonFinite, pl.LightningModule):
    """Trains ``self.net`` (`R2D2Net`) on batches of pairs (``image1``, ``image2`` in [0, 1], ``flow``,
    ``mask``); validates MMA on batches of (``image1``, ``image2``, ``homography``)."""

    def __init__(self, config: TrainConfig, provenance: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.provenance = dict(provenance or {})
        self.net = R2D2Net(config.net.arch.value, config.net.mchan, config.net.dim)
        from delfi.train.init import initialise_network, require_init_for_reinit

        require_init_for_reinit(config.net.init_from, config.net.reinit_heads)
        if config.net.init_from is not None:
            initialise_network(self.net, config.net.init_from, config.net.reinit_heads)
        self.channels_last = uses_channels_last(config)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.loss_fn = R2D2Loss(loss_config(config))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.skipped_nan = 0  # saved and restored by callbacks.RunState
        self.thresholds = tuple(sorted(set(THRESHOLDS) | {float(config.val.pixel_threshold)}))
        self.monitor = f"val/mma@{threshold_name(float(config.val.pixel_threshold))}"
        self.initial_metrics: dict[str, float] | None = None
        self.last_val: dict[str, float] | None = None
        self.last_loss: float | None = None
        self._val_rows: list = []

    # --- forward ---------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """[0, 1] RGB images (B, 3, H, W) -> the network's dense outputs."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.net(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)

    def loss_generator(self) -> torch.Generator:
        device = self.device if self.device.type in ("cuda", "cpu", "mps", "xpu") else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(step_seed(self.config.seed, self.global_step, self.global_rank))

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        out1, out2 = self(batch["image1"]), self(batch["image2"])
        return self.loss_fn(out1, out2, batch["flow"], batch["mask"], generator=self.loss_generator())

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int):
        losses = self.compute_loss(batch)
        total = losses["total"]
        finite = self._all_finite(bool(torch.isfinite(total.detach()).item()))
        batch_size = int(batch["image1"].shape[0])
        if not finite:
            self._skip(f"non-finite loss {float(total.detach()):.4g}")
            self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
            return None
        self.last_loss = float(total.detach())
        self.log("train/loss", total.detach(), batch_size=batch_size)
        for name in ("reliability", "repeatability", "peaky", "descriptor"):
            if name in losses:
                self.log(f"train/{name}", losses[name].detach(), batch_size=batch_size)
        self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
        return total

    def configure_optimizers(self):
        o, max_steps = self.config.optim, self.config.trainer.max_steps
        optimizer = torch.optim.Adam(self.net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        schedule = LearningRateSchedule(o.scheduler.value, o.warmup_steps, max_steps, o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # --- validation ------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        v = self.config.val
        datamodule = getattr(self.trainer, "datamodule", None)
        items = getattr(datamodule, "_val_items", None)
        if not (v.at_start and items and self.global_step == 0):
            return
        metrics = evaluate_pairs(self.net, items, v.top_k, v.reliability_threshold, v.repeatability_threshold,
                                 self.thresholds, v.batch_size, self.device)
        self.initial_metrics = metrics
        if self.logger is not None:
            self.logger.log_metrics({f"val/{k}": val for k, val in metrics.items()}, step=0)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        v = self.config.val
        out1, out2 = self(batch["image1"]), self(batch["image2"])
        self._val_rows.append(pair_precisions(out1, out2, batch["homography"], v.top_k, v.reliability_threshold,
                                              v.repeatability_threshold, self.thresholds))

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows:
            return
        rows = self._val_rows
        metrics = summarise(torch.cat([r["precisions"] for r in rows]), torch.cat([r["keypoints"] for r in rows]),
                            torch.cat([r["matches"] for r in rows]), self.thresholds)
        self.last_val = metrics
        for key, value in metrics.items():
            self.log(f"val/{key}", float(value), sync_dist=True, batch_size=1)
        self._val_rows = []

    # --- checkpoints -----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["delfi"] = checkpoint_metadata(self, "r2d2", network_config(self.config), "imagenet")


def checkpoint_metadata(module: pl.LightningModule, family: str, network: dict[str, Any], normalisation: str,
                        **provenance: Any) -> dict[str, Any]:
    """The ``checkpoint["delfi"]`` dict of a training module (``module.config`` / ``provenance`` /
    ``global_step``): the delfi checkpoint contract, with the whole training config in the
    provenance (what ``--resume`` reads); ``provenance`` adds method-specific entries."""
    from delfi import __version__

    full = config_dict(module.config)
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "family": family,
        "config": network,
        "normalisation": normalisation,
        "provenance": {
            "data": _plain(module.provenance.get("data", {})),
            "seed": int(module.config.seed),
            "steps": int(module.global_step),
            "delfi_version": str(__version__),
            "command": [str(a) for a in module.provenance.get("command", [])],
            **provenance,
            "loss": full["loss"],
            "train_config": full,
        },
    }


def _plain(value: Any) -> Any:
    """Plain Python containers and scalars only (paths and other objects become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class LearningRateSchedule:
    """Multiplier of the base learning rate at a step: linear warm-up, then constant / cosine /
    linear decay to ``min_ratio`` at ``max_steps``. A plain object (its state is its fields)."""

    def __init__(self, kind: str, warmup: int, max_steps: int, min_ratio: float) -> None:
        self.kind, self.warmup, self.max_steps, self.min_ratio = kind, warmup, max_steps, min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup)
        t = min(1.0, max(0.0, (step - self.warmup) / span))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if self.kind == "cosine" else 1 - t
        return self.min_ratio + (1 - self.min_ratio) * shape
