"""``delfi train``: train networks (``delfi train r2d2 ...``) with PyTorch Lightning.

Output folder rules (``--out``): a new path or an empty folder becomes a run folder (marked by
``delfi-run.json``); a folder with other files is refused; a run folder is refused unless
``--resume`` continues it or ``--overwrite`` starts it again (removing only delfi's checkpoints,
config.yaml and TensorBoard events there). ``--resume CKPT`` alone continues the run of CKPT in its
folder with the config stored in the checkpoint (``key=value`` overrides on top, e.g. a larger
``trainer.max_steps``). Exit codes: 0 done, 2 bad arguments / config / data (nothing trained).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from delfi.cli.common import fail, report_failures, stderr_console, summary_table

app = typer.Typer(help="Train networks: R2D2 (and its loss variants) on homography pairs of any photos; DELF, DELG "
                       "and DELG for place recognition on labelled photos.", no_args_is_help=True)


@app.callback()
def train_group() -> None:
    """Train networks with PyTorch Lightning (checkpoints, exact resume, TensorBoard logs)."""


@app.command("r2d2")
def r2d2(
    settings: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. loss.repeatability=jaccard trainer.max_steps=20000 trainer.precision=bf16-mixed"
    ),
    images: Optional[str] = typer.Option(None, "--images", help="Training photos: a folder (recursive), an image or a .txt list."),
    val_images: Optional[str] = typer.Option(
        None, "--val-images", help="Validation photos (default: a fixed 10% of --images held out by file-name hash)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Training preset (default r2d2: the official recipe) or a YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (checkpoints, config.yaml, TensorBoard logs)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue exactly from a checkpoint (or a run folder's last.ckpt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start an existing run folder again (its checkpoints and logs are removed)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the pairs and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Train R2D2 on synthetic homography pairs of photos (official recipe by default)."""
    from delfi.config import ConfigError
    from delfi.train.trainer import (
        RunFolderError,
        check_run_folder,
        checkpoint_train_config,
        is_secondary_process,
        prepare_run_folder,
        resolve_checkpoint,
    )

    words = [str(w) for w in (settings or [])]
    stray = [w for w in words if "=" not in w]
    if stray:
        raise fail(f"unexpected argument(s) {' '.join(stray)}: options are --images, --out ...; overrides look like key=value")
    checkpoint = None
    base = None
    try:
        if resume is not None:
            if preset is not None:
                raise fail("--preset cannot be combined with --resume: the run continues with the config in its checkpoint "
                           "(change settings with key=value overrides)")
            checkpoint = resolve_checkpoint(resume)
            base = checkpoint_train_config(checkpoint)
            if base.get("method", "r2d2") != "r2d2":
                raise fail(f"--resume {checkpoint}: a {base.get('method')!r} run: continue it with delfi train {base.get('method')} --resume ...")
            out = out if out is not None else checkpoint.parent
        elif out is None:
            raise fail("give --out DIR (a new or empty folder for the run), or --resume CKPT to continue a run")
        from delfi.train.config import TrainConfig, load_train_preset, resolve_train_config

        if preset is not None and resume is None:
            preset_method = load_train_preset(preset).get("method", "r2d2")
            if preset_method != "r2d2":
                raise fail(f"--preset {preset} is a {preset_method!r} recipe: train it with delfi train {preset_method}")
        options = {}
        if images is not None:
            options.setdefault("data", {})["images"] = images
        if val_images is not None:
            options.setdefault("data", {})["val_images"] = val_images
        if seed is not None:
            options["seed"] = seed
        config = resolve_train_config(None if base else (preset or "r2d2"), words, ("options", options), base=base,
                                      schema=TrainConfig)
        check_run_folder(out, resume=checkpoint is not None, overwrite=overwrite)  # before the images are read
    except (ConfigError, RunFolderError) as exc:
        raise fail(str(exc)) from None
    if config.data.images is None:
        raise fail("no training images: give --images (a folder, an image file or a .txt list of photos)")
    console = stderr_console()
    if is_secondary_process():  # a DDP child re-running the command: rank 0 reports
        from rich.console import Console

        console = Console(stderr=True, quiet=True)
    from delfi.train.data import load_training_data

    try:
        data = load_training_data(config)
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
        folder = prepare_run_folder(out, resume=checkpoint is not None, overwrite=overwrite)
    except RunFolderError as exc:
        raise fail(str(exc)) from None
    val = f"{len(data.val.paths)} ({'held out of --images' if data.held_out else config.data.val_images}), {config.val.pairs} pairs" \
        if data.val is not None else "none"
    console.print(summary_table("delfi train r2d2", [
        ("training images", f"{len(data.train)} from {config.data.images}"),
        ("validation images", val),
        ("loss", f"{config.loss.reliability.value} reliability + {config.loss.repeatability.value} repeatability N={config.loss.N} + peaky"),
        ("steps", f"{config.trainer.max_steps} (batch {config.data.batch_size}, {config.data.crop_size} px, {config.trainer.precision})"),
        ("run folder", str(folder) + (f" (resuming {checkpoint})" if checkpoint else "")),
    ]))
    from delfi.train.trainer import train

    try:
        result = train(config, folder, data=data, resume=checkpoint, command=["delfi", *sys.argv[1:]], progress=progress, console=console)
    except ValueError as exc:  # e.g. Lightning's refusal of an accelerator / strategy this machine lacks
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


SETTINGS_HELP = "key=value overrides, e.g. optim.lr=0.005 trainer.max_steps=2000 trainer.precision=bf16-mixed (unique short names work: groups=8)"
PRESET_HELP = "Training preset (default: the command's recipe; `delfi train presets` lists them) or a YAML file."
OUT_HELP = "Run folder (checkpoints, config.yaml, TensorBoard logs)."
RESUME_HELP = "Continue exactly from a checkpoint (or a run folder's last.ckpt)."
OVERWRITE_HELP = "Start an existing run folder again (its checkpoints and logs are removed)."
INIT_HELP = "Start from any delfi checkpoint (every tensor of the same name and shape), e.g. runs/delf-ft/best.ckpt."


def _landmark(method: str, settings, options: dict, preset, out, resume, overwrite, seed, progress) -> None:
    from delfi.cli.train_landmarks import run_landmark_command

    if seed is not None:
        options["seed"] = seed
    run_landmark_command(method, [str(w) for w in (settings or [])], options=options, preset=preset, out=out,
                         resume=resume, overwrite=overwrite, progress=progress)


def _classification_options(data: Optional[str], csv: Optional[str], images: Optional[str], init: Optional[str],
                            val_data: Optional[str] = None) -> dict:
    section = {k: v for k, v in (("folder", data), ("csv", csv), ("images", images), ("val_folder", val_data)) if v is not None}
    options: dict = {"data": section} if section else {}
    if init is not None:
        options["net"] = {"init_from": init}
    return options


_DATA = typer.Option(None, "--data", help="Training photos: one sub-folder per class (landmark).")
_CSV = typer.Option(None, "--csv", help="A GLDv2 list: train.csv (id,url,landmark_id) or train_clean.csv (landmark_id,images).")
_IMAGES = typer.Option(None, "--images", help="The --csv images' folder (GLDv2 layout a/b/c/<id>.jpg, or flat).")
_VAL_DATA = typer.Option(None, "--val-data", help="Validation photos in class folders named as --data's (default: "
                                                  "data.val_fraction of each class held out by file-name hash).")


@app.command("delf-finetune")
def delf_finetune(
    settings: Optional[List[str]] = typer.Argument(None, help=SETTINGS_HELP),
    data: Optional[str] = _DATA, csv: Optional[str] = _CSV, images: Optional[str] = _IMAGES, val_data: Optional[str] = _VAL_DATA,
    init: Optional[str] = typer.Option(None, "--init", help=INIT_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the augmentations and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """DELF stage 1: finetune the ResNet (to layer3) with a classifier on landmark classes (DeLF-pytorch's SGD recipe)."""
    _landmark("delf-finetune", settings, _classification_options(data, csv, images, init, val_data), preset, out, resume, overwrite, seed, progress)


@app.command("delf-keypoint")
def delf_keypoint(
    settings: Optional[List[str]] = typer.Argument(None, help=SETTINGS_HELP),
    data: Optional[str] = _DATA, csv: Optional[str] = _CSV, images: Optional[str] = _IMAGES, val_data: Optional[str] = _VAL_DATA,
    init: Optional[str] = typer.Option(None, "--init", help="The finetuned network (a delf-finetune run's best.ckpt)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP + " delf-keypoint-tf: TF's attention loss."),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the augmentations and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """DELF stage 2: train the attention head on a frozen backbone (random gamma scaling)."""
    _landmark("delf-keypoint", settings, _classification_options(data, csv, images, init, val_data), preset, out, resume, overwrite, seed, progress)


@app.command("delg")
def delg(
    settings: Optional[List[str]] = typer.Argument(None, help=SETTINGS_HELP),
    data: Optional[str] = _DATA, csv: Optional[str] = _CSV, images: Optional[str] = _IMAGES, val_data: Optional[str] = _VAL_DATA,
    init: Optional[str] = typer.Option(None, "--init", help=INIT_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP + " delg-seed: DELG-pytorch."),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the augmentations and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """DELG: global GeM + ArcFace and local attention + autoencoder, trained jointly (TF recipe by default)."""
    _landmark("delg", settings, _classification_options(data, csv, images, init, val_data), preset, out, resume, overwrite, seed, progress)


@app.command("vpr")
def vpr(
    settings: Optional[List[str]] = typer.Argument(None, help=SETTINGS_HELP),
    root: Optional[str] = typer.Option(None, "--root", help="A place-recognition folder as sf-xs: train/, val/database/, val/queries/."),
    only_local: bool = typer.Option(False, "--only-local", help="Train only the local branch of a saved model (give --init)."),
    init: Optional[str] = typer.Option(None, "--init", help=INIT_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the augmentations and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """DELG for place recognition: CosPlace-style groups of UTM cells x heading bins, one classifier per group in turn."""
    options: dict = {}
    if root is not None:
        options["data"] = {"root": root}
    if init is not None:
        options["net"] = {"init_from": init}
    if only_local:
        options["vpr"] = {"only_local": True}
    _landmark("vpr", settings, options, preset, out, resume, overwrite, seed, progress)


@app.command("presets")
def presets() -> None:
    """List the training presets: name, the method they train, what they reproduce."""
    from rich.console import Console
    from rich.table import Table

    from delfi.train.config import load_train_preset, preset_about, train_preset_names

    table = Table(title="training presets (delfi train METHOD --preset NAME)", title_justify="left")
    for column in ("preset", "method", "recipe"):
        table.add_column(column, overflow="fold")
    for name in train_preset_names():
        table.add_row(name, str(load_train_preset(name).get("method", "r2d2")), preset_about(name))
    Console().print(table)


@app.command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (a run's best.ckpt / last.ckpt) or any delfi weights file."),
    out: Path = typer.Option(..., "--out", help="The weights file to write (e.g. my-model.pt); an existing file needs --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it is a delfi weights file."),
) -> None:
    """Write a training checkpoint's network as a small weights file for `delfi extract --weights`.

    Only the network's tensors and how they were made (architecture, seed, steps, data, command)
    are kept; the optimiser state and the training loops are dropped.
    """
    from delfi.cli.common import prepare_output_file, refuse_output_among_inputs
    from delfi.models.checkpoints import CheckpointError, load_checkpoint
    from delfi.train.export import export_weights

    console = stderr_console()
    if not checkpoint.is_file():
        raise fail(f"{checkpoint}: no such checkpoint file")
    refuse_output_among_inputs(out, [checkpoint])
    prepare_output_file(out)  # a folder is refused here, before "exists"
    if out.exists() and not overwrite:
        raise fail(f"{out} exists: pass --overwrite to replace it")
    if out.exists():
        try:
            kind = load_checkpoint(out).kind
        except CheckpointError:
            kind = None
        if kind != "delfi":
            raise fail(f"{out} is not a weights file delfi wrote: not replacing it") from None
    try:
        path = export_weights(checkpoint, out)
    except (CheckpointError, ValueError) as exc:
        raise fail(str(exc)) from None
    from delfi.models.weights import sha256_file

    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(path)})", highlight=False, soft_wrap=True)
