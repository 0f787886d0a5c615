"""Extraction time of the multi-level attention extractor against its bare network, as JSON.

    python benchmarks/multilevel_extract.py                      # 1024 x 768, float32 and bfloat16
    python benchmarks/multilevel_extract.py --size 1600 1200 --precisions bfloat16 --repeats 5
    python benchmarks/multilevel_extract.py --image photo.jpg --weights runs/ml/best.ckpt

Per precision (median seconds over ``--repeats`` runs after one warm-up):

- ``bare_s``: the bare network forward the extraction needs, `MultiLevelNet.dense_maps` on the
  normalised image (backbone to layer4, the three encoders, resampling to the layer2 grid, the
  three attention heads) under inference mode and the same autocast / memory layout;
- ``extract_s``: `MultiLevel.extract` of the same image tensor (normalisation, the forward, 3x3
  NMS, sub-pixel refinement, the threshold, bilinear descriptors, sorting); ``ratio`` = extract_s /
  bare_s (the issue's target: at most 1.5);
- ``keypoints``: how many it returned (random weights unless ``--weights``: the selection then
  works on random attention, the count is not meaningful but the work is the same).

The image is random noise unless ``--image``; only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(width: int, height: int, precision: str, repeats: int, image=None, weights=None) -> dict:
    import delfi.models
    from delfi.models.resnet import NORMALISATION

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = delfi.models.create("multilevel", weights=weights, load=weights is not None, precision=precision,
                                    max_image_size=0)  # fmt: skip
    picture = image if image is not None else torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    batch = NORMALISATION[model.normalisation_name](picture[None]).contiguous(memory_format=torch.channels_last)

    def bare():
        with torch.inference_mode(), model.autocast():
            model.network.dense_maps(batch)

    bare_s = _timed(bare, repeats)
    found = []
    extract_s = _timed(lambda: found.append(model.extract(picture)), repeats)
    return {"precision": precision, "size": [int(picture.shape[-1]), int(picture.shape[-2])], "bare_s": round(bare_s, 4),
            "extract_s": round(extract_s, 4), "ratio": round(extract_s / bare_s, 3), "keypoints": len(found[-1].keypoints),
            "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("W", "H"))
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default=None)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    image = None
    if args.image:
        from delfi.io.images import read_image

        image = read_image(args.image)
    rows = [measure(*args.size, p, args.repeats, image, args.weights) for p in args.precisions.split(",")]
    print(json.dumps({"benchmark": "multilevel_extract", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
