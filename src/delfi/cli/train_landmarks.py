"""``delfi train delf-finetune | delf-keypoint | delg | vpr``: the landmark-classification methods.

Shared rules with ``delfi train r2d2`` (run folder, ``--resume``, ``--overwrite``, exit codes 0 / 2).
``key=value`` overrides take full keys (``optim.lr=0.005``) or, where a name is unique in the schema,
the bare name (``groups=8`` is ``vpr.groups=8``, ``backbone_weights=F`` is ``net.backbone_weights=F``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from delfi.cli.common import fail, report_failures, stderr_console, summary_table

__all__ = ["run_landmark_command", "expand_short_keys"]

DEFAULT_PRESETS = {"delf-finetune": "delf-finetune", "delf-keypoint": "delf-keypoint", "delg": "delg", "vpr": "vpr"}


def expand_short_keys(words: list[str], schema: type) -> list[str]:
    """``groups=8`` -> ``vpr.groups=8`` where ``groups`` is the last part of exactly one leaf key
    and not a top-level key; other words unchanged."""
    from omegaconf import OmegaConf

    from delfi.train.config import _leaf_keys

    leaves = _leaf_keys(OmegaConf.structured(schema))
    top = {k for k in leaves if "." not in k}
    out = []
    for word in words:
        key, _, value = word.partition("=")
        if "." not in key and key not in top:
            matches = [leaf for leaf in leaves if leaf.split(".")[-1] == key]
            if len(matches) == 1:
                word = f"{matches[0]}={value}"
        out.append(word)
    return out


def _summary_rows(config: Any, data: Any, folder: Path, checkpoint: Path | None, init_lines: list[str]) -> list[tuple[str, str]]:
    from delfi.train.landmark_data import epochs_for

    c, d = config, config.data
    classes = data.num_classes
    groups = f"{len(classes)} group{'s' if len(classes) != 1 else ''}"
    class_text = f"{classes[0]} classes" if c.method != "vpr" else f"{groups} of {', '.join(map(str, classes))} classes"
    val = "none"
    if data.val is not None:
        where = "database + queries of root/val" if c.method == "vpr" else \
            (f"from {d.val_folder}" if d.val_folder else "held out per class")
        val = f"{len(data.val)} images ({where})"
    frozen = {"delf-finetune": "attention (stage 2 trains it)", "delf-keypoint": "backbone incl. batch norm"}.get(c.method, "")
    if c.method == "vpr" and c.vpr.only_local:
        frozen = "backbone, GeM, whitening, global classifiers"
    rows = [
        ("training images", f"{data.train_count} from {data.source} ({class_text})"),
        ("validation", val),
        ("network", f"{c.family.upper()} ResNet-{c.net.depth}" + (f", global {c.net.global_dim}-D, local {c.net.local_dim}-D"
                                                                   if c.family == "delg" else "")),
        ("initial weights", "; ".join(init_lines) if init_lines else "random (no --init, no backbone_weights)"),
    ]
    if frozen:
        rows.append(("frozen", frozen))
    rows += [
        ("optimiser", f"{c.optim.optimizer} lr {c.optim.lr:g}" + (f" (heads {c.optim.head_lr:g})" if c.optim.head_lr else "")
         + f", {c.optim.scheduler.value} schedule"),
        ("steps", f"{c.trainer.max_steps} (batch {d.batch_size}, {d.image_size} px {d.augment}, {c.trainer.precision}; "
                  f"{epochs_for(c, data):.1f} passes over the images)"),
        ("run folder", str(folder) + (f" (resuming {checkpoint})" if checkpoint else "")),
    ]
    return rows


def run_landmark_command(method: str, words: list[str], *, options: dict[str, Any], preset: Optional[str], out: Optional[Path],
                         resume: Optional[Path], overwrite: bool, progress: bool) -> None:
    """Resolve the config, check the data and run folder, train, print the summary."""
    from delfi.config import ConfigError
    from delfi.train.config import resolve_train_config
    from delfi.train.landmark_config import LandmarkTrainConfig
    from delfi.train.trainer import (
        RunFolderError,
        check_run_folder,
        check_trainer_settings,
        checkpoint_train_config,
        is_secondary_process,
        prepare_run_folder,
        resolve_checkpoint,
        train,
    )

    stray = [w for w in words if "=" not in w]
    if stray:
        raise fail(f"unexpected argument(s) {' '.join(stray)}: overrides look like key=value")
    words = expand_short_keys(words, LandmarkTrainConfig)
    checkpoint = base = None
    try:
        if resume is not None:
            if preset is not None:
                raise fail("--preset cannot be combined with --resume: the run continues with the config in its checkpoint "
                           "(change settings with key=value overrides)")
            checkpoint = resolve_checkpoint(resume)
            base = checkpoint_train_config(checkpoint)
            if base.get("method") != method:
                raise fail(f"--resume {checkpoint}: a {base.get('method')!r} run, not {method!r}: "
                           f"continue it with delfi train {base.get('method')} --resume ...")
            out = out if out is not None else checkpoint.parent
        elif out is None:
            raise fail("give --out DIR (a new or empty folder for the run), or --resume CKPT to continue a run")
        from delfi.train.config import load_train_preset

        chosen = None if base else (preset or DEFAULT_PRESETS[method])
        if chosen is not None:
            preset_method = load_train_preset(chosen).get("method", method)
            if preset_method != method:
                raise fail(f"--preset {chosen} is a {preset_method!r} recipe; this command trains {method!r}")
        config = resolve_train_config(chosen, words, ("options", {**options, "method": method}), base=base,
                                      schema=LandmarkTrainConfig)  # fmt: skip
        check_run_folder(out, resume=checkpoint is not None, overwrite=overwrite)
    except (ConfigError, RunFolderError) as exc:
        raise fail(str(exc)) from None
    console = stderr_console()
    if is_secondary_process():
        from rich.console import Console

        console = Console(stderr=True, quiet=True)
    from delfi.train.landmark_data import load_landmark_data

    try:
        data = load_landmark_data(config)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        check_trainer_settings(config)
    except ValueError as exc:
        raise fail(f"cannot train: {exc}") from None
    if data.skipped:
        report_failures(console, "left out of training", ["image or line", "reason"], [(str(p), r) for p, r in data.skipped])
    try:
        folder = prepare_run_folder(out, resume=checkpoint is not None, overwrite=overwrite, method=method)
    except RunFolderError as exc:
        raise fail(str(exc)) from None
    init_lines = []
    if config.net.backbone_weights:
        init_lines.append(f"backbone {config.net.backbone_weights}")
    if config.net.init_from:
        init_lines.append(f"--init {config.net.init_from} (tensors of the same name and shape)")
    if config.method == "delf-keypoint" and not init_lines:
        console.print("[yellow]warning: the keypoint stage freezes a random backbone: give --init (a delf-finetune "
                      "checkpoint) or backbone_weights=FILE[/yellow]", highlight=False)
    console.print(summary_table(f"delfi train {method}", _summary_rows(config, data, folder, checkpoint, init_lines)))
    try:
        result = train(config, folder, data=data, resume=checkpoint, command=["delfi", *sys.argv[1:]], progress=progress,
                       console=console)  # fmt: skip
    except ValueError as exc:
        raise fail(f"cannot train: {str(exc).splitlines()[0]}") from None
    rows = [("steps", str(result.steps)), ("last checkpoint", str(result.last))]
    start, last = result.initial_metrics or {}, result.final_metrics or {}
    for key in sorted(set(start) | set(last)):
        before = f"{start[key]:.3f}" if key in start else "-"
        after = f"{last[key]:.3f}" if key in last else "-"
        rows.append((f"val/{key}", f"{before} at start -> {after} last"))
    if result.best is not None:
        rows.append(("best checkpoint", f"{result.best} ({result.monitor} {result.best_score:.3f})"))
    if result.skipped_nan:
        rows.append(("skipped steps (non-finite)", str(result.skipped_nan)))
    rows.append(("extract with", f"delfi extract PHOTOS --preset {_extract_preset(config)} --weights {result.best or result.last} --out F.h5"))
    rows.append(("logs", f"tensorboard --logdir {folder}"))
    console.print(summary_table("done", rows))


def _extract_preset(config: Any) -> str:
    if config.method == "vpr":
        return "vpr-delg"
    return "delf" if config.family == "delf" else "delg"
