"""Training throughput and peak memory of DELF (finetune, keypoint), DELG and DELG-VPR (and R2D2), as JSON.

    python benchmarks/train_speed.py                        # 4 methods x 224, 512 px x float32, bf16
    python benchmarks/train_speed.py --quick                # 224 px, 1 timed step (about 2 minutes on 2 idle cores)
    python benchmarks/train_speed.py --methods delg,vpr --sizes 512 --precisions bf16 --batch 8 --steps 3
    python benchmarks/train_speed.py --data PHOTOS/ [--vpr-data SF_XS/] [key=value ...]   # your photos
    python benchmarks/train_speed.py --methods r2d2 [--crop 192 --device cuda]               # R2D2 (see below)

Each configuration (method x ``--sizes`` x ``--precisions``) runs in a fresh subprocess (the script
re-invokes itself with ``--one METHOD SIZE PRECISION``), so each peak RSS is that configuration's
alone; the allocator setting of the ``delfi`` command (`delfi.runtime.limit_heap_fragmentation`) is
applied first. The config is the method's preset (``delfi/configs/train/<method>.yaml``) with
``data.image_size=SIZE``, ``data.batch_size=--batch``, ``trainer.precision`` 32-true / bf16-mixed,
validation off, ``data.resize`` scaled with the size where the preset resizes before cropping
(delf-finetune 256/224, delf-keypoint 900/720), then the trailing ``key=value`` overrides. The
classifier heads have the data's class count (synthetic: 8 classes; vpr: the places of each group),
so GLDv2-size heads (80k classes) would add to the step. Numbers (images/s = batch / seconds, median
over ``--steps`` timed steps after ``--warmup`` steps):

- ``step_images_per_s``, ``step_seconds``: one full optimiser step of `LandmarkModule` on a random
  batch already in memory: ``losses(batch)`` (forward + loss, under ``torch.autocast("cpu",
  bfloat16)`` for bf16, channels-last as the trainer sets it), backward, gradient-norm clipping
  where the preset clips, ``optimizer.step()`` (the preset's optimiser); ``step_split`` gives the
  median seconds of ``forward_loss``, ``backward`` and ``optimizer`` (clipping included);
- ``bare_images_per_s``, ``bare_seconds``: the bare forward + backward of the same network (what
  the method trains: `LandmarkModule.outputs`, frozen parts frozen, gamma scaling as in the step)
  with a trivial loss (the sum of the outputs' means): no heads, no loss, no optimiser (``--steps``
  passes right after the step's, which warmed the kernels up);
- ``data_images_per_s``: what the training data pipeline delivers on its own: `LabelledImages` /
  `GroupImages` items (decode + the preset's augmentation) through the trainer's own DataLoader
  (`LandmarkDataModule.train_dataloader`) with the worker count the trainer picks
  (``data_workers``: `delfi.train.config.loader_workers`, unless ``data.num_workers=`` is given), the
  main process idle; images of ``--data-batches`` batches over the time from the first batch to the
  last (``data_first_batch_s``: worker start-up and the first batch); ``data_images_per_s_0_workers``:
  the same in the main process (``num_workers=0``, torch's threads);
- ``train_images_per_s``: end to end, the real `delfi.train.trainer.train` run (Lightning, the
  DataLoader with its workers competing with the training threads for the cores, logging, the
  scheduler) for ``--warmup + --steps`` steps, timed from the end of the last warm-up step to the
  end of the last step; ``train_between_steps_s``: median time between one step's end and the next
  one's start (waiting for data, Lightning's bookkeeping);
- ``data_keeps_up``: ``data_images_per_s >= step_images_per_s`` (the pipeline alone feeds the step);
  ``train_vs_bare`` / ``train_vs_step``: ``train_images_per_s`` over ``bare_images_per_s`` /
  ``step_images_per_s`` (1.0: training runs at the speed of the bare network / the in-memory step);
- ``peak_rss_mib``: the process's peak RSS after the model step and the bare pass (the training
  memory of the network at this size and batch); ``peak_rss_mib_train``: the whole process's peak
  after the end-to-end run too (data loader worker processes are not included).

The numbers are only meaningful on an otherwise idle machine: with torch's default threads, passes
run 10-100x slower while other processes hold cores (OpenMP stalls); on a shared machine
``--threads 1`` gives stable (one-core) numbers. Each row has the 1-minute ``load_average_1m`` at its
start (this script's own previous configuration included).

Data: without ``--data``, a synthetic labelled set (``make_synthetic_landmarks`` on scikit-image's
photos, 8 classes, saved as JPEG quality 90 like most photo collections) and, for vpr, a synthetic
sf-xs-style map (``make_synthetic_vpr``, 24 places x 3 views, ``vpr.min_images_per_class=3``) are
written to a temporary folder, once per size, with images of twice the training size so decoding and
augmentation do real work. ``--data FOLDER`` (one sub-folder per class) and ``--vpr-data ROOT``
(``ROOT/train``) measure on your photos instead.

``--methods r2d2`` (not in the default list) runs the R2D2 training-step benchmark: batch ``--batch``
pairs of ``--crop`` (192) px crops, both images through the network, the official loss (AP
reliability + cosim repeatability N=16 + peaky N=16), backward and Adam (lr 1e-4, weight decay
5e-4); bf16 is autocast in channels-last as the trainer does. Its row has ``step_seconds``,
``step_images_per_s`` (2 images per pair), the split ``network_fwd_bwd_s`` (both passes + backward
of a trivial loss) / ``loss_fwd_bwd_s`` (the loss and its backward on fixed network outputs) /
``optimizer_s``, and ``peak_rss_mib``; no data pipeline numbers. ``--device cuda`` applies to r2d2 only.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

LANDMARK_METHODS = ("delf-finetune", "delf-keypoint", "delg", "vpr")
PRECISIONS = {"float32": "32-true", "bf16": "bf16-mixed"}
SYNTHETIC_CLASSES = 8
SYNTHETIC_VPR = {"places": 24, "train_per_place": 3}  # views per place; vpr.min_images_per_class below
SYNTHETIC_VPR_OVERRIDES = ["vpr.min_images_per_class=3"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
                elif key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu": model,
        "cores": cores,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("amx", "avx512"))),
        "amx": any(f.startswith("amx") for f in flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return info


# ------------------------------------------------------------------------------------------- data


def make_classification_data(out: Path, size: int, images: int, seed: int = 0) -> Path:
    """Synthetic landmark classes of ``2 * size`` px JPEGs (at least ``images`` in all) in ``out``."""
    from PIL import Image

    from delfi.datasets.synthetic_landmarks import make_synthetic_landmarks, skimage_photos

    objects, backgrounds = skimage_photos()
    per_class = max(2, math.ceil(images / SYNTHETIC_CLASSES))
    made = make_synthetic_landmarks(out, objects, backgrounds, classes=SYNTHETIC_CLASSES, per_class=per_class,
                                    size=2 * size, seed=seed)  # fmt: skip
    for rel in made.boxes:  # PNG -> JPEG, as most photo collections (GLDv2) are stored
        png = out / rel
        with Image.open(png) as image:
            image.convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    return out


def make_vpr_data(out: Path, size: int, seed: int = 0) -> Path:
    """A synthetic sf-xs-style map of ``2 * size`` px views in ``out`` (``out/train``)."""
    from delfi.datasets.synthetic_vpr import make_synthetic_vpr
    from delfi.demo.photos import PHOTOS, photo_path

    photos = [photo_path(p) for p in PHOTOS if p.role == "scene"]
    make_synthetic_vpr(out, photos, size=2 * size, seed=seed, val_places=1, test_places=1, **SYNTHETIC_VPR)
    return out


def landmark_config(method: str, size: int, precision: str, batch: int, data: Path | None, vpr_data: Path | None,
                    overrides: Sequence[str] = (), max_steps: int = 1000):
    """The preset of ``method`` at this size, batch and precision, validation off, then ``overrides``."""
    from delfi.train.config import load_train_preset, resolve_train_config
    from delfi.train.landmark_config import LandmarkTrainConfig

    preset = load_train_preset(method)
    words = [f"data.image_size={size}", f"data.batch_size={batch}", f"trainer.precision={PRECISIONS[precision]}",
             "val.enabled=false", f"trainer.max_steps={max_steps}", f"trainer.checkpoint_every_n_steps={max_steps}",
             "trainer.log_every_n_steps=1"]  # fmt: skip
    d = preset.get("data", {})
    if d.get("augment") == "resize-crop" and "resize" in d and "image_size" in d:  # keep the preset's resize / crop ratio
        words.append(f"data.resize={max(size, round(size * d['resize'] / d['image_size']))}")
    if method == "vpr":
        if vpr_data is None:
            raise ValueError("vpr needs --vpr-data (a place-recognition folder with train/)")
        words.append(f"data.root={vpr_data}")
    else:
        if data is None:
            raise ValueError(f"{method} needs --data (one sub-folder of images per class)")
        words.append(f"data.folder={data}")
    return resolve_train_config(method, [*words, *overrides], schema=LandmarkTrainConfig)


# ------------------------------------------------------------------------------------ measurements


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def random_batch(batch: int, size: int, classes: int, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(batch, 3, size, size, generator=g),
            "label": torch.randint(0, max(1, classes), (batch,), generator=g),
            "group": torch.zeros(batch, dtype=torch.long), "skipped": [""] * batch}  # fmt: skip


def measure_model(config, num_classes: list[int], precision: str, steps: int, warmup: int) -> dict[str, Any]:
    """The in-memory optimiser step and the bare forward + backward (module docstring)."""
    import torch

    from delfi.train.landmark_module import LandmarkModule

    class Stepped(LandmarkModule):
        """`global_step` counts this loop's steps, as the trainer's does (delf-keypoint draws each
        step's gamma factor from it, so the step and the trainer see the same image sizes)."""

        step_index = 0

        @property
        def global_step(self) -> int:
            return self.step_index

    torch.manual_seed(config.seed)
    module = Stepped(config, num_classes).train()
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    clip = float(config.optim.gradient_clip_val or 0.0)
    batch = random_batch(config.data.batch_size, config.data.image_size, num_classes[0])
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731

    def step() -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            total = module.losses(batch)["total"]
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        t3 = time.perf_counter()
        module.step_index += 1
        return t1 - t0, t2 - t1, t3 - t2, float(total.detach())

    def bare() -> float:
        t0 = time.perf_counter()
        module.zero_grad(set_to_none=True)
        with autocast():
            out = module.outputs(module.gamma_scale(batch["image"]))
            trivial = sum(v.float().mean() for v in out.values() if torch.is_tensor(v) and v.requires_grad)
        trivial.backward()
        module.step_index += 1
        return time.perf_counter() - t0

    for _ in range(warmup):
        step()
    timed = [step() for _ in range(steps)]
    module.step_index = warmup  # the bare passes see the timed steps' inputs (no warm-up of their own: the step's warmed the kernels)
    bare_times = [bare() for _ in range(steps)]
    step_seconds = _median([a + b + c for a, b, c, _ in timed])
    bare_seconds = _median(bare_times)
    n = config.data.batch_size
    result = {
        "step_seconds": step_seconds,
        "step_images_per_s": n / step_seconds,
        "step_split": {"forward_loss_s": _median([t[0] for t in timed]), "backward_s": _median([t[1] for t in timed]),
                       "optimizer_s": _median([t[2] for t in timed])},  # fmt: skip
        "bare_seconds": bare_seconds,
        "bare_images_per_s": n / bare_seconds,
        "loss": timed[-1][3],
        "trained_parameters": sum(p.numel() for p in params),
        "channels_last": bool(module.channels_last),
    }
    del module, optimizer, params, batch
    gc.collect()
    return result


def measure_data(config, data, workers: int | None, batches: int) -> dict[str, float]:
    """Images per second of the trainer's DataLoader on its own (``workers`` None: the trainer's count)."""
    from delfi.train.config import loader_workers
    from delfi.train.landmark_data import LandmarkDataModule

    cfg = copy.deepcopy(config)
    if workers is not None:
        cfg.data.num_workers = workers
    loader = LandmarkDataModule(cfg, data).train_dataloader()
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    images = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a small data set: the next epoch (worker start-up included, as in training)
            iterator = iter(loader)
            batch = next(iterator)
        images += int(batch["image"].shape[0])
    seconds = time.perf_counter() - first
    del iterator
    return {"images_per_s": images / seconds, "first_batch_s": first - started, "workers": loader_workers(cfg)}


def measure_train(config, data, steps: int, warmup: int, work: Path) -> dict[str, float]:
    """The real `delfi.train.trainer.train` for ``warmup + steps`` steps (module docstring)."""
    import lightning.pytorch as pl

    from delfi.train.trainer import prepare_run_folder, train

    warmup = max(1, warmup)
    cfg = copy.deepcopy(config)
    cfg.trainer.max_steps = warmup + steps
    cfg.trainer.checkpoint_every_n_steps = 10**9  # no save inside the run (train() saves last.ckpt after it)

    class StepTimes(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

    times = StepTimes()
    out = prepare_run_folder(work / f"run-{cfg.method}", method=cfg.method)
    result = train(cfg, out, data=data, command=["benchmarks/train_speed.py"], callbacks=[times], progress=False,
                   logger=False)  # fmt: skip
    ends, starts = times.ends, times.starts
    if len(ends) <= warmup:
        raise RuntimeError(f"the trainer ran {len(ends)} steps, fewer than warm-up + 1")
    seconds = ends[-1] - ends[warmup - 1]
    timed = len(ends) - warmup
    return {"images_per_s": timed * cfg.data.batch_size / seconds, "seconds_per_step": seconds / timed,
            "between_steps_s": _median([starts[i] - ends[i - 1] for i in range(warmup, len(ends))]),
            "steps": int(result.steps)}  # fmt: skip


def measure(method: str, size: int, precision: str, *, batch: int = 8, steps: int = 3, warmup: int = 1,
            data: str | os.PathLike | None = None, vpr_data: str | os.PathLike | None = None,
            overrides: Sequence[str] = (), data_batches: int = 8, threads: int = 0, end_to_end: bool = True,
            work: str | os.PathLike | None = None) -> dict[str, Any]:
    """One row of the report (module docstring) for ``method`` at ``size`` px and ``precision``
    (float32 | bf16), in this process. Without ``data`` / ``vpr_data`` the synthetic set is written
    into ``work`` (a temporary folder when None)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="delfi-train-speed-") as scratch:
        work = Path(work) if work is not None else Path(scratch)
        overrides = list(overrides)
        if method == "vpr" and vpr_data is None:
            vpr_data = make_vpr_data(work / f"vpr-{size}", size)
            overrides = SYNTHETIC_VPR_OVERRIDES + overrides
        elif method != "vpr" and data is None:
            data = make_classification_data(work / f"classes-{size}", size, batch * (data_batches + 1))
        config = landmark_config(method, size, precision, batch, Path(data) if data else None,
                                 Path(vpr_data) if vpr_data else None, overrides)  # fmt: skip
        from delfi.train.landmark_data import load_landmark_data

        listed = load_landmark_data(config)
        row: dict[str, Any] = {"method": method, "size": size, "precision": precision, "batch": batch,
                               "threads": torch.get_num_threads(), "classes": listed.num_classes,
                               "train_images": listed.train_count,
                               "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}  # fmt: skip
        model = measure_model(config, listed.num_classes, precision, steps, warmup)
        row.update(model)
        row["peak_rss_mib"] = peak_rss_mib()
        with_workers = measure_data(config, listed, None, data_batches)
        without = measure_data(config, listed, 0, data_batches)
        row.update({"data_workers": with_workers["workers"], "data_images_per_s": with_workers["images_per_s"],
                    "data_first_batch_s": with_workers["first_batch_s"],
                    "data_images_per_s_0_workers": without["images_per_s"]})  # fmt: skip
        row["data_keeps_up"] = row["data_images_per_s"] >= row["step_images_per_s"]
        if end_to_end:
            run = measure_train(config, listed, steps, warmup, work)
            row.update({"train_images_per_s": run["images_per_s"], "train_seconds_per_step": run["seconds_per_step"],
                        "train_between_steps_s": run["between_steps_s"],
                        "train_vs_bare": run["images_per_s"] / row["bare_images_per_s"],
                        "train_vs_step": run["images_per_s"] / row["step_images_per_s"]})  # fmt: skip
        row["peak_rss_mib_train"] = peak_rss_mib()
        return row


# ------------------------------------------------------------------------------------------- R2D2


def _r2d2_batch(batch: int, crop: int, device, seed: int = 0):
    """Smooth random images and a translation flow with a validity mask (content does not change the
    cost of any term)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(2 * batch, 3, crop // 8, crop // 8, generator=g)
    images = F.interpolate(small, size=(crop, crop), mode="bilinear", align_corners=False)
    images = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    y, x = torch.meshgrid(torch.arange(crop, dtype=torch.float32), torch.arange(crop, dtype=torch.float32), indexing="ij")
    flow = torch.stack([x + 3.5, y - 2.25])[None].repeat(batch, 1, 1, 1)
    mask = (flow[:, 0] <= crop - 1) & (flow[:, 1] >= 0)
    from delfi.train.validation import normalise  # the network's ImageNet input normalisation

    images = normalise(images)
    return images[:batch].to(device), images[batch:].to(device), flow.to(device), mask.to(device)


def measure_r2d2(precision: str, *, batch: int = 8, crop: int = 192, steps: int = 3, warmup: int = 1,
                 arch: str = "quad_l2net", mchan: int = 4, device: str = "cpu", threads: int = 0) -> dict[str, Any]:
    """One R2D2 training step as the official ``train.py`` (module docstring)."""
    import torch

    from delfi.models.l2net import R2D2Net
    from delfi.train.losses import R2D2Loss

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = R2D2Net(arch, mchan, 128).to(device).train()
    loss_fn = R2D2Loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
    im1, im2, flow, mask = _r2d2_batch(batch, crop, device)
    if precision == "bf16":  # as the trainer (delfi.train.module.uses_channels_last): channels-last with bf16
        net = net.to(memory_format=torch.channels_last)
        im1, im2 = (im.contiguous(memory_format=torch.channels_last) for im in (im1, im2))
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=(precision == "bf16"))  # noqa: E731

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            o1, o2 = net(im1), net(im2)
            total = loss_fn(o1, o2, flow, mask, generator=torch.Generator(device=device).manual_seed(1))["total"]
        total.backward()
        optimizer.step()
        return total

    def network_only():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            o1, o2 = net(im1), net(im2)
            trivial = sum(v.float().mean() for o in (o1, o2) for v in o.values())
        trivial.backward()

    with torch.no_grad(), autocast():
        fixed = [{k: v.detach() for k, v in net(im).items()} for im in (im1, im2)]

    def loss_only():
        outs = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in fixed]
        with autocast():
            total = loss_fn(outs[0], outs[1], flow, mask, generator=torch.Generator(device=device).manual_seed(1))["total"]
        total.backward()

    def timed(fn, n):
        times = []
        for _ in range(n):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return _median(times)

    for _ in range(warmup):
        step()
    loss_value = float(step())
    step_s = timed(step, steps)
    row = {"method": "r2d2", "size": crop, "precision": precision, "batch": batch, "threads": torch.get_num_threads(),
           "device": device.type, "step_seconds": step_s, "step_images_per_s": 2 * batch / step_s,
           "network_fwd_bwd_s": timed(network_only, steps), "loss_fwd_bwd_s": timed(loss_only, steps)}  # fmt: skip
    network_only()
    row["optimizer_s"] = timed(optimizer.step, steps)
    row["loss"] = loss_value
    row["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


# -------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(LANDMARK_METHODS),
                        help=f"comma-separated, of {', '.join(LANDMARK_METHODS)}, r2d2 (default: the four landmark methods)")
    parser.add_argument("--sizes", default="224,512", help="training image sizes (px), comma-separated")
    parser.add_argument("--precisions", "--modes", dest="precisions", default="float32,bf16", help="float32, bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--data-batches", type=int, default=8, help="timed batches of the data-pipeline measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="224 px only, 1 timed step, 4 data batches")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the real trainer run")
    parser.add_argument("--data", default=None, help="class folders to measure the pipeline on (default: synthetic)")
    parser.add_argument("--vpr-data", default=None, help="a place-recognition root (ROOT/train) for vpr (default: synthetic)")
    parser.add_argument("--crop", type=int, default=192, help="r2d2: crop size (px)")
    parser.add_argument("--arch", default="quad_l2net", help="r2d2: network")
    parser.add_argument("--mchan", type=int, default=4, help="r2d2: channel multiplier")
    parser.add_argument("--device", default="cpu", help="r2d2 only: cpu or cuda")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "SIZE", "PRECISION"), default=None,
                        help="measure one configuration in this process and print its row")
    parser.add_argument("overrides", nargs="*", help="key=value training-config overrides (landmark methods)")
    return parser


def _apply_quick(args) -> None:
    if args.quick:
        args.sizes, args.steps, args.data_batches = "224", 1, min(args.data_batches, 4)


def run_one(args) -> dict[str, Any]:
    from delfi.runtime import limit_heap_fragmentation

    limit_heap_fragmentation()  # as the `delfi` command does before any work
    method, size, precision = args.one[0], int(args.one[1]), args.one[2]
    if precision not in PRECISIONS:
        raise SystemExit(f"precision: one of {', '.join(PRECISIONS)}, got {precision!r}")
    if method == "r2d2":
        return measure_r2d2(precision, batch=args.batch, crop=size, steps=args.steps, warmup=args.warmup, arch=args.arch,
                            mchan=args.mchan, device=args.device, threads=args.threads)  # fmt: skip
    return measure(method, size, precision, batch=args.batch, steps=args.steps, warmup=args.warmup, data=args.data,
                   vpr_data=args.vpr_data, overrides=args.overrides, data_batches=args.data_batches,
                   threads=args.threads, end_to_end=not args.no_end_to_end)  # fmt: skip


def _child(args, method: str, size: int, precision: str, data: Path | None, vpr_data: Path | None,
           overrides: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", method, str(size), precision,
               f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--data-batches={args.data_batches}", f"--threads={args.threads}", f"--arch={args.arch}",
               f"--mchan={args.mchan}", f"--device={args.device}"]  # fmt: skip
    if args.no_end_to_end:
        command.append("--no-end-to-end")
    if data is not None:
        command.append(f"--data={data}")
    if vpr_data is not None:
        command.append(f"--vpr-data={vpr_data}")
    started = time.perf_counter()
    done = subprocess.run(command + ["--", *overrides], capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return {"method": method, "size": size, "precision": precision, "batch": args.batch, "error": lines[-3:]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_seconds"] = time.perf_counter() - started
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    _apply_quick(args)
    if args.one:
        row = run_one(args)
        print(json.dumps(row))
        return row
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in LANDMARK_METHODS + ("r2d2",)]
    precisions = [p for p in args.precisions.split(",") if p]
    if unknown or any(p not in PRECISIONS for p in precisions):
        raise SystemExit(f"methods: of {', '.join(LANDMARK_METHODS)}, r2d2; precisions: of {', '.join(PRECISIONS)}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    data_info: dict[str, Any] = {"classification": args.data, "vpr": args.vpr_data}
    with tempfile.TemporaryDirectory(prefix="delfi-train-speed-") as tmp:
        for size in sizes if any(m != "r2d2" for m in methods) else []:
            data = Path(args.data) if args.data else None
            vpr_data = Path(args.vpr_data) if args.vpr_data else None
            if data is None and any(m in LANDMARK_METHODS and m != "vpr" for m in methods):
                data = make_classification_data(Path(tmp) / f"classes-{size}", size, args.batch * (args.data_batches + 1))
                data_info["classification"] = (f"synthetic landmarks: {SYNTHETIC_CLASSES} classes of JPEGs at twice the "
                                               "training size")  # fmt: skip
            if vpr_data is None and "vpr" in methods:
                vpr_data = make_vpr_data(Path(tmp) / f"vpr-{size}", size)
                data_info["vpr"] = (f"synthetic map: {SYNTHETIC_VPR['places']} places x {SYNTHETIC_VPR['train_per_place']} "
                                    "JPEG views at twice the training size")  # fmt: skip
            for method in (m for m in methods if m != "r2d2"):
                extra = SYNTHETIC_VPR_OVERRIDES if method == "vpr" and not args.vpr_data else []
                for precision in precisions:
                    row = _child(args, method, size, precision, data, vpr_data, extra + list(args.overrides))
                    rows.append(row)
                    _progress(row)
        if "r2d2" in methods:
            for precision in precisions:
                row = _child(args, "r2d2", args.crop, precision, None, None, [])
                rows.append(row)
                _progress(row)
    import torch

    report = {
        "benchmark": "training throughput (images/s) and peak RSS per method, size and precision",
        "machine": machine_info(),
        "threads": args.threads or torch.get_num_threads(),
        "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "data_batches": args.data_batches,
        "data": {k: v for k, v in data_info.items() if v is not None},
        "overrides": list(args.overrides),
        "rows": rows,
        "bf16_speedup": _speedups(rows),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report, indent=1))
    return report


def _speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    """float32 step seconds over bf16 step seconds, per ``method@size``."""
    by = {(r["method"], r["size"], r["precision"]): r for r in rows if "step_seconds" in r}
    return {f"{m}@{s}": by[(m, s, "float32")]["step_seconds"] / by[(m, s, "bf16")]["step_seconds"]
            for (m, s, p) in by if p == "float32" and (m, s, "bf16") in by}


def _progress(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['method']} {row['size']} {row['precision']}: error {row['error']}", file=sys.stderr, flush=True)
        return
    parts = [f"step {row['step_images_per_s']:.2f} im/s"]
    for key, label in (("bare_images_per_s", "bare"), ("data_images_per_s", "data"), ("train_images_per_s", "train")):
        if key in row:
            parts.append(f"{label} {row[key]:.2f}")
    print(f"{row['method']} {row['size']} {row['precision']}: {', '.join(parts)}, peak {row['peak_rss_mib']:.0f} MiB",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
