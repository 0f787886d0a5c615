"""Peak memory of decoding a large image at a small working size (`decode_image`).

Measured in a fresh subprocess with ``resource.getrusage`` (Pillow's C buffers are invisible to
tracemalloc): the growth of the peak resident size while decoding. Measured for a 4000 x 4000 RGB
image at a 320 px working size (peak RSS of the process, 220 MB after imports): full decode (the old
path) 698 MB for PNG and JPEG; `decode_image` 290 MB (PNG: its 8-bit pixels are decoded whole) and
230 MB (JPEG: drafted at 1/8 by the decoder). A 10000 x 10000 PNG of 289 KB peaks at 615 MB
(the old path needed about 4 GB). The growth is an upper bound test: the import peak can hide part of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIDE = 4000
MB = 1 << 20

_MEASURE = """
import json, resource, sys
from delfi.io.images import decode_image, read_image
path, mode = sys.argv[1], sys.argv[2]
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
before = peak()
if mode == "full":
    shape = tuple(read_image(path).shape)
else:
    shape = tuple(decode_image(path, lambda w, h: (w * 320 // max(w, h), h * 320 // max(w, h))).image.shape)
print(json.dumps({"growth": peak() - before, "shape": shape}))
"""


def _measure(path: Path, mode: str = "reduced") -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.stack([np.broadcast_to(ramp[None, :], (SIDE, SIDE)), np.broadcast_to(ramp[:, None], (SIDE, SIDE)),
                    np.full((SIDE, SIDE), 128, np.float32)], axis=2).astype(np.uint8)  # fmt: skip
    image = Image.fromarray(rgb)
    del rgb
    paths = {"png": folder / "large.png", "jpeg": folder / "large.jpg"}
    image.save(paths["png"], compress_level=1)
    image.save(paths["jpeg"], quality=80)
    return paths


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kB on Linux only")
def test_large_png_costs_its_8_bit_pixels_not_float_copies(large):
    result = _measure(large["png"])
    assert tuple(result["shape"]) == (3, 320, 320)
    pixels = SIDE * SIDE * 3  # bytes of the decoded 8-bit image
    assert result["growth"] < 1.6 * pixels + 40 * MB, f"{result['growth'] / MB:.0f} MB"  # full read: ~10x pixels


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kB on Linux only")
def test_large_jpeg_is_drafted_by_the_decoder(large):
    result = _measure(large["jpeg"])
    assert tuple(result["shape"]) == (3, 320, 320)
    assert result["growth"] < 40 * MB, f"{result['growth'] / MB:.0f} MB"  # 1/8 scale: 500 x 500 x 3 bytes
