"""Training data of the landmark methods: labelled images (class folders, GLDv2 csv) and
place-recognition groups, with the references' augmentations, resumable and rank-aware.

**Items** (default collation works):
    ``image``    (3, S, S) float32 RGB in [0, 1] (S = ``data.image_size``; validation: ``val.image_size``)
    ``label``    int64 class index (vpr: within the item's group)
    ``group``    int64 the vpr group (0 otherwise)
    ``index``    int64 the item index
    ``skipped``  str: ``"path\\treason"`` lines of unreadable images this item replaced ("" if none)

**Unreadable images** never stop a run: an item whose image cannot be decoded is replaced by the
next readable one (index + 1, ...); the failures travel with the batch, and the module reports each
file once (a warning and ``train/skipped_images``).

**Randomness**: item ``(epoch, index)`` draws from ``SeedSequence([seed, epoch, index])``, the order
from `delfi.train.data.ResumableSampler` (or, with ``data.balanced``, a draw with probability
1 / class size from ``SeedSequence([seed, epoch])``), so a resumed run sees the same batches.

**vpr**: epoch ``e`` trains group ``e mod G`` and lasts ``vpr.steps_per_group`` batches (CosPlace's
epochs); its items are classes of the group drawn uniformly (item slot ``i`` -> class ``i mod K``,
slots permuted by the sampler), each with one image of the class drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from delfi.train.data import EpochItems, ResumableSampler
from delfi.train.landmark_config import LandmarkTrainConfig

__all__ = ["BalancedSampler", "GroupImages", "LabelledImages", "LandmarkData", "LandmarkDataModule",
           "ValImages", "load_landmark_data"]

MAX_REPLACEMENTS = 16


def _decode(path: Path, min_side: int) -> torch.Tensor:
    """(3, h, w) in [0, 1], decoded at a reduced size when the file is much larger than needed."""
    from delfi.io.images import decode_image

    def target(width: int, height: int):
        factor = min_side / max(1, min(width, height))
        return (max(1, round(width * factor)), max(1, round(height * factor))) if factor < 1 else None

    return decode_image(path, target).image


def augment_image(image: torch.Tensor, config: LandmarkTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """(3, h, w) -> (3, S, S): the training augmentation of ``data.augment`` (+ flip), drawn from ``rng``."""
    from delfi.train import augment

    d = config.data
    if d.augment == "resized-crop":
        out = augment.random_resized_crop(image, d.image_size, rng, area=tuple(d.area), aspect=tuple(d.aspect))
    elif d.augment == "resize-crop":
        out = augment.resize_random_crop(image, d.resize, d.image_size, rng)
    else:
        out = augment.resize_image(image, d.image_size, d.image_size)  # the aspect ratio is not kept
    return augment.random_flip(out, rng) if d.flip else out


class _ReadsImages(Dataset):
    """Shared: decoding with replacement of unreadable images."""

    paths: list[Path]

    def _read(self, candidates: list[int], min_side: int) -> tuple[int, torch.Tensor, list[str]]:
        """(index read, image, failures): the first readable of ``candidates`` (at most
        `MAX_REPLACEMENTS` tried)."""
        from delfi.io.images import ImageError

        failures: list[str] = []
        for i in candidates[:MAX_REPLACEMENTS]:
            try:
                return i, _decode(self.paths[i], min_side), failures
            except ImageError as exc:
                failures.append(f"{self.paths[i]}\t{exc.reason}")
            except OSError as exc:  # a file that vanished, an I/O error
                failures.append(f"{self.paths[i]}\t{exc.strerror or exc}")
        raise RuntimeError(f"{len(failures)} unreadable images in a row: " + "; ".join(failures))

    def _following(self, index: int) -> list[int]:
        return [(index + k) % len(self.paths) for k in range(min(MAX_REPLACEMENTS, len(self.paths)))]


class LabelledImages(_ReadsImages):
    """Training items of labelled images, augmented per ``data`` (see the module docstring)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, config: LandmarkTrainConfig) -> None:
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.config, self.epoch = config, 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        d = self.config.data
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, self.epoch, int(index)]))
        side = max(d.image_size, d.resize if d.augment == "resize-crop" else d.image_size)
        i, image, failures = self._read(self._following(int(index)), side)
        return {"image": augment_image(image, self.config, rng).contiguous(), "label": int(self.labels[i]), "group": 0,
                "index": int(index), "skipped": "\n".join(failures)}  # fmt: skip


class GroupImages(_ReadsImages):
    """vpr training items: epoch ``e`` draws classes of group ``e mod G`` (module docstring)."""

    def __init__(self, groups: list, config: LandmarkTrainConfig) -> None:
        self.groups, self.config, self.epoch = groups, config, 0
        self.paths = [p for g in groups for p in g.paths]
        offsets = np.cumsum([0] + [len(g.paths) for g in groups])
        self.offsets = offsets
        self.members = []  # per group, per class: the indices into self.paths
        for g, start in zip(groups, offsets[:-1]):
            labels = np.asarray(g.labels)
            self.members.append([start + np.flatnonzero(labels == c) for c in range(g.num_classes)])
        self.labels = np.concatenate([np.asarray(g.labels, dtype=np.int64) for g in groups])
        self.length = config.vpr.steps_per_group * config.data.batch_size

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def group(self) -> int:
        return self.epoch % len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        d = self.config.data
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, self.epoch, int(index)]))
        g = self.group
        members = self.members[g][int(index) % len(self.members[g])]
        start = int(rng.integers(len(members)))
        same_class = [int(members[(start + k) % len(members)]) for k in range(min(len(members), MAX_REPLACEMENTS))]
        taken = set(same_class)
        others = list(islice((i for i in range(self.offsets[g], self.offsets[g + 1]) if i not in taken), MAX_REPLACEMENTS))
        i, image, failures = self._read(same_class + others, max(d.image_size, d.resize))  # stays in the group
        return {"image": augment_image(image, self.config, rng).contiguous(), "label": int(self.labels[i]), "group": g, "index": int(index),
                "skipped": "\n".join(failures)}  # fmt: skip


class ValImages(_ReadsImages):
    """Validation items: each image resized to ``val.image_size`` square (aspect not kept), no
    randomness; ``kind`` 0 (database / held-out image) or 1 (vpr query)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int, kinds: np.ndarray | None = None) -> None:
        self.paths, self.labels, self.size = list(paths), np.asarray(labels, dtype=np.int64), int(size)
        self.kinds = np.zeros(len(self.paths), dtype=np.int64) if kinds is None else np.asarray(kinds, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from delfi.io.images import ImageError
        from delfi.train.augment import resize_image

        try:
            image, failure = resize_image(_decode(self.paths[index], self.size), self.size, self.size), ""
        except (ImageError, OSError) as exc:
            image, failure = torch.zeros(3, self.size, self.size), f"{self.paths[index]}\t{exc}"
        return {"image": image.contiguous(), "label": int(self.labels[index]), "kind": int(self.kinds[index]),
                "index": int(index), "valid": failure == "", "skipped": failure}  # fmt: skip


class BalancedSampler(ResumableSampler):
    """`ResumableSampler` whose epoch is a draw (with replacement) with probability 1 / class size."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 consumed=None) -> None:
        from delfi.datasets.landmarks import class_balanced_weights

        super().__init__(len(labels), batch_size, seed, num_replicas, rank, consumed=consumed)
        self.weights = class_balanced_weights(np.asarray(labels))

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0xBA1]))
        order = rng.choice(self.length, size=self.total, replace=True, p=self.weights)
        return order[self.rank :: self.num_replicas]


@dataclass
class LandmarkData:
    """The datasets of a run: training items, validation items, class counts, what was left out."""

    train: Dataset
    val: ValImages | None
    num_classes: list[int]  # one entry per classifier (vpr: per group)
    train_count: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    utm: np.ndarray | None = None  # vpr validation: (N, 2) UTM of the val items
    labels: np.ndarray | None = None  # classification training labels (balanced sampling)
    class_names: list[str] = field(default_factory=list)

    def provenance(self, config: LandmarkTrainConfig) -> dict[str, Any]:
        return {"source": self.source, "images": self.train_count, "classes": list(self.num_classes),
                "val_images": len(self.val) if self.val is not None else 0, "skipped": len(self.skipped)}  # fmt: skip


def _classification_data(config: LandmarkTrainConfig) -> LandmarkData:
    from delfi.datasets.landmarks import gldv2_csv, landmark_folders, split_samples

    d = config.data
    if d.folder is not None and d.csv is not None:
        raise ValueError("give either --data (class folders) or --csv (a GLDv2 list), not both")
    if d.folder is not None:
        samples = landmark_folders(d.folder, d.min_images_per_class)
    elif d.csv is not None:
        if d.images is None:
            raise ValueError(f"--csv {d.csv}: give --images, the folder of its images (GLDv2 layout a/b/c/<id>.jpg)")
        samples = gldv2_csv(d.csv, d.images, d.min_images_per_class)
    else:
        raise ValueError("no training images: give --data (one folder per class) or --csv with --images")
    if samples.num_classes < 2:
        raise ValueError(f"{samples.source}: {samples.num_classes} class with images; a classifier needs at least 2")
    skipped = list(samples.skipped)
    if d.val_folder is not None:
        train, val = samples, _matched_validation(d.val_folder, samples.classes, skipped) if config.val.enabled else samples.subset(np.zeros(0, dtype=np.int64))
    else:
        train, val = split_samples(samples, d.val_fraction if config.val.enabled else 0.0)
    val_items = None
    if len(val) >= 2:
        keep = np.arange(min(len(val), config.val.max_images))
        part = val.subset(keep)
        val_items = ValImages(part.paths, part.labels, config.val.image_size)
    return LandmarkData(train=LabelledImages(train.paths, train.labels, config), val=val_items,
                        num_classes=[samples.num_classes], train_count=len(train), skipped=skipped,
                        source=samples.source, labels=np.asarray(train.labels), class_names=list(samples.classes))  # fmt: skip


def _matched_validation(folder: str, classes: list[str], skipped: list[tuple[str, str]]):
    """The class folders of ``folder`` as validation samples labelled like the training classes;
    images of classes the training data lacks are reported in ``skipped`` and left out."""
    from delfi.datasets.landmarks import LandmarkSamples, landmark_folders

    found = landmark_folders(folder)
    index = {name: i for i, name in enumerate(classes)}
    keep = [i for i, label in enumerate(found.labels) if found.classes[label] in index]
    for label in sorted(set(found.labels.tolist())):
        if found.classes[label] not in index:
            skipped.append((f"{folder}/{found.classes[label]}", "validation class not among the training classes"))
    labels = np.array([index[found.classes[found.labels[i]]] for i in keep], dtype=np.int64)
    return LandmarkSamples([found.paths[i] for i in keep], labels, list(classes), found.source)


def _vpr_data(config: LandmarkTrainConfig) -> LandmarkData:
    from delfi.datasets.vpr import list_split, utm_array
    from delfi.datasets.vpr_groups import GroupSettings, list_train_images, place_groups

    d, v = config.data, config.vpr
    if d.root is None:
        raise ValueError("no training images: give --root, a place-recognition folder with train/ (and val/database, val/queries)")
    root = Path(d.root)
    if not (root / "train").is_dir():
        raise ValueError(f"--root {root}: no train/ folder (expected train/, val/database/, val/queries/ as sf-xs)")
    paths = list_train_images(root / "train")
    settings = GroupSettings(cell_size=v.cell_size, heading_bin=v.heading_bin, cells_apart=v.cells_apart,
                             bins_apart=v.bins_apart, groups=v.groups, min_images_per_class=v.min_images_per_class)  # fmt: skip
    groups = place_groups(paths, settings)
    val_items, utm = None, None
    if config.val.enabled and (root / "val").is_dir():
        database, queries = list_split(root, "val")
        queries = queries[: config.val.max_images]
        if database and queries:
            all_paths = list(database) + list(queries)
            kinds = np.array([0] * len(database) + [1] * len(queries))
            val_items = ValImages(all_paths, np.zeros(len(all_paths), dtype=np.int64), config.val.image_size, kinds)
            utm = utm_array(all_paths)
    return LandmarkData(train=GroupImages(groups.groups, config), val=val_items,
                        num_classes=[g.num_classes for g in groups.groups],
                        train_count=sum(len(g.paths) for g in groups.groups), skipped=list(groups.skipped),
                        source=f"place groups of {root / 'train'}", utm=utm)  # fmt: skip


def load_landmark_data(config: LandmarkTrainConfig) -> LandmarkData:
    """List (not decode) the run's images and build its datasets.

    Raises:
        ValueError: no or unusable data (the message names the folder or file and why).
    """
    return _vpr_data(config) if config.method == "vpr" else _classification_data(config)


def _lightning_datamodule():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class LandmarkDataModule(_lightning_datamodule()):  # type: ignore[misc]
    """Training batches from a resumable sampler (start set by the restored `RunState`) and the
    validation images."""

    def __init__(self, config: LandmarkTrainConfig, data: LandmarkData) -> None:
        super().__init__()
        self.config, self.data = config, data
        self.consumed_batches = 0
        self.sampler: ResumableSampler | None = None

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        from delfi.train.config import loader_workers

        replicas, rank = self._world()
        d = self.config.data
        consumed = lambda: self.consumed_batches  # noqa: E731 - each iter() starts where training is
        if d.balanced and self.data.labels is not None:
            sampler: ResumableSampler = BalancedSampler(self.data.labels, d.batch_size, self.config.seed, replicas, rank,
                                                        consumed=consumed)
        else:
            sampler = ResumableSampler(len(self.data.train), d.batch_size, self.config.seed, replicas, rank, consumed=consumed)
        self.sampler = sampler
        return DataLoader(EpochItems(self.data.train), batch_size=d.batch_size, sampler=sampler,
                          num_workers=loader_workers(self.config), persistent_workers=False,
                          pin_memory=torch.cuda.is_available(), drop_last=False)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        items = self.data.val if self.data.val is not None else []
        return DataLoader(items, batch_size=self.config.val.batch_size, shuffle=False)


def epochs_for(config: LandmarkTrainConfig, data: LandmarkData) -> float:
    """How many passes over the training images ``trainer.max_steps`` batches make."""
    return config.trainer.max_steps * config.data.batch_size / max(1, data.train_count)


__all__ += ["epochs_for"]
