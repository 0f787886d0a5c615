"""Fixtures of the command-line tests: a random R2D2 checkpoint in the official format, test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from delfi.cli.app import app
from delfi.models.l2net import R2D2Net

# Low thresholds so that a random-weight network still yields keypoints.
LOW = ["reliability_threshold=0.0", "repeatability_threshold=0.0", "top_k=300", "min_size=32", "tile_pixels=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random R2D2 network saved in the official checkpoint format (with 'module.' prefixes)."""
    torch.manual_seed(0)
    net = R2D2Net()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "random_r2d2.pt"
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"net": "Quad_L2Net_ConfCFS()", "state_dict": state}, path)
    return path


def make_images(folder: Path, count: int, size=(96, 72)) -> list[Path]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


