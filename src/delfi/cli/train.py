"""``delfi train``: train networks (``delfi train r2d2 ...``) with PyTorch Lightning.

Output folder rules (``--out``): a new path or an empty folder becomes a run folder (marked by
``delfi-run.json``); a folder with other files is refused; a run folder is refused unless
``--resume`` continues it or ``--overwrite`` starts it again (removing only delfi's checkpoints,
config.yaml and TensorBoard events there). ``--resume CKPT`` alone continues the run of CKPT in its
folder with the config stored in the checkpoint (``key=value`` overrides on top, e.g. a larger
``trainer.max_steps``). Exit codes: 0 done, 2 bad arguments / config / data (nothing trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from delfi.cli.common import fail, stderr_console

app = typer.Typer(help="Train networks: R2D2 (and its loss variants) and multi-level attention keypoints on homography "
                       "pairs of any photos (or depth + pose pairs); DELF, DELG and DELG for place recognition on labelled "
                       "photos.", no_args_is_help=True)


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
    from delfi.cli.train_pairs import run_pair_command

    options: dict = {}
    if images is not None:
        options.setdefault("data", {})["images"] = images
    if val_images is not None:
        options.setdefault("data", {})["val_images"] = val_images
    if seed is not None:
        options["seed"] = seed
    run_pair_command("r2d2", [str(w) for w in (settings or [])], options=options, preset=preset, out=out, resume=resume,
                     overwrite=overwrite, progress=progress)


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


_PAIRS = typer.Option(None, "--pairs", help="Real pairs instead: a MegaDepth root as D2-Net preprocesses it (scene_info/*.npz, "
                                            "depth maps, poses); correspondences from depth + pose.")


def _multilevel(method: str, settings, images, val_images, pairs, init, preset, out, resume, overwrite, seed, progress) -> None:
    from delfi.cli.train_pairs import run_pair_command

    data = {k: v for k, v in (("images", images), ("val_images", val_images), ("pairs", pairs)) if v is not None}
    options: dict = {"data": data} if data else {}
    if init is not None:
        options["net"] = {"init_from": init}
    if seed is not None:
        options["seed"] = seed
    run_pair_command(method, [str(w) for w in (settings or [])], options=options, preset=preset, out=out, resume=resume,
                     overwrite=overwrite, progress=progress)


@app.command("multilevel-encoder")
def multilevel_encoder(
    settings: Optional[List[str]] = typer.Argument(None, help=SETTINGS_HELP + "; backbone_weights=resnet50.pth for ImageNet weights"),
    images: Optional[str] = typer.Option(None, "--images", help="Training photos (homography pairs): a folder, an image or a .txt list."),
    val_images: Optional[str] = typer.Option(None, "--val-images", help="Validation photos (default: 10% of --images held out by file-name hash)."),
    pairs: Optional[str] = _PAIRS,
    init: Optional[str] = typer.Option(None, "--init", help=INIT_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the pairs and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Multi-level attention, stage 1: the per-level 64-D encoders (reconstruction + D2-Net triplet loss) on a frozen ResNet."""
    _multilevel("multilevel-encoder", settings, images, val_images, pairs, init, preset, out, resume, overwrite, seed, progress)


@app.command("multilevel")
def multilevel(
    settings: Optional[List[str]] = typer.Argument(
        None, help=SETTINGS_HELP + "; loss=distinctiveness+ | triplet-weighted, loss.peaky_n=2 loss.peaky_lambda=0.5"),
    images: Optional[str] = typer.Option(None, "--images", help="Training photos (homography pairs): a folder, an image or a .txt list."),
    val_images: Optional[str] = typer.Option(None, "--val-images", help="Validation photos (default: 10% of --images held out by file-name hash)."),
    pairs: Optional[str] = _PAIRS,
    init: Optional[str] = typer.Option(None, "--init", help="The trained encoders: a multilevel-encoder run's best.ckpt."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, the pairs and the initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Multi-level attention, stage 2: the attention heads (distinctiveness+ loss with peakiness) on frozen encoders."""
    _multilevel("multilevel", settings, images, val_images, pairs, init, preset, out, resume, overwrite, seed, progress)


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
