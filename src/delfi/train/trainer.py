"""Run a training: the run folder, the Lightning `Trainer`, checkpoints, resume.

**Run folder** (``--out``), marked by ``delfi-run.json``; delfi writes there ``config.yaml`` (the
resolved config), ``last.ckpt`` (every ``trainer.checkpoint_every_n_steps`` steps and at the end),
``best.ckpt`` (the best ``val/mma@3`` so far), ``logs/`` (TensorBoard events). Rules:

- a new path or an empty folder becomes a run folder;
- an existing path that is not a delfi run folder (a file, a folder with other files) is refused,
  with or without ``--overwrite``: delfi never deletes a user's files;
- an existing run folder is refused unless ``resume`` (continue it) or ``overwrite`` (start again:
  only delfi's own files there are removed: ``last.ckpt``, ``best.ckpt``, ``config.yaml`` and the
  TensorBoard event files in ``logs/``; anything else in the folder is left alone).

**Exact resume**: Lightning restores the network, optimiser, scheduler and loop counters;
`callbacks.RunState` restores the data position and the RNG states; the data order and each pair
depend only on ``(seed, epoch, index)`` and the loss sampler's positions only on ``(seed, step)``,
so a resumed run gives the loss curve of an uninterrupted one (same seed and config).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from delfi.config import ConfigError, dump_config
from delfi.train.config import TrainConfig, config_dict, resolve_train_config

__all__ = ["RUN_MARKER", "RunFolderError", "TrainResult", "check_run_folder", "checkpoint_train_config", "prepare_run_folder", "train"]

RUN_MARKER = "delfi-run.json"
OWN_FILES = ("last.ckpt", "best.ckpt", "config.yaml")


class RunFolderError(ValueError):
    """The output folder cannot be used (the message says why and what to do)."""


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_secondary_process() -> bool:
    """Whether this process is a non-zero rank of a distributed run (Lightning's DDP launcher
    re-runs the command in each child; torchrun / SLURM start every rank): such processes neither
    check nor mark the run folder, nor write config.yaml (rank 0 does)."""
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name, "0") or 0) > 0:
                return True
        except ValueError:
            continue
    return False


def is_run_folder(path: Path) -> bool:
    marker = Path(path) / RUN_MARKER
    try:
        return json.loads(marker.read_text()).get("format") == "delfi-train-run"
    except (OSError, ValueError, AttributeError):
        return False


def check_run_folder(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise `RunFolderError` unless ``out`` may be used by the rules of the module docstring
    (changes nothing: the command checks this before reading the images)."""
    out = Path(out)
    if is_secondary_process():
        return
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder: give a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_folder(out):
            raise RunFolderError(
                f"--out {out} exists, is not empty and is not a delfi run folder (no {RUN_MARKER}): "
                "delfi never writes into other folders; choose a new or empty folder"
            )
        if not resume and not overwrite:
            raise RunFolderError(
                f"--out {out} is a delfi run folder already: continue it with --resume {out / 'last.ckpt'}, "
                "start it again with --overwrite (removes its checkpoints and logs), or choose another folder"
            )


def prepare_run_folder(out: Path, *, resume: bool = False, overwrite: bool = False, method: str = "r2d2") -> Path:
    """Check (`check_run_folder`) and prepare ``out``; returns it."""
    out = Path(out)
    if is_secondary_process():
        out.mkdir(parents=True, exist_ok=True)
        return out
    check_run_folder(out, resume=resume, overwrite=overwrite)
    if out.is_dir() and is_run_folder(out):
        if overwrite and not resume:
            for name in OWN_FILES:
                (out / name).unlink(missing_ok=True)
            logs = out / "logs"
            if logs.is_dir():
                for f in list(logs.glob("events.out.tfevents.*")) + [logs / "hparams.yaml"]:
                    if f.is_file():
                        f.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    marker = out / RUN_MARKER
    info = {"format": "delfi-train-run", "format_version": 1, "method": method, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
            info = {**info, **{k: v for k, v in old.items() if k in ("created", "starts")}}
        except ValueError:
            pass
    info["starts"] = list(info.get("starts", [])) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resume": bool(resume)}]
    marker.write_text(json.dumps(info, indent=1) + "\n")
    return out


def resolve_checkpoint(resume: Path) -> Path:
    """``resume`` as a checkpoint file: a ``.ckpt`` file, or a run folder (its ``last.ckpt``)."""
    resume = Path(resume)
    if resume.is_dir():
        resume = resume / "last.ckpt"
    if not resume.is_file():
        raise RunFolderError(f"--resume {resume}: no such checkpoint file")
    return resume


def checkpoint_train_config(path: Path) -> dict[str, Any]:
    """The training config stored in a trainer checkpoint (``delfi.provenance.train_config``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise RunFolderError(f"--resume {path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    delfi = checkpoint.get("delfi") if isinstance(checkpoint, dict) else None
    if not isinstance(delfi, dict) or "train_config" not in delfi.get("provenance", {}):
        raise RunFolderError(f"--resume {path}: not a delfi training checkpoint (no delfi.provenance.train_config)")
    return delfi["provenance"]["train_config"]


@dataclass
class TrainResult:
    out: Path
    steps: int
    last: Path | None
    best: Path | None
    best_score: float | None
    initial_metrics: dict[str, float] | None
    final_metrics: dict[str, float] | None
    skipped_nan: int
    monitor: str | None = None  # the validation metric best.ckpt follows


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, ...) and advice warnings off; ours stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*sync_dist=True.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*You're resuming from a checkpoint that ended before the epoch ended.*",
        ".*LeafSpec.*",
        ".*TensorBoard.*",
        ".*tensorboardX.*",
        ".*Precision bf16-mixed is not supported by the model summary.*",
        ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*module\\(s\\) in eval mode at the start of training.*",  # frozen batch norm (delf-keypoint, vpr only_local)
    ):
        warnings.filterwarnings("ignore", message=pattern)


def check_trainer_settings(config: TrainConfig) -> None:
    """Raise ValueError when Lightning refuses ``trainer.accelerator / devices / strategy /
    num_nodes / precision`` on this machine, or ``net.reinit_heads`` comes without ``net.init_from``
    (checked before any file is written)."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from delfi.train.init import require_init_for_reinit

    require_init_for_reinit(config.net.init_from, getattr(config.net, "reinit_heads", []))
    quiet_lightning()
    t = config.trainer
    try:
        pl.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                   precision=t.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError, ImportError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"trainer settings (accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}, "
                         f"num_nodes={t.num_nodes}, precision={t.precision}): {message}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _method_parts(config: Any, data: Any, command: Sequence[str] | None):
    """(LightningModule, DataModule, whether there is validation, data) of the config's method; the
    seed is set before the network is built."""
    provenance_command = list(command if command is not None else sys.argv)
    from delfi.train.landmark_config import LandmarkTrainConfig

    if isinstance(config, LandmarkTrainConfig):
        from delfi.train.landmark_data import LandmarkDataModule, load_landmark_data
        from delfi.train.landmark_module import LandmarkModule

        data = data if data is not None else load_landmark_data(config)
        seed_everything(config.seed)
        provenance = {"data": data.provenance(config), "command": provenance_command}
        module = LandmarkModule(config, data.num_classes, provenance, val_utm=data.utm)
        module.use_validation_labels(data.val.labels if data.val is not None else None)
        return module, LandmarkDataModule(config, data), data.val is not None and config.val.enabled, data
    from delfi.train.data import PairDataModule, load_training_data
    from delfi.train.multilevel_config import MultiLevelTrainConfig

    if isinstance(config, MultiLevelTrainConfig):
        from delfi.train.multilevel_data import load_multilevel_data
        from delfi.train.multilevel_module import MultiLevelModule

        data = data if data is not None else load_multilevel_data(config)
        seed_everything(config.seed)
        module = MultiLevelModule(config, {"data": data.provenance(config), "command": provenance_command})
        return module, PairDataModule(config, data), data.val is not None and config.val.pairs > 0, data
    from delfi.train.module import R2D2Module

    data = data if data is not None else load_training_data(config)
    seed_everything(config.seed)
    provenance = {"data": data.provenance(config), "command": provenance_command}
    module = R2D2Module(config, provenance)
    has_val = data.val is not None and config.val.pairs > 0
    return module, PairDataModule(config, data), has_val, data


def train(
    config: Any,
    out: str | os.PathLike,
    *,
    data=None,
    resume: str | os.PathLike | None = None,
    command: Sequence[str] | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    console=None,
    logger: bool = True,
) -> TrainResult:
    """Train per ``config`` into the prepared run folder ``out`` (see `prepare_run_folder`).

    Args:
        data: a `TrainingData` (default: `load_training_data(config)`, which may raise ValueError
            for too few usable images).
        resume: a checkpoint to continue from (exact resume).
        command: the command line, recorded in the checkpoints' provenance.
        callbacks: extra Lightning callbacks (tests).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from delfi.train.callbacks import RunState, StepProgress

    quiet_lightning()
    out = Path(out)
    module, datamodule, has_val, data = _method_parts(config, data, command)
    if not is_secondary_process():
        dump_config(config_dict(config), out / "config.yaml")
    t = config.trainer
    all_callbacks: list[Any] = [RunState(datamodule)]
    last = ModelCheckpoint(dirpath=out, filename="last", save_top_k=0, save_last=True,
                           every_n_train_steps=t.checkpoint_every_n_steps, enable_version_counter=False)
    all_callbacks.append(last)
    best = None
    if has_val:
        best = ModelCheckpoint(dirpath=out, filename="best", monitor=module.monitor, mode=getattr(module, "monitor_mode", "max"), save_top_k=1,
                               auto_insert_metric_name=False, enable_version_counter=False, save_last=False)
        all_callbacks.append(best)
    loggers: Any = False
    if logger:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers = TensorBoardLogger(save_dir=str(out), name="logs", version="", default_hp_metric=False)
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    if progress:
        all_callbacks.append(StepProgress(console))
    all_callbacks.extend(callbacks)
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        logger=loggers,
        callbacks=all_callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_every_n_steps if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        gradient_clip_val=config.optim.gradient_clip_val or None,
        deterministic=t.deterministic,
        default_root_dir=str(out),
        enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    last_path = out / "last.ckpt"
    trainer.save_checkpoint(last_path)  # the end state (also when max_steps is no multiple of the interval)
    best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
    score = best.best_model_score if best is not None else None
    return TrainResult(
        out=out,
        steps=int(trainer.global_step),
        last=last_path if last_path.is_file() else None,
        best=best_path if best_path is not None and best_path.is_file() else None,
        best_score=float(score) if score is not None else None,
        initial_metrics=module.initial_metrics,
        final_metrics=module.last_val,
        skipped_nan=int(module.skipped_nan),
        monitor=getattr(module, "monitor", None) if best is not None else None,
    )


__all__ += ["check_trainer_settings", "ConfigError", "resolve_train_config", "resolve_checkpoint", "is_run_folder"]
