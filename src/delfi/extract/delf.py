"""DELF / DELG extraction: image-size limits, pyramid sizes, attention selection, box NMS, query crops.

Pure functions on tensors; the model files run the network and call these. Keypoints follow delfi's
convention (x right, y down, centre of the top-left pixel at (0, 0); see `delfi.types`). Differences
from the reference implementations, all deliberate:

- TF reports box centres divided by the scale (``x_level / s``); delfi maps every level coordinate
  with ``x -> (x + 0.5) * f - 0.5``, f = original / level size per axis (`cells_to_keypoints`).
- Scales are the receptive-field size in original pixels (``rf.size / s``), not TF's ``1 / s``.
- Box IoU counts inclusive pixel extents (``+1`` in width and height); TF's IoU does not. A pair is
  suppressed when IoU > threshold, so ``iou_threshold >= 1`` never suppresses (TF's default).
- Selection keeps ``attention >= threshold`` (TF); DeLF-pytorch uses ``>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from delfi.extract.receptive import ReceptiveField, rf_boxes, rf_centres
from delfi.types import Features, rescale_keypoints

DELF_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
DELG_GLOBAL_SCALES = (0.7071, 1.0, 1.4142)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Size (w, h) of the pyramid level at ``scale``: ``(round(width * s), round(height * s))``.

    Python's `round` halves to even, exactly as TF's ``tf.round`` in the DELF/DELG exporters; the
    result is at least 1 pixel per side.
    """
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: Tensor, size: tuple[int, int], antialias: bool) -> Tensor:
    """Bilinear resize of (C, H, W) to (w, h); integer images are resized in float and rounded back."""
    x = image[None].float()
    out = F.interpolate(x, (size[1], size[0]), mode="bilinear", align_corners=False, antialias=antialias)[0]
    if image.is_floating_point():
        return out.to(image.dtype)
    info = torch.iinfo(image.dtype)
    return out.round().clamp(info.min, info.max).to(image.dtype)


def limit_image_size(
    image: Tensor,
    max_image_size: float | None,
    min_image_size: float | None = None,
    *,
    antialias: bool = True,
) -> tuple[Tensor, float]:
    """Resize so the longest side is <= ``max_image_size`` (or >= ``min_image_size``), as TF's ``ResizeImage``.

    The factor is ``max_image_size / longest`` when the longest side exceeds the maximum, else
    ``min_image_size / longest`` when it is below the minimum, else 1 (image returned unchanged). The
    new size is ``scaled_size(W, H, factor)``. Bilinear with ``antialias=True`` follows PIL's BILINEAR
    filter (the reference), whose support widens when downscaling.

    Args:
        image: (C, H, W) image, float or uint8.
        max_image_size, min_image_size: limits on the longest side; None (or < 0) means no limit.

    Returns:
        The (C, H', W') image and the nominal factor (H' ~ factor * H). The exact per-axis factors are
        the ratios of the integer sizes; map keypoints with those (`pyramid.level_factors`).
    """
    height, width = image.shape[-2:]
    longest = max(width, height)
    if max_image_size is not None and max_image_size >= 0 and longest > max_image_size:
        factor = max_image_size / longest
    elif min_image_size is not None and min_image_size >= 0 and longest < min_image_size:
        factor = min_image_size / longest
    else:
        return image, 1.0
    return _resize(image, scaled_size(width, height, factor), antialias), float(factor)


def cells_to_keypoints(
    rf: ReceptiveField, feature_h: int, feature_w: int, scale_xy: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Receptive-field centres and boxes of every feature cell of one level, in ORIGINAL pixels.

    Cell (i, j) (row-major order) has the box ``[s*j - p, s*i - p, s*j - p + r - 1, s*i - p + r - 1]`` in
    the level's pixels and its centre in the middle. Both corners and the centre are mapped to the
    original image with ``x -> (x + 0.5) * f - 0.5``.

    Args:
        rf: receptive field (size r, stride s, padding p) of the feature layer.
        feature_h, feature_w: feature map size.
        scale_xy: (fx, fy) = original size / level size per axis (`pyramid.level_factors`).

    Returns:
        centres (H*W, 2) (x, y) and boxes (H*W, 4) (x0, y0, x1, y1), float32, original pixels.
    """
    factor = (float(scale_xy[0]), float(scale_xy[1]))
    centres = rescale_keypoints(rf_centres(rf, feature_h, feature_w).float(), factor)
    boxes = rf_boxes(rf, feature_h, feature_w).float()
    corners = torch.cat([rescale_keypoints(boxes[:, :2], factor), rescale_keypoints(boxes[:, 2:], factor)], 1)
    return centres, corners


def select_level(scores: Tensor, threshold: float) -> Tensor:
    """Indices (K,) int64 of the entries of ``scores`` (N,) with ``score >= threshold``, ascending."""
    return torch.nonzero(scores.reshape(-1) >= threshold).reshape(-1)


def box_iou_inclusive(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one box (4,) with boxes (N, 4), ``[x0, y0, x1, y1]`` with inclusive extents (+1). Returns (N,)."""
    iw = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1]) + 1).clamp(min=0)
    inter = iw * ih
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)


def box_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    Boxes are visited by score, descending, ties in input order (stable); a box is dropped when its
    IoU (`box_iou_inclusive`) with an already kept box is > ``iou_threshold``. ``iou_threshold >= 1``
    keeps everything (only sorts and cuts). At most ``max_keep`` are kept (None or <= 0: no limit).

    Args:
        boxes: (N, 4) ``[x0, y0, x1, y1]``; scores: (N,).

    Returns:
        (K,) int64 indices into the inputs, on the scores' device.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    limit = max_keep if max_keep is not None and max_keep > 0 else order.numel()
    if iou_threshold >= 1.0:
        return order[:limit]
    sorted_boxes = boxes[order].detach().to("cpu", torch.float64)
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep: list[int] = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        suppressed[i + 1 :] |= box_iou_inclusive(sorted_boxes[i], sorted_boxes[i + 1 :]) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


@dataclass
class MultiScaleSelection:
    """Features selected over a pyramid, best first.

    Attributes:
        keypoints: (N, 2) receptive-field centres (x, y) in original pixels.
        scores: (N,) attention scores.
        scales: (N,) receptive-field size in original pixels, ``rf.size / scale``.
        descriptors: (N, D) L2-normalised descriptors.
        levels: (N,) int64 index of the pyramid level each feature came from.
    """

    keypoints: Tensor
    scores: Tensor
    scales: Tensor
    descriptors: Tensor
    levels: Tensor

    def to_features(self, image_size: tuple[int, int]) -> Features:
        return Features(self.keypoints, self.scores, self.descriptors, self.scales, image_size=image_size)


LevelOutput = tuple[float, Tensor, Tensor, tuple[int, int]]
"""(scale, attention (h, w), features (D, h, w), level image size (w, h))."""


def _level_threshold_indices(att: Tensor, threshold: float, halve: bool, min_threshold: float) -> Tensor:
    keep = select_level(att, threshold)
    while halve and keep.numel() == 0:
        threshold *= 0.5
        if threshold < min_threshold:
            break
        keep = select_level(att, threshold)
    return keep


def select_multiscale(
    levels: Sequence[LevelOutput],
    rf: ReceptiveField,
    original_size: tuple[int, int],
    *,
    score_threshold: float,
    iou_threshold: float = 1.0,
    top_k: int = 1000,
    halve_threshold_if_empty: bool = False,
    min_threshold: float = 0.001,
) -> MultiScaleSelection:
    """DELF keypoint selection over pyramid levels (see `delf_select`); returns the level indices too."""
    kps, boxes, scores, scales, descs, level_ids = [], [], [], [], [], []
    for index, (scale, attention, features, level_size) in enumerate(levels):
        depth, h, w = features.shape[-3:]
        att = attention.reshape(-1)
        if att.numel() != h * w:
            raise ValueError(f"attention has {att.numel()} cells, features {h}x{w}")
        keep = _level_threshold_indices(att, score_threshold, halve_threshold_if_empty, min_threshold)
        factor = (original_size[0] / level_size[0], original_size[1] / level_size[1])
        centres, cell_boxes = cells_to_keypoints(rf, h, w, factor)
        keep_cpu = keep.cpu()
        kps.append(centres[keep_cpu].to(att.device))
        boxes.append(cell_boxes[keep_cpu].to(att.device))
        scores.append(att[keep].float())
        scales.append(torch.full((keep.numel(),), rf.size / scale, dtype=torch.float32, device=att.device))
        descs.append(features.reshape(depth, h * w).t()[keep].float())
        level_ids.append(torch.full((keep.numel(),), index, dtype=torch.long, device=att.device))
    if not kps:
        raise ValueError("no pyramid levels given")
    all_scores = torch.cat(scores)
    kept = box_nms(torch.cat(boxes), all_scores, iou_threshold, top_k)
    return MultiScaleSelection(
        keypoints=torch.cat(kps)[kept],
        scores=all_scores[kept],
        scales=torch.cat(scales)[kept],
        descriptors=F.normalize(torch.cat(descs)[kept], dim=1),
        levels=torch.cat(level_ids)[kept],
    )


def delf_select(levels: Sequence[LevelOutput], rf: ReceptiveField, original_size: tuple[int, int], **options: Any) -> Features:
    """DELF local features from per-level attention and feature maps.

    Per level, keep cells with ``attention >= score_threshold``; with ``halve_threshold_if_empty``
    (DeLF-pytorch) a level that yields nothing retries with the threshold halved, giving up once it
    falls below ``min_threshold``. Levels are concatenated in the given order, ranked by attention
    (stable), box-NMS'ed on receptive-field boxes in original pixels, and cut to ``top_k``.

    Args:
        levels: per level ``(scale, attention (h, w), features (D, h, w), level size (w, h))``.
        rf: receptive field of the feature layer.
        original_size: (width, height) of the image the levels were resized from.

    Returns:
        Features sorted by score, descending: keypoints = RF centres, scales = ``rf.size / scale``,
        descriptors L2-normalised (PCA, if any, is the caller's).

    Keyword options are those of `select_multiscale` (``score_threshold``, ``iou_threshold``,
    ``top_k``, ``halve_threshold_if_empty``, ``min_threshold``).
    """
    return select_multiscale(levels, rf, original_size, **options).to_features(original_size)


def aggregate_global(descriptors_per_scale: Sequence[Tensor]) -> Tensor:
    """DELG multi-scale global descriptor: L2-normalise each (G,), sum, L2-normalise. Returns (G,)."""
    if len(descriptors_per_scale) == 0:
        raise ValueError("no global descriptors to aggregate")
    stacked = F.normalize(torch.stack([d.reshape(-1) for d in descriptors_per_scale]).float(), dim=1)
    return F.normalize(stacked.sum(0), dim=0)


class QueryCrop(NamedTuple):
    """A query cropped to its bounding box (revisited Oxford / Paris).

    Attributes:
        image: (C, h, w) the crop.
        offset_xy: (x, y) of the crop's top-left pixel in the full image.
        size_factor: ``max(w, h) / max(W, H)``.
        max_image_size, min_image_size: the limits to use for the crop, each multiplied by
            ``size_factor`` (not rounded, as TF); None stays None.
    """

    image: Tensor
    offset_xy: tuple[int, int]
    size_factor: float
    max_image_size: float | None
    min_image_size: float | None


def crop_query(
    image: Tensor,
    bbox: Sequence[float],
    max_image_size: float | None,
    min_image_size: float | None = None,
) -> QueryCrop:
    """Crop a query image to its bounding box, keeping the resolution it has in the full image.

    The box ``(x0, y0, x1, y1)`` uses PIL's crop convention (as revisitop's ``bbx`` with PIL):
    columns ``x0 <= x < x1``. It is rounded outward to whole pixels (``floor`` x0/y0, ``ceil`` x1/y1;
    TF rounds each to nearest) and clipped to the image. The size limits are multiplied by
    ``max(crop w, h) / max(W, H)`` (TF ``ResizeImage(resize_factor=...)``), so a crop of an image that
    would be downscaled is downscaled by the same factor: 1024x768 image, 512x384 box, max 1024 ->
    max 512.

    Args:
        image: (C, H, W); bbox: (x0, y0, x1, y1) in pixels.

    Returns:
        `QueryCrop` (image, offset_xy, size_factor, max_image_size, min_image_size).
    """
    height, width = image.shape[-2:]
    x0 = min(max(math.floor(bbox[0]), 0), width)
    y0 = min(max(math.floor(bbox[1]), 0), height)
    x1 = min(max(math.ceil(bbox[2]), 0), width)
    y1 = min(max(math.ceil(bbox[3]), 0), height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {tuple(bbox)} is empty inside a {width}x{height} image")
    crop = image[..., y0:y1, x0:x1]
    factor = max(x1 - x0, y1 - y0) / max(width, height)
    return QueryCrop(
        crop,
        (x0, y0),
        factor,
        None if max_image_size is None else max_image_size * factor,
        None if min_image_size is None else min_image_size * factor,
    )


def uncrop_keypoints(keypoints: Tensor, offset_xy: tuple[float, float]) -> Tensor:
    """Keypoints (N, 2) in crop pixels -> full-image pixels: add the crop's offset (x, y)."""
    return keypoints + torch.as_tensor(offset_xy, dtype=keypoints.dtype, device=keypoints.device)
