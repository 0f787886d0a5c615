"""Training callbacks: the run state saved in checkpoints (data position, skipped-step count, RNG
states) and a Rich progress bar over the whole run (steps, rate, ETA, loss, validation MMA)."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

__all__ = ["RunState", "StepProgress", "get_rng_state", "set_rng_state"]


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as plain containers and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(v) for v in state], "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # fewer GPUs than when saved
            pass
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class RunState(pl.Callback):
    """Counts the training batches consumed (the data position) and saves it with the skipped-step
    count and the RNG states in every checkpoint; on restore gives the position to the DataModule
    before its training dataloader is made, so the sampler resumes mid-epoch where it stopped."""

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule
        self.module = None
        self._pending_skipped: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.module = pl_module
        if self._pending_skipped is not None:
            pl_module.skipped_nan = self._pending_skipped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.datamodule.consumed_batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed_batches": int(self.datamodule.consumed_batches),
            "skipped_nan": int(getattr(self.module, "skipped_nan", 0)),
            "rng": get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.consumed_batches = int(state_dict["consumed_batches"])
        self._pending_skipped = int(state_dict.get("skipped_nan", 0))
        if self.module is not None:
            self.module.skipped_nan = self._pending_skipped
        if "rng" in state_dict:
            set_rng_state(state_dict["rng"])


class StepProgress(pl.Callback):
    """A Rich progress bar on stderr over the run's optimiser steps: steps/s, elapsed, ETA, the
    last loss and the last validation MMA. Rank 0 only."""

    def __init__(self, console=None, every: int = 1) -> None:
        self.console, self.every = console, max(1, every)
        self.progress = None
        self.task = None
        self._start = (0.0, 0)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from delfi.cli.common import stderr_console

        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console or stderr_console(),
        )
        self.progress.start()
        self.task = self.progress.add_task("training", total=trainer.max_steps, completed=trainer.global_step,
                                           rate="", info=self._info(pl_module))
        self._start = (time.perf_counter(), trainer.global_step)

    def _info(self, pl_module) -> str:
        parts = []
        if getattr(pl_module, "last_loss", None) is not None:
            parts.append(f"loss {pl_module.last_loss:.4f}")
        val = getattr(pl_module, "last_val", None) or getattr(pl_module, "initial_metrics", None)
        metric = getattr(pl_module, "monitor", "val/mma@3").removeprefix("val/")
        if val and metric in val:
            parts.append(f"{metric} {val[metric]:.3f}")
        if getattr(pl_module, "skipped_nan", 0):
            parts.append(f"skipped {pl_module.skipped_nan}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is None or (trainer.global_step % self.every and trainer.global_step != trainer.max_steps):
            return
        t0, s0 = self._start
        elapsed = time.perf_counter() - t0
        done = trainer.global_step - s0
        rate = f"{done / elapsed:.2f} steps/s" if elapsed > 0 and done else ""
        self.progress.update(self.task, completed=trainer.global_step, rate=rate, info=self._info(pl_module))

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()
