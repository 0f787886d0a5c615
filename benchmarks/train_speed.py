"""R2D2 training-step speed and peak memory, printed as JSON.

One training step as in the official ``train.py``: batch ``--batch`` (8) pairs of ``--crop`` (192)
px crops, both images through the network (two passes), the full official loss (AP reliability +
cosim repeatability N=16 + peaky N=16 with the official sampler), backward and Adam (lr 1e-4,
weight decay 5e-4). Each mode runs in its own subprocess, so peak RSS is that mode's alone:

- ``float32``: everything in float32;
- ``bf16``: the network under ``torch.autocast(bfloat16)`` in channels-last layout (as the trainer
  with Lightning's ``bf16-mixed``; the loss functions compute in float32 themselves).

Per mode: seconds per whole step (median of ``--steps`` after ``--warmup``), and the split
``network_fwd_bwd`` (both forward passes + backward of a trivial loss) vs ``loss_fwd_bwd`` (the
R2D2 loss and its backward on fixed network outputs), plus ``optimizer``; peak RSS in MiB.

    python benchmarks/train_speed.py                       # CPU, both modes
    python benchmarks/train_speed.py --device cuda --modes float32,bf16 --threads 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(batch: int, crop: int, device, seed: int = 0):
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


def run_mode(mode: str, args) -> dict:
    import torch

    from delfi.models.l2net import R2D2Net
    from delfi.train.losses import R2D2Loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = R2D2Net(args.arch, args.mchan, 128).to(device).train()
    loss_fn = R2D2Loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
    im1, im2, flow, mask = _batch(args.batch, args.crop, device)
    if mode == "bf16":  # as the trainer (delfi.train.module.uses_channels_last): channels-last with bf16
        net = net.to(memory_format=torch.channels_last)
        im1, im2 = (im.contiguous(memory_format=torch.channels_last) for im in (im1, im2))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=(mode == "bf16"))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            o1, o2 = net(im1), net(im2)
            total = loss_fn(o1, o2, flow, mask, generator=torch.Generator(device=device).manual_seed(1))["total"]
        total.backward()
        optimizer.step()
        return total

    def network_only():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            o1, o2 = net(im1), net(im2)
            trivial = sum(v.float().mean() for o in (o1, o2) for v in o.values())
        trivial.backward()

    with torch.no_grad(), autocast:
        fixed = [{k: v.detach() for k, v in net(im).items()} for im in (im1, im2)]

    def loss_only():
        outs = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in fixed]
        with autocast:
            total = loss_fn(outs[0], outs[1], flow, mask, generator=torch.Generator(device=device).manual_seed(1))["total"]
        total.backward()

    def optimizer_only():
        optimizer.step()

    def timed(fn, n):
        times = []
        for _ in range(n):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    for _ in range(args.warmup):
        step()
    loss_value = float(step())
    result = {
        "mode": mode,
        "step_s": timed(step, args.steps),
        "network_fwd_bwd_s": timed(network_only, args.steps),
        "loss_fwd_bwd_s": timed(loss_only, args.steps),
    }
    network_only()
    result["optimizer_s"] = timed(optimizer_only, args.steps)
    result["loss"] = loss_value
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="float32,bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--arch", default="quad_l2net")
    parser.add_argument("--mchan", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args)))
        return
    results = []
    for mode in args.modes.split(","):
        command = [sys.executable, __file__, "--child", mode] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("child", "modes")
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode:
            results.append({"mode": mode, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    info = {
        "benchmark": "r2d2 training step (official loss, Adam)",
        "batch_pairs": args.batch,
        "crop": args.crop,
        "arch": args.arch,
        "mchan": args.mchan,
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "results": results,
    }
    by_mode = {r["mode"]: r for r in results if "step_s" in r}
    if "float32" in by_mode and "bf16" in by_mode:
        info["bf16_speedup"] = by_mode["float32"]["step_s"] / by_mode["bf16"]["step_s"]
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
