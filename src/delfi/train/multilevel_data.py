"""Training data of the multi-level stages: homography pairs of photos (``data.images``, exactly the
R2D2 trainer's `load_training_data`) or depth + pose pairs (``data.pairs``,
`delfi.datasets.depth_pairs.DepthPosePairs`); validation always on fixed homography pairs of
photos (``data.val_images``, or held out of ``data.images``; none when neither is given)."""

from __future__ import annotations

import warnings

from delfi.train.data import TrainingData, load_training_data
from delfi.train.multilevel_config import MultiLevelTrainConfig

__all__ = ["load_multilevel_data"]


class DepthTrainingData(TrainingData):
    """`TrainingData` whose training pairs come from depth maps and poses."""

    def provenance(self, config: MultiLevelTrainConfig) -> dict:
        out = super().provenance(config)
        out.update({"pairs": str(config.data.pairs), "scenes": len(self.train.scenes)})
        return out


def load_multilevel_data(config: MultiLevelTrainConfig) -> TrainingData:
    """The datasets of a multi-level run.

    Raises:
        ValueError: no usable images / pairs (the message says what was found).
    """
    d = config.data
    if not d.pairs:
        return load_training_data(config)
    from delfi.datasets.depth_pairs import DepthPosePairs

    train = DepthPosePairs(d.pairs, crop_size=d.crop_size, min_overlap=d.min_overlap, max_overlap=d.max_overlap,
                           max_scale_ratio=d.max_scale_ratio, pairs_per_scene=d.pairs_per_scene,
                           depth_tolerance=d.depth_tolerance, seed=config.seed)  # fmt: skip
    skipped = list(train.skipped)
    val = None
    photos = d.val_images or d.images
    if photos and config.val.pairs > 0:
        from delfi.datasets.homography_pairs import HomographyPairs
        from delfi.train.config import pair_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                val = HomographyPairs(photos, pair_config(config, config.val.crop_size), seed=config.val.seed)
            except ValueError as exc:
                raise ValueError(f"validation images: {exc}") from None
        skipped += val.skipped  # with --pairs, every photo of --images (or --val-images) validates
    return DepthTrainingData(train, val, skipped, held_out=False)
