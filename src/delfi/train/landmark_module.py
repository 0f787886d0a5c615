"""`LandmarkModule`: the LightningModule training DELF (finetune, keypoint), DELG and DELG-VPR.

- ``self.net`` is the family's extraction network (`DELFNet` / `DELGNet`): the checkpoint's
  ``net.*`` tensors are what ``delfi extract --weights`` loads; ``self.heads`` holds the training-only
  classifiers (``heads.*``, ignored by extraction).
- Losses per method (``loss.*`` weights; CE = softmax cross-entropy):

  ``delf-finetune``  CE(linear(mean_hw layer3))                       backbone + classifier train
  ``delf-keypoint``  CE(linear(attention-pooled layer3))              attention + classifier train;
                     the backbone is frozen (batch norm in eval mode, no gradient) and each batch is
                     rescaled by one random gamma factor (``data.gamma_scaling``)
  ``delg``           global_weight x CE(ArcFace(GeM + whitening of layer4))
                     + attention_weight x CE(linear(attention-pooled reconstruction))
                     + reconstruction_weight x MSE(reconstruction, stop-gradient layer3)
  ``vpr``            as delg with one global and one attention classifier per group (the batch's
                     group); ``vpr.only_local``: no global term, backbone and global head frozen.
- ``checkpoint["delfi"]`` follows the delfi checkpoint contract (family, network architecture,
  normalisation, provenance with the whole training config), so `load_checkpoint` reads a run's
  ``best.ckpt`` / ``last.ckpt`` as weights.
- A non-finite loss skips the step (counted in ``train/skipped_nan``); unreadable images replaced by
  the data pipeline are reported once each (``train/skipped_images``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from delfi.models.heads import ArcFaceHead, CosFaceHead, CosineSoftmax, LinearClassifier
from delfi.models.networks import DELFNet, DELGNet
from delfi.models.resnet import NORMALISATION
from delfi.train.landmark_config import LandmarkTrainConfig

__all__ = ["LandmarkModule", "LandmarkSchedule", "landmark_network_config"]


def _classifier(kind: str, in_dim: int, classes: int, loss) -> nn.Module:
    if kind == "arcface":
        return ArcFaceHead(in_dim, classes, margin=loss.margin, scale=loss.scale, margin_rule=loss.margin_rule)
    if kind == "cosface":
        return CosFaceHead(in_dim, classes, margin=loss.margin, scale=loss.scale)
    if kind == "cosine":
        return CosineSoftmax(in_dim, classes, scale=loss.scale)
    return LinearClassifier(in_dim, classes)


def landmark_network_config(config: LandmarkTrainConfig, net: nn.Module) -> dict[str, Any]:
    """The extractor-config keys that rebuild ``net`` (what the checkpoint stores)."""
    out = {"model": config.family, **net.architecture()}
    if isinstance(net, DELGNet):
        out["gem_p"] = float(net.gem.p.detach())
    return out


class LandmarkSchedule:
    """Multiplier of the base learning rate at a step: linear warm-up, then constant, cosine or
    linear decay to ``min_ratio`` at ``max_steps``, or x ``gamma`` every ``every`` steps."""

    def __init__(self, kind: str, warmup: int, max_steps: int, min_ratio: float, every: int = 0, gamma: float = 0.5) -> None:
        self.kind, self.warmup, self.max_steps, self.min_ratio = kind, warmup, max_steps, min_ratio
        self.every, self.gamma = every, gamma

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** ((step - self.warmup) // max(1, self.every))
        t = min(1.0, max(0.0, (step - self.warmup) / max(1, self.max_steps - self.warmup)))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if self.kind == "cosine" else 1 - t
        return self.min_ratio + (1 - self.min_ratio) * shape


class LandmarkModule(pl.LightningModule):
    """Trains ``self.net`` on batches of (``image`` [0, 1] RGB (B, 3, S, S), ``label``, ``group``);
    validates on held-out images (accuracy, leave-one-out mAP) or vpr database + queries (recall@N)."""

    def __init__(self, config: LandmarkTrainConfig, num_classes: list[int], provenance: dict[str, Any] | None = None,
                 val_utm: np.ndarray | None = None) -> None:
        super().__init__()
        self.config, self.method = config, config.method
        self.provenance = dict(provenance or {})
        self.num_classes = [int(k) for k in num_classes]
        n = config.net
        common = dict(depth=n.depth, stride_in=n.stride_in, attention_batch_norm=n.attention_batch_norm, pool=n.attention_pool)
        if config.family == "delf":
            self.net: DELFNet = DELFNet(**common)
        else:
            self.net = DELGNet(**common, autoencoder=n.autoencoder, local_dim=n.local_dim, global_dim=n.global_dim,
                               gem_p=n.gem_p, gem_learnable=n.gem_learnable)  # fmt: skip
        self.init_reports = []
        from delfi.train.landmark_init import load_backbone_weights, load_matching_tensors

        if n.backbone_weights:
            self.init_reports.append(load_backbone_weights(self.net, n.backbone_weights))
        if n.init_from:
            self.init_reports.append(load_matching_tensors(self.net, n.init_from))
        self.heads = self._build_heads()
        self._freeze()
        self.channels_last = n.channels_last if n.channels_last is not None else str(config.trainer.precision).startswith("bf16")
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.normalise = NORMALISATION[n.normalisation]
        self.val_utm = val_utm
        self.monitor, self.monitor_mode = self._monitor()
        self.skipped_nan = 0  # saved and restored by callbacks.RunState
        self.reported_images: set[str] = set()
        self.initial_metrics: dict[str, float] | None = None
        self.last_val: dict[str, float] | None = None
        self.last_loss: float | None = None
        self._val_rows: list[dict[str, torch.Tensor]] = []
        self._active_group: int | None = None

    # --- structure -------------------------------------------------------------------------------

    def _build_heads(self) -> nn.ModuleDict:
        lo, m = self.config.loss, self.method
        attention = lambda k: _classifier(lo.attention_classifier, 1024, k, lo)  # noqa: E731
        if m == "delf-finetune":
            return nn.ModuleDict({"classifier": _classifier(lo.classifier, 1024, self.num_classes[0], lo)})
        if m == "delf-keypoint":
            return nn.ModuleDict({"attention": attention(self.num_classes[0])})
        dim = self.net.global_dim
        return nn.ModuleDict({
            "global": nn.ModuleList([_classifier(lo.classifier, dim, k, lo) for k in self.num_classes]),
            "attention": nn.ModuleList([attention(k) for k in self.num_classes]),
        })  # fmt: skip

    def frozen_modules(self) -> list[nn.Module]:
        """The parts of ``net`` this method does not train."""
        net, m = self.net, self.method
        if m == "delf-finetune":
            return [net.attention]
        if m == "delf-keypoint":
            return [net.backbone]
        if m == "vpr" and self.config.vpr.only_local:
            return [net.backbone, net.gem, net.whitening, self.heads["global"]]
        return []

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if self.method in ("delf-keypoint",) or (self.method == "vpr" and self.config.vpr.only_local):
            self.net.backbone.freeze_bn(True)  # BN statistics too (the setting survives .train())

    def _monitor(self) -> tuple[str, str]:
        if self.method == "vpr":
            return ("val/reconstruction", "min") if self.config.vpr.only_local else ("val/recall@1", "max")
        return ("val/map", "max") if self.method == "delg" else ("val/accuracy", "max")

    def use_validation_labels(self, labels: np.ndarray | None) -> None:
        """DELG monitors ``val/map`` only when some class has two held-out images (else accuracy)."""
        if self.method == "delg" and labels is not None and (np.bincount(np.asarray(labels)) < 2).all():
            self.monitor = "val/accuracy"

    # --- forward ---------------------------------------------------------------------------------

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def gamma_scale(self, images: torch.Tensor) -> torch.Tensor:
        """DELF's random gamma scaling: the batch rescaled by one factor drawn from ``(seed, step)``."""
        g = self.config.data.gamma_scaling
        if g is None:
            return images
        from delfi.train.augment import gamma_scale_factor, scale_batch

        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, int(self.global_step), 0x6A77]))
        return scale_batch(images, gamma_scale_factor(rng, float(g[0]), float(g[1])), multiple=16)

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's tensors for (B, 3, H, W) [0, 1] images: ``pooled`` / ``attended``, ``global``,
        ``features``, ``reconstruction`` as the method uses them."""
        x = self.prepare(images)
        if self.method == "delf-finetune":
            features = self.net.layer3(self.net.forward_features(x, ("layer3",)))
            return {"features": features, "pooled": features.float().mean(dim=(2, 3))}
        if self.method == "delf-keypoint":
            with torch.no_grad():
                features = self.net.layer3(self.net.forward_features(x, ("layer3",)))
            return {"features": features, **self.net.attend(features)}
        if self.method == "vpr" and self.config.vpr.only_local:
            with torch.no_grad():
                maps = self.net.forward_features(x, ("layer3", "layer4"))
                glob = self.net.global_descriptor(maps["layer4"])
            features = self.net.layer3(maps)
            code, reconstruction, attended_map = self.net.local_branch(features)
            out = {"features": features, "local": code, "global": glob, **self.net.attend(attended_map)}
            if reconstruction is not None:
                out["reconstruction"] = reconstruction
            return out
        return self.net(x)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        lo = self.config.loss
        images = self.gamma_scale(batch["image"]) if self.training else batch["image"]
        labels = batch["label"].long()
        out = self.outputs(images)
        ce = lambda logits: F.cross_entropy(logits.float(), labels, label_smoothing=lo.label_smoothing)  # noqa: E731
        if self.method == "delf-finetune":
            logits = self.heads["classifier"](out["pooled"], labels)
            return {"total": ce(logits), "classification": ce(logits), "logits": logits.detach()}
        if self.method == "delf-keypoint":
            logits = self.heads["attention"](out["attended"].float())
            return {"total": ce(logits), "attention": ce(logits), "logits": logits.detach()}
        group = int(batch["group"][0]) if "group" in batch else 0
        self.activate_group(group)
        attention_logits = self.heads["attention"][group](out["attended"].float())
        parts = {"attention": ce(attention_logits)}
        total = lo.attention_weight * parts["attention"]
        if "reconstruction" in out:
            parts["reconstruction"] = F.mse_loss(out["reconstruction"].float(), out["features"].detach().float())
            total = total + lo.reconstruction_weight * parts["reconstruction"]
        logits = attention_logits.detach()
        if not (self.method == "vpr" and self.config.vpr.only_local):
            global_logits = self.heads["global"][group](out["global"].float(), labels)
            parts["global"] = ce(global_logits)
            total = total + lo.global_weight * parts["global"]
            logits = self.heads["global"][group](out["global"].detach().float()).detach()  # accuracy without margin
        return {"total": total, **parts, "logits": logits}

    # --- place-recognition groups ----------------------------------------------------------------

    def activate_group(self, group: int) -> None:
        """Keep only the active group's classifiers on the accelerator (CosPlace); a no-op on the CPU
        and under DDP (whose parameters must stay on one device)."""
        if self.method != "vpr" or group == self._active_group:
            return
        self._active_group = group
        trainer = getattr(self, "_trainer", None)
        if self.device.type == "cpu" or (trainer is not None and trainer.world_size > 1):
            return
        optimizer = trainer.optimizers[0] if trainer is not None and trainer.optimizers else None
        for kind in ("global", "attention"):
            for k, head in enumerate(self.heads[kind]):
                target = self.device if k == group else torch.device("cpu")
                head.to(target)
                if optimizer is not None:
                    for p in head.parameters():
                        for key, value in optimizer.state.get(p, {}).items():
                            if torch.is_tensor(value) and value.dim() > 0:
                                optimizer.state[p][key] = value.to(target)

    # --- training --------------------------------------------------------------------------------

    def report_skipped(self, batch: dict[str, Any]) -> None:
        for entry in batch.get("skipped", []) or []:
            for line in str(entry).splitlines():
                path, _, reason = line.partition("\t")
                if path and path not in self.reported_images:
                    self.reported_images.add(path)
                    warnings.warn(f"{path}: unreadable image skipped ({reason})", RuntimeWarning, stacklevel=2)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        self.report_skipped(batch)
        losses = self.losses(batch)
        total = losses["total"]
        batch_size = int(batch["image"].shape[0])
        finite = bool(torch.isfinite(total.detach()).item())
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
        self.log("train/skipped_images", float(len(self.reported_images)), batch_size=batch_size)
        if not finite:
            self.skipped_nan += 1
            warnings.warn(f"training step {self.global_step}: non-finite loss; the step is skipped", RuntimeWarning, stacklevel=2)
            self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
            return None
        self.last_loss = float(total.detach())
        self.log("train/loss", total.detach(), batch_size=batch_size)
        for name in ("classification", "global", "attention", "reconstruction"):
            if name in losses:
                self.log(f"train/{name}", losses[name].detach(), batch_size=batch_size)
        accuracy = (losses["logits"].argmax(dim=1) == batch["label"].long()).float().mean()
        self.log("train/accuracy", accuracy, batch_size=batch_size)
        self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
        return total

    def configure_optimizers(self):
        o = self.config.optim
        net_params = [p for p in self.net.parameters() if p.requires_grad]
        head_params = [p for p in self.heads.parameters() if p.requires_grad]
        groups = [g for g in ({"params": net_params, "lr": o.lr}, {"params": head_params, "lr": o.head_lr or o.lr}) if g["params"]]
        if o.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                                        weight_decay=o.weight_decay)  # fmt: skip
        else:
            cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
            optimizer = cls(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        schedule = LandmarkSchedule(o.scheduler.value, o.warmup_steps, self.config.trainer.max_steps, o.min_lr_ratio,
                                    o.step_every, o.step_gamma)  # fmt: skip
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # --- validation ------------------------------------------------------------------------------

    def val_rows(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per image: the descriptor validated on, the predicted class, the reconstruction error,
        whether the image was readable (``valid``)."""
        self.report_skipped(batch)
        out = self.outputs(batch["image"])
        row: dict[str, torch.Tensor] = {"label": batch["label"].cpu(), "kind": batch.get("kind", batch["label"] * 0).cpu(),
                                        "valid": batch.get("valid", torch.ones_like(batch["label"], dtype=torch.bool)).cpu()}
        if self.method == "delf-finetune":
            row["descriptor"] = out["pooled"].float().cpu()
            row["predicted"] = self.heads["classifier"](out["pooled"].float()).argmax(1).cpu()
        elif self.method == "delf-keypoint":
            row["descriptor"] = out["attended"].float().cpu()
            row["predicted"] = self.heads["attention"](out["attended"].float()).argmax(1).cpu()
        else:
            row["descriptor"] = out["global"].float().cpu()
            if self.method == "delg":
                row["predicted"] = self.heads["global"][0](out["global"].float()).argmax(1).cpu()
            if "reconstruction" in out:
                error = (out["reconstruction"].float() - out["features"].float()).pow(2).mean(dim=(1, 2, 3))
                row["reconstruction"] = error.cpu()
        return row

    def val_metrics(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        from delfi.train.landmark_validation import leave_one_out_map, place_recalls

        cat = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        valid = cat.pop("valid").bool()  # unreadable validation images (reported once) are left out
        cat = {k: v[valid] for k, v in cat.items()}
        metrics: dict[str, float] = {}
        if "reconstruction" in cat:
            metrics["reconstruction"] = float(cat["reconstruction"].mean())
        if self.method == "vpr":
            if self.val_utm is not None:
                utm = self.val_utm[valid.numpy()]
                metrics.update(place_recalls(cat["descriptor"], cat["kind"], utm, self.config.val.recall_radius))
            return metrics
        metrics["accuracy"] = float((cat["predicted"] == cat["label"]).float().mean())
        value = leave_one_out_map(cat["descriptor"], cat["label"])
        if math.isfinite(value):
            metrics["map"] = value
        return metrics

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float] | None:
        """Validation metrics of the current network on ``loader`` (eval mode, restored after)."""
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            rows = [self.val_rows(self._to_device(batch)) for batch in loader]
        finally:
            for m, mode in modes.items():
                m.training = mode
        return self.val_metrics(rows) if rows else None

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def on_train_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not (self.config.val.at_start and datamodule is not None and datamodule.data.val is not None and self.global_step == 0):
            return
        with self.trainer.precision_plugin.forward_context():
            metrics = self.evaluate(datamodule.val_dataloader())
        if metrics:
            self.initial_metrics = metrics
            if self.logger is not None:
                self.logger.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=0)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_rows.append(self.val_rows(batch))

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows:
            return
        metrics = self.val_metrics(self._val_rows)
        self.last_val = metrics
        for key, value in metrics.items():
            self.log(f"val/{key}", float(value), sync_dist=True, batch_size=1)
        self._val_rows = []

    # --- checkpoints -----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from delfi.train.module import checkpoint_metadata

        checkpoint["delfi"] = checkpoint_metadata(self, self.config.family, landmark_network_config(self.config, self.net),
                                                  self.config.net.normalisation, method=self.method,
                                                  classes=list(self.num_classes))
