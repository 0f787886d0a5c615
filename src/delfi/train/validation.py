"""Validation during training: MMA of the current network on synthetic homography pairs.

For each pair (crop 1, crop 2, the homography crop 1 -> crop 2), from the network's dense outputs
at the crops' own resolution (one scale, no pyramid):

1. **detection**: pixels whose repeatability is the maximum of its 3x3 neighbourhood (max-pool
   NMS), with reliability >= ``reliability_threshold`` and repeatability >=
   ``repeatability_threshold``; the ``top_k`` best by ``reliability * repeatability``;
2. **descriptors**: the dense descriptors at those pixels (already L2-normalised);
3. **matching**: mutual nearest neighbours by cosine similarity (`delfi.match.nn.mutual_nn`);
4. **correctness**: a match (i, j) is correct when crop-1 keypoint i, projected by the homography,
   lies within ``t`` pixels of crop-2 keypoint j (pixel centres at integers, as the homography).

The pair's precision at ``t`` is correct / matches (0 when there is no match, e.g. no keypoint passes
the thresholds); MMA@t is the mean over pairs (pairs without matches count as 0, so a network that
detects nothing scores 0). The D2-Net HPatches protocol is the same except its multi-scale
extraction and averaging over real sequences; these numbers are for model selection and learning
checks, not for comparison with published HPatches figures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from delfi.eval.hpatches import pair_errors
from delfi.extract.detect import r2d2_keypoint_mask, top_k_indices
from delfi.match.nn import mutual_nn
from delfi.models.r2d2 import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["THRESHOLDS", "detect", "pair_precisions", "evaluate_pairs"]

THRESHOLDS = (1.0, 3.0, 5.0)


def normalise(images: Tensor) -> Tensor:
    """[0, 1] RGB (B, 3, H, W) -> ImageNet-normalised input of the network."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def detect(reliability: Tensor, repeatability: Tensor, top_k: int, rel_thr: float, rep_thr: float) -> tuple[Tensor, Tensor]:
    """Keypoints of one image from (H, W) maps: (xy (N, 2) long, score (N,)), best first."""
    rel, rep = reliability.float(), repeatability.float()
    keep = r2d2_keypoint_mask(rel[None, None], rep[None, None], rel_thr, rep_thr)[0, 0]
    y, x = torch.nonzero(keep, as_tuple=True)
    score = (rel * rep)[y, x]
    order = top_k_indices(score, top_k)
    return torch.stack([x[order], y[order]], 1), score[order]


def pair_precisions(outputs1: dict, outputs2: dict, homographies: Tensor, top_k: int, rel_thr: float, rep_thr: float,
                    thresholds=THRESHOLDS) -> dict[str, Tensor]:
    """Per-pair precision at each threshold (B, T), keypoint counts (B, 2) and match counts (B,)."""
    B = homographies.shape[0]
    precisions = torch.zeros(B, len(thresholds), dtype=torch.float64)
    keypoints = torch.zeros(B, 2, dtype=torch.float64)
    matches = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        xy1, _ = detect(outputs1["reliability"][b, 0], outputs1["repeatability"][b, 0], top_k, rel_thr, rep_thr)
        xy2, _ = detect(outputs2["reliability"][b, 0], outputs2["repeatability"][b, 0], top_k, rel_thr, rep_thr)
        keypoints[b] = torch.tensor([len(xy1), len(xy2)], dtype=torch.float64)
        d1 = outputs1["descriptors"][b][:, xy1[:, 1], xy1[:, 0]].T.float()
        d2 = outputs2["descriptors"][b][:, xy2[:, 1], xy2[:, 0]].T.float()
        pairs = mutual_nn(d1, d2).indices
        matches[b] = len(pairs)
        if len(pairs) == 0:
            continue
        error = torch.from_numpy(pair_errors(xy1, xy2, pairs, homographies[b]))
        for t, thr in enumerate(thresholds):
            precisions[b, t] = (error <= thr).double().mean()
    return {"precisions": precisions, "keypoints": keypoints, "matches": matches}


@torch.no_grad()
def evaluate_pairs(net, pairs, top_k: int = 1000, rel_thr: float = 0.7, rep_thr: float = 0.7,
                   thresholds=THRESHOLDS, batch_size: int = 8, device: str | torch.device = "cpu") -> dict[str, float]:
    """MMA of ``net`` (an `R2D2Net`, evaluated in eval mode) on a list of pair dicts
    (``image1``, ``image2`` in [0, 1], ``homography``): ``{"mma@3": ..., "keypoints": ..., "matches": ...}``."""
    was_training = net.training
    net.eval()
    rows, kps, ms = [], [], []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            im1 = torch.stack([p["image1"] for p in chunk]).to(device)
            im2 = torch.stack([p["image2"] for p in chunk]).to(device)
            hs = torch.stack([torch.as_tensor(p["homography"]) for p in chunk])
            out = pair_precisions(net(normalise(im1)), net(normalise(im2)), hs, top_k, rel_thr, rep_thr, thresholds)
            rows.append(out["precisions"])
            kps.append(out["keypoints"])
            ms.append(out["matches"])
    finally:
        net.train(was_training)
    return summarise(torch.cat(rows), torch.cat(kps), torch.cat(ms), thresholds)


def summarise(precisions: Tensor, keypoints: Tensor, matches: Tensor, thresholds=THRESHOLDS) -> dict[str, float]:
    result = {f"mma@{threshold_name(t)}": float(precisions[:, i].mean()) for i, t in enumerate(thresholds)}
    result["keypoints"] = float(keypoints.mean()) if len(keypoints) else 0.0
    result["matches"] = float(matches.mean()) if len(matches) else 0.0
    return result


def threshold_name(t: float) -> str:
    return f"{t:g}"
