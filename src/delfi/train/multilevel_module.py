"""`MultiLevelModule`: the LightningModule of both multi-level stages (`multilevel_config`).

- The network is ``self.net`` (`MultiLevelNet`): checkpoint keys ``net.<key>``; the backbone is
  frozen in both stages. Stage 1 (``multilevel-encoder``) trains the encoders / decoders, stage 2
  (``multilevel``) the attention heads; the other heads get no gradient (``requires_grad`` off, and
  the optimiser holds only the trainable parameters).
- ``checkpoint["delfi"]`` follows the delfi checkpoint contract (family ``multilevel``), so
  ``delfi extract --preset multilevel --weights runs/x/best.ckpt`` loads a training checkpoint.
- Each step: both images of the pairs through the network, `MultiLevelLoss` on the cells'
  correspondences (from the pairs' flow, at the grid's receptive-field centres); non-finite losses
  or gradients skip the step (`SkipNonFinite`).
- Validation: MMA of the extractor's own keypoints (`MultiLevel.extract` on the training network:
  NMS, refinement, ``val.score_threshold``, every level) on fixed homography pairs, mutual nearest
  neighbours, errors through the pair's homography; ``best.ckpt`` follows ``val/mma@3``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from delfi.models.multilevel_net import MultiLevelNet
from delfi.train.module import LearningRateSchedule, SkipNonFinite, checkpoint_metadata
from delfi.train.multilevel_config import MultiLevelTrainConfig
from delfi.train.validation import IMAGENET_MEAN, IMAGENET_STD, THRESHOLDS, summarise, threshold_name

__all__ = ["MultiLevelModule", "evaluate_extractor_pairs", "uses_channels_last"]


def uses_channels_last(config: MultiLevelTrainConfig) -> bool:
    if config.net.channels_last is not None:
        return bool(config.net.channels_last)
    return str(config.trainer.precision).startswith("bf16")


class MultiLevelModule(SkipNonFinite, pl.LightningModule):
    """Trains the encoders (stage 1) or the attention heads (stage 2) of ``self.net``."""

    def __init__(self, config: MultiLevelTrainConfig, provenance: dict[str, Any] | None = None) -> None:
        super().__init__()
        from delfi.train.landmark_init import load_backbone_weights, load_matching_tensors
        from delfi.train.losses.multilevel import MultiLevelLoss, MultiLevelLossConfig

        self.config = config
        self.provenance = dict(provenance or {})
        n = config.net
        self.net = MultiLevelNet(n.depth, n.stride_in, n.code_dim, n.first_stride1)
        self.init_reports = []
        if n.backbone_weights:
            self.init_reports.append(load_backbone_weights(self.net, n.backbone_weights))
        if n.init_from:
            self.init_reports.append(load_matching_tensors(self.net, n.init_from))
        self.stage = "encoders" if config.method == "multilevel-encoder" else "attention"
        self.net.encoders.requires_grad_(self.stage == "encoders")
        self.net.attentions.requires_grad_(self.stage == "attention")
        self.channels_last = uses_channels_last(config)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        loss = {k: getattr(config.loss, k) for k in config.loss.__dataclass_fields__}
        self.loss_fn = MultiLevelLoss(MultiLevelLossConfig(**loss))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.skipped_nan = 0
        self.thresholds = tuple(sorted(set(THRESHOLDS) | {float(config.val.pixel_threshold)}))
        self.monitor = f"val/mma@{threshold_name(float(config.val.pixel_threshold))}"
        self.initial_metrics: dict[str, float] | None = None
        self.last_val: dict[str, float] | None = None
        self._val_items: list = []

    # --- forward / loss ---------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """[0, 1] RGB images (B, 3, H, W) -> the network's maps (reconstructions in stage 1 only)."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return self.net(x, reconstruct=self.stage == "encoders")

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        grid = self.net.grid_field
        offset = -grid.padding + (grid.size - 1) / 2
        return self.loss_fn(self(batch["image1"]), self(batch["image2"]), batch["flow"], batch["mask"], grid.stride,
                            offset=offset)

    def training_step(self, batch: dict, batch_idx: int):
        losses = self.compute_loss(batch)
        total = losses["total"]
        batch_size = int(batch["image1"].shape[0])
        if not self._all_finite(bool(torch.isfinite(total.detach()).item())):
            self._skip(f"non-finite loss {float(total.detach()):.4g}")
            self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
            return None
        self.log("train/loss", total.detach(), batch_size=batch_size)
        for name in ("reconstruction", "triplet", "distinctiveness", "peaky", "pairs"):
            if name in losses:
                self.log(f"train/{name}", torch.as_tensor(losses[name]).detach().float(), batch_size=batch_size)
        self.log("train/skipped_nan", float(self.skipped_nan), batch_size=batch_size)
        return total

    def configure_optimizers(self):
        o, max_steps = self.config.optim, self.config.trainer.max_steps
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        schedule = LearningRateSchedule(o.scheduler.value, o.warmup_steps, max_steps, o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # --- validation -------------------------------------------------------------------------------

    def extractor(self):
        """A `MultiLevel` extractor on the training network (validation settings)."""
        from delfi.models.multilevel import MultiLevel, MultiLevelConfig

        v, n = self.config.val, self.config.net
        config = MultiLevelConfig(depth=n.depth, stride_in=n.stride_in, code_dim=n.code_dim, first_stride1=n.first_stride1,
                                  channels_last=self.channels_last, max_image_size=0, score_threshold=v.score_threshold,
                                  top_k=v.top_k)  # fmt: skip
        return MultiLevel(config, network=self.net)

    def validate_items(self, items: list[dict]) -> dict[str, float]:
        return evaluate_extractor_pairs(self.extractor(), items, self.thresholds)

    def on_train_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        items = getattr(datamodule, "_val_items", None)
        if not (self.config.val.at_start and items and self.global_step == 0):
            return
        self.initial_metrics = self.validate_items(items)
        if self.logger is not None:
            self.logger.log_metrics({f"val/{k}": v for k, v in self.initial_metrics.items()}, step=0)

    def on_validation_epoch_start(self) -> None:
        self._val_items = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for b in range(batch["image1"].shape[0]):
            self._val_items.append({k: batch[k][b] for k in ("image1", "image2", "homography")})

    def on_validation_epoch_end(self) -> None:
        if not self._val_items:
            return
        metrics = self.validate_items(self._val_items)
        self.last_val = metrics
        for key, value in metrics.items():
            self.log(f"val/{key}", float(value), sync_dist=True, batch_size=1)
        self._val_items = []

    # --- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["delfi"] = checkpoint_metadata(self, "multilevel", self.config.extractor_settings(), "imagenet",
                                                  stage=self.stage)


def evaluate_extractor_pairs(extractor, items: list[dict], thresholds=THRESHOLDS) -> dict[str, float]:
    """MMA of an extractor's keypoints on pair dicts (``image1``, ``image2`` (3, S, S) in [0, 1],
    ``homography`` crop 1 -> crop 2): mutual nearest neighbours, a match correct when image 1's
    keypoint, mapped by the homography, lies within t px of its partner; a pair without matches
    scores 0. Returns ``{"mma@1": ..., "keypoints": ..., "matches": ...}`` (`summarise`)."""
    from delfi.eval.hpatches import pair_errors
    from delfi.match.nn import mutual_nn

    precisions = torch.zeros(len(items), len(thresholds), dtype=torch.float64)
    keypoints = torch.zeros(len(items), 2, dtype=torch.float64)
    matches = torch.zeros(len(items), dtype=torch.float64)
    for i, item in enumerate(items):
        f1, f2 = extractor.extract(item["image1"].float().cpu()), extractor.extract(item["image2"].float().cpu())
        keypoints[i] = torch.tensor([len(f1.keypoints), len(f2.keypoints)], dtype=torch.float64)
        pairs = mutual_nn(f1.descriptors, f2.descriptors).indices if len(f1.keypoints) and len(f2.keypoints) else None
        if pairs is None or len(pairs) == 0:
            continue
        matches[i] = len(pairs)
        error = torch.from_numpy(pair_errors(f1.keypoints, f2.keypoints, pairs, torch.as_tensor(item["homography"]).cpu()))
        for t, threshold in enumerate(thresholds):
            precisions[i, t] = (error <= threshold).double().mean()
    return summarise(precisions, keypoints, matches, thresholds)
