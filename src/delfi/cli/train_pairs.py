"""The body of the pair-trained methods' commands: ``delfi train r2d2``, ``delfi train
multilevel-encoder`` and ``delfi train multilevel`` (photos -> homography pairs, or depth + pose
pairs): options and overrides -> config, run-folder checks, data, the summary, the training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from delfi.cli.common import fail, report_failures, stderr_console, summary_table

__all__ = ["PAIR_METHODS", "run_pair_command"]

PAIR_METHODS = ("r2d2", "multilevel-encoder", "multilevel")


def _method_of(layer: dict) -> str:
    return str(layer.get("method", "r2d2"))


def _schema(method: str) -> type:
    from delfi.train.config import schema_for

    return schema_for(method)


def _words(method: str, words: list[str]) -> list[str]:
    """``loss=NAME`` -> ``loss.kind=NAME`` (multilevel), unique short keys expanded."""
    if method == "r2d2":
        return words
    from delfi.cli.train_landmarks import expand_short_keys

    words = [f"loss.kind={w.partition('=')[2]}" if w.startswith("loss=") else w for w in words]
    return expand_short_keys(words, _schema(method))


def _load_data(config: Any):
    if config.method == "r2d2":
        from delfi.train.data import load_training_data

        return load_training_data(config)
    from delfi.train.multilevel_data import load_multilevel_data

    return load_multilevel_data(config)


def _summary_rows(config: Any, data: Any, folder: Path, checkpoint: Path | None) -> list[tuple[str, str]]:
    d, loss = config.data, config.loss
    source = f"{len(data.train)} from {d.images}" if not getattr(d, "pairs", None) else \
        f"{len(data.train)} depth + pose pairs per epoch from {d.pairs}"
    where = "held out of --images" if data.held_out else (d.val_images or "the --images photos")
    val = f"{len(data.val.paths)} ({where}), {config.val.pairs} pairs" if data.val is not None else "none"
    if config.method == "r2d2":
        loss_text = f"{loss.reliability.value} reliability + {loss.repeatability.value} repeatability N={loss.N} + peaky"
    elif loss.kind == "encoder":
        loss_text = f"reconstruction + triplet (margin {loss.margin:g}, safe radius {loss.safe_radius}); encoders train"
    elif loss.kind == "distinctiveness+":
        loss_text = (f"distinctiveness+ (margin {loss.margin:g}, tau {loss.tau:g}) + {loss.peaky_lambda:g} x peaky "
                     f"N={loss.peaky_n}; attention trains")
    else:
        loss_text = f"score-weighted triplet (margin {loss.margin:g}); attention trains"
    rows = [("training pairs" if getattr(d, "pairs", None) else "training images", source), ("validation images", val),
            ("loss", loss_text)]
    if getattr(config.net, "init_from", None):
        rows.append(("initial weights", str(config.net.init_from)))
    rows += [
        ("steps", f"{config.trainer.max_steps} (batch {d.batch_size}, {d.crop_size} px, {config.trainer.precision})"),
        ("run folder", str(folder) + (f" (resuming {checkpoint})" if checkpoint else "")),
    ]
    return rows


def run_pair_command(method: str, words: list[str], *, options: dict, preset: str | None, out: Path | None,
                     resume: Path | None, overwrite: bool, progress: bool) -> None:
    """Resolve, check, load and train one run of ``method`` (one of `PAIR_METHODS`); exits through
    `fail` (code 2) on any user error, before anything is written."""
    from delfi.config import ConfigError
    from delfi.train.trainer import (
        RunFolderError,
        check_run_folder,
        checkpoint_train_config,
        is_secondary_process,
        prepare_run_folder,
        resolve_checkpoint,
    )

    stray = [w for w in words if "=" not in w]
    if stray:
        raise fail(f"unexpected argument(s) {' '.join(stray)}: options are --images, --out ...; overrides look like key=value")
    checkpoint = base = None
    schema = _schema(method)
    try:
        if resume is not None:
            if preset is not None:
                raise fail("--preset cannot be combined with --resume: the run continues with the config in its checkpoint "
                           "(change settings with key=value overrides)")
            checkpoint = resolve_checkpoint(resume)
            base = checkpoint_train_config(checkpoint)
            if _method_of(base) != method:
                raise fail(f"--resume {checkpoint}: a {_method_of(base)!r} run: continue it with delfi train {_method_of(base)} --resume ...")
            out = out if out is not None else checkpoint.parent
        elif out is None:
            raise fail("give --out DIR (a new or empty folder for the run), or --resume CKPT to continue a run")
        from delfi.train.config import load_train_preset, resolve_train_config

        if preset is not None and resume is None:
            preset_method = _method_of(load_train_preset(preset))
            if preset_method != method:
                raise fail(f"--preset {preset} is a {preset_method!r} recipe: train it with delfi train {preset_method}")
        config = resolve_train_config(None if base else (preset or method), _words(method, words), ("options", options),
                                      base=base, schema=schema)  # fmt: skip
        check_run_folder(out, resume=checkpoint is not None, overwrite=overwrite)  # before the images are read
    except (ConfigError, RunFolderError) as exc:
        raise fail(str(exc)) from None
    if config.data.images is None and not getattr(config.data, "pairs", None):
        more = " or --pairs (a MegaDepth root)" if method != "r2d2" else ""
        raise fail(f"no training images: give --images (a folder, an image file or a .txt list of photos){more}")
    console = stderr_console()
    if is_secondary_process():  # a DDP child re-running the command: rank 0 reports
        from rich.console import Console

        console = Console(stderr=True, quiet=True)
    try:
        data = _load_data(config)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if data.skipped:
        report_failures(console, "unreadable images, skipped", ["image", "reason"], [(str(p), r) for p, r in data.skipped])
    from delfi.train.trainer import check_trainer_settings

    try:
        check_trainer_settings(config)
    except ValueError as exc:
        raise fail(f"cannot train: {exc}") from None
    try:
        folder = prepare_run_folder(out, resume=checkpoint is not None, overwrite=overwrite, method=method)
    except RunFolderError as exc:
        raise fail(str(exc)) from None
    console.print(summary_table(f"delfi train {method}", _summary_rows(config, data, folder, checkpoint)))
    from delfi.train.trainer import train

    try:
        result = train(config, folder, data=data, resume=checkpoint, command=["delfi", *sys.argv[1:]], progress=progress, console=console)
    except ValueError as exc:  # e.g. Lightning's refusal of an accelerator / strategy this machine lacks, a bad --init
        raise fail(f"cannot train: {str(exc).splitlines()[0]}") from None
    except _misconfiguration() as exc:
        raise fail(f"cannot train: {str(exc).splitlines()[0]}") from None
    from delfi.train.validation import threshold_name

    metric = f"mma@{threshold_name(float(config.val.pixel_threshold))}"  # the monitored val/<metric>
    rows = [("steps", str(result.steps)), ("last checkpoint", str(result.last))]
    if result.initial_metrics is not None:
        rows.append((f"val/{metric} at start", f"{result.initial_metrics[metric]:.3f}"))
    if result.final_metrics is not None:
        rows.append((f"val/{metric} last", f"{result.final_metrics[metric]:.3f}"))
    if result.best is not None:
        rows.append(("best checkpoint", f"{result.best} (val/{metric} {result.best_score:.3f})"))
    if result.skipped_nan:
        rows.append(("skipped steps (non-finite)", str(result.skipped_nan)))
    rows.append(("logs", f"tensorboard --logdir {folder}"))
    console.print(summary_table("done", rows))


def _misconfiguration():
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        return MisconfigurationException
    except ImportError:  # pragma: no cover
        return ()
