"""Training data: the image split, a resumable rank-aware sampler, the LightningDataModule.

**Data order and randomness** depend only on ``(seed, epoch, index)``: epoch ``e``'s order is a
permutation drawn from ``SeedSequence([seed, e])``, extended cyclically to a whole number of
``batch_size * world_size`` items (so an epoch is never empty, even with fewer images than a batch),
and rank ``r`` of ``R`` takes items ``r, r + R, ...`` (as `DistributedSampler`). The sampler yields
``(epoch, index)`` pairs and `EpochItems` builds item ``index`` of that epoch, so worker processes
need no epoch bookkeeping. **Data position**: `RunState` counts the training batches the loop has
consumed; on resume the DataModule's sampler starts at that epoch and batch, so a resumed run sees
exactly the batches an uninterrupted one would.

**Validation split** (when no separate validation images are given): of the usable images, the
``ceil(val_fraction * n)`` (at least 1) whose file *name* has the smallest SHA-1 are held out: the
rule does not depend on the folder's location, the listing order or the other images' names.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from delfi.train.config import TrainConfig, loader_workers, pair_config

__all__ = ["EpochItems", "PairDataModule", "ResumableSampler", "TrainingData", "held_out_split", "load_training_data"]


class ResumableSampler(Sampler):
    """``(epoch, index)`` items of one rank, epoch after epoch; each ``iter()`` is the next epoch.

    ``start_epoch`` / ``start_batch``: where the first iteration begins (a resumed run).
    ``consumed``: a function giving the training batches consumed so far; when set, every ``iter()``
    starts at the position it gives (so an iterator the training loop opens and drops, as
    Lightning does when a run resumes exactly at an epoch's end, skips no data).
    """

    def __init__(self, length: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 start_epoch: int = 0, start_batch: int = 0, consumed=None) -> None:
        if length < 1:
            raise ValueError("the sampler needs at least one item")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start_batch = start_epoch, start_batch
        self.consumed = consumed
        chunk = batch_size * num_replicas
        self.total = math.ceil(length / chunk) * chunk

    @property
    def batches_per_epoch(self) -> int:
        return self.total // (self.batch_size * self.num_replicas)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's item indices of ``epoch``."""
        perm = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(self.length)
        order = np.resize(perm, self.total)  # cyclic extension
        return order[self.rank :: self.num_replicas]

    def position(self, consumed_batches: int) -> tuple[int, int]:
        """(epoch, batch in epoch) after ``consumed_batches`` training batches."""
        return divmod(consumed_batches, self.batches_per_epoch)

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.consumed is not None:
            self.epoch, self.start_batch = self.position(int(self.consumed()))
        epoch, skip = self.epoch, self.start_batch * self.batch_size
        self.epoch, self.start_batch = epoch + 1, 0
        order = self.epoch_order(epoch)
        return iter([(epoch, int(i)) for i in order[skip:]])


class EpochItems(Dataset):
    """Item ``(epoch, index)`` of a dataset with ``set_epoch`` (`HomographyPairs`)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def held_out_split(paths: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """(training, held-out) by the SHA-1 rule of the module docstring (order kept)."""
    if fraction <= 0 or len(paths) < 2:
        return list(paths), []
    count = max(1, math.ceil(fraction * len(paths)))
    ranked = sorted(paths, key=lambda p: (hashlib.sha1(Path(p).name.encode()).hexdigest(), str(p)))
    held = set(map(str, ranked[:count]))
    return [p for p in paths if str(p) not in held], [p for p in paths if str(p) in held]


class TrainingData:
    """The training and validation pair datasets of a config, with the images left out."""

    def __init__(self, train, val, skipped: list[tuple[str, str]], held_out: bool) -> None:
        self.train, self.val, self.skipped, self.held_out = train, val, skipped, held_out

    def provenance(self, config: TrainConfig) -> dict:
        return {
            "images": str(config.data.images),
            "count": len(self.train),
            "val_images": str(config.data.val_images) if config.data.val_images else "held out of images (sha1 rule)",
            "val_count": len(self.val.paths) if self.val is not None else 0,
            "skipped": len(self.skipped),
        }


def _subset(dataset, paths):
    part = copy.copy(dataset)
    part.paths = list(paths)
    return part


def load_training_data(config: TrainConfig) -> TrainingData:
    """Decode every image once, split off validation images and build the datasets.

    Raises:
        ValueError: no images given, or fewer usable images than needed (the message says how many
        were found and which were unreadable).
    """
    from delfi.datasets.homography_pairs import HomographyPairs

    d = config.data
    if not d.images:
        raise ValueError("no training images: give --images (a folder, an image file or a .txt list)")
    problem = _find_problem(d.images, "training")
    if problem:
        raise ValueError(problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable images are reported by the caller
        try:
            everything = HomographyPairs(d.images, pair_config(config), seed=config.seed, min_images=1)
        except ValueError as exc:
            raise ValueError(f"no usable training image: {exc}") from None
    skipped = list(everything.skipped)
    need_val = config.val.pairs > 0
    val = None
    if need_val and d.val_images:
        problem = _find_problem(d.val_images, "validation")
        if problem:
            raise ValueError(problem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                val = HomographyPairs(d.val_images, pair_config(config, config.val.crop_size), seed=config.val.seed)
            except ValueError as exc:
                raise ValueError(f"validation images: {exc}") from None
        skipped += val.skipped
        train_paths = everything.paths
    elif need_val:
        train_paths, val_paths = held_out_split(everything.paths, d.val_fraction)
        if not val_paths:
            raise ValueError(
                f"validation needs images: {len(everything.paths)} usable image(s) in {d.images} leave none to hold out "
                "(give --val-images, raise data.val_fraction, or set val.pairs=0)"
            )
        val = _subset(everything, val_paths)
        val.config, val.seed = pair_config(config, config.val.crop_size), config.val.seed
    else:
        train_paths = everything.paths
    if len(train_paths) < d.min_images:
        held = f", {len(everything.paths) - len(train_paths)} held out for validation" if len(train_paths) < len(everything.paths) else ""
        bad = f", {len(everything.skipped)} unreadable" if everything.skipped else ""
        raise ValueError(
            f"too few training images: {len(train_paths)} usable for training (of {len(everything.paths) + len(everything.skipped)} "
            f"found in {d.images}{bad}{held}); at least data.min_images={d.min_images} are needed"
        )
    return TrainingData(_subset(everything, train_paths), val, skipped, held_out=val is not None and not d.val_images)


def _find_problem(images: str, what: str) -> str | None:
    """Why `collect_images` finds no image in ``images`` (None when it finds some)."""
    from delfi.io.images import ImageError, collect_images

    try:
        found = len(collect_images([images]))
    except ImageError as exc:
        return f"no usable {what} image: {exc.path}: {exc.reason}"
    except (OSError, ValueError) as exc:
        return f"no usable {what} image in {images}: {exc}"
    return None if found else f"no usable {what} image: no image files in {images}"


def validation_items(val_dataset, count: int) -> list[dict]:
    """``count`` fixed pairs: item ``i`` is image ``i % n`` of epoch ``i // n`` of the validation set."""
    n = len(val_dataset)
    items = []
    for i in range(count):
        val_dataset.set_epoch(i // n)
        item = val_dataset[i % n]
        items.append({k: item[k] for k in ("image1", "image2", "homography")})
    return items


class _ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _lightning_datamodule():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class PairDataModule(_lightning_datamodule()):  # type: ignore[misc]
    """Training batches from `ResumableSampler` (start set by the restored `RunState`) and the
    fixed validation pairs (made once, in `setup`)."""

    def __init__(self, config: TrainConfig, data: TrainingData) -> None:
        super().__init__()
        self.config, self.data = config, data
        self.consumed_batches = 0  # restored by RunState before train_dataloader() is called
        self.sampler: ResumableSampler | None = None
        self._val_items: list | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._val_items is None and self.data.val is not None and self.config.val.pairs > 0:
            self._val_items = validation_items(self.data.val, self.config.val.pairs)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._world()
        d = self.config.data
        sampler = ResumableSampler(len(self.data.train), d.batch_size, self.config.seed, replicas, rank,
                                   consumed=lambda: self.consumed_batches)  # each iter() starts where training is
        self.sampler = sampler
        return DataLoader(
            EpochItems(self.data.train),
            batch_size=d.batch_size,
            sampler=sampler,
            num_workers=loader_workers(self.config),
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_ListDataset(self._val_items or []), batch_size=self.config.val.batch_size, shuffle=False)
