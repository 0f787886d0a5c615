"""Losses of the multi-level attention keypoint method (pure functions and one combining module).

The network gives, per image, tuples over L levels (ResNet layer2/3/4 resampled to stride 8, all
on ONE grid of h x w cells): ``features`` (B, C_l, h, w) frozen backbone activations,
``reconstruction`` (B, C_l, h, w) their decoding, ``encoded`` (B, 64, h, w) descriptor maps (not
normalised) and ``attention`` (B, 1, h, w) scores >= 0. Training has two stages:

**Stage 1** (``kind="encoder"``): the encoder learns to describe.

    reconstruction = sum_l MSE(reconstruction_l, features_l)      (target detached)
    triplet        = sum_l D2-Net triplet margin loss on the cell correspondences

**Stage 2** (``kind="distinctiveness+"``, the default): the attention learns where descriptors are
distinctive. For a correspondence k (cell ``idx1_k`` of map 1 <-> cell ``idx2_k`` of map 2) with
unit descriptors d1_k, d2_k, ``m1_k`` counts the cells of map 2 (all of them, the true partner
included) whose descriptor lies closer than ``margin`` (Euclidean) to d1_k, ``m2_k`` likewise in
map 1 for d2_k; the target score is ``(1 + m) ** -tau`` (1 for a unique descriptor, 0.5 for one
with 15 look-alikes at tau 0.25) and::

    distinctiveness = sum_l [mean_k |s1_k - t(m1_k)| + mean_k |s2_k - t(m2_k)|]
    peaky           = sum_l (peakiness_loss(att1_l) + peakiness_loss(att2_l)) / 2
    total           = distinctiveness + peaky_lambda * peaky

The counts are constants: only the attention scores receive gradient. ``kind="triplet-weighted"``
replaces the distinctiveness term by the triplet loss weighted by ``s1_k s2_k`` (D2-Net's
detection weighting), which trains both descriptors and scores.

**Correspondences** (`cell_correspondences`): a cell (row i, column j) of a stride-s map has its
centre at pixel ``(s j + (s-1)/2, s i + (s-1)/2)`` (x right, y down, the centre of the top-left
pixel at (0, 0)). The flow is sampled bilinearly there; the cell is valid when every pixel the
interpolation uses (those with a non-zero weight: 4, or 2 or 1 when a centre coordinate is an
integer) is inside the image, masked valid and has a finite flow. Its image-2 position ``p`` goes
to cell ``floor((p - (s-1)/2) / s + 0.5)`` per coordinate (rounding halves up), kept when inside
map 2.

**Triplet** (`triplet_margin_loss`, D2-Net's loss): with ``d(a, b) = 2 - 2 a.b`` the squared
distance of unit vectors, ``p_k = d(d1_k, d2_k)`` and ``n_k`` the smallest distance from d1_k to
a map-2 cell farther than ``safe_radius`` cells (Chebyshev) from ``idx2_k``, or from d2_k to a
map-1 cell farther than ``safe_radius`` from ``idx1_k``; ``loss = mean_k relu(margin + p_k - n_k)``
(or the ``s1_k s2_k``-weighted mean). A correspondence with no cell outside the radius on either
side is dropped.

**Batches** (`MultiLevelLoss`): a pair with fewer than ``min_correspondences`` correspondences is
left out of the correspondence terms (triplet, distinctiveness); these are summed over levels and
averaged over the used pairs, and are a graph-connected 0 when no pair is usable. Reconstruction
and peakiness use every image of the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MULTILEVEL_KINDS",
    "MultiLevelLoss",
    "MultiLevelLossConfig",
    "cell_correspondences",
    "distinctiveness_loss",
    "distinctiveness_targets",
    "neighbour_counts",
    "peakiness_loss",
    "reconstruction_loss",
    "triplet_margin_loss",
]

MULTILEVEL_KINDS = ("encoder", "distinctiveness+", "triplet-weighted")
_COUNT_ELEMENTS = 1 << 22  # distances held at once by `neighbour_counts` (16 MiB of float32)
_EPS = 1e-12


# ---------------------------------------------------------------- correspondences


def _cell_centres(n: int, stride: int, device: torch.device, offset: float | None = None) -> Tensor:
    """Pixel coordinate (n,) float32 of the centres of n cells of a stride-``stride`` map whose
    cell 0 is centred at ``offset`` (default ``(stride - 1) / 2``, D2-Net's)."""
    offset = (stride - 1) / 2 if offset is None else float(offset)
    return torch.arange(n, device=device, dtype=torch.float32) * stride + offset


def _interpolation_taps(centres: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For coordinates (n,): the two pixels (n,) long (clamped into the image), the weight of the
    second, and whether every pixel with a non-zero weight is inside [0, size)."""
    low = torch.floor(centres)
    frac = centres - low
    second = frac > 0
    inside = (low >= 0) & (low + second.float() <= size - 1)
    i0 = low.long().clamp(0, size - 1)
    i1 = (low.long() + second.long()).clamp(0, size - 1)
    return i0, i1, frac, inside


def cell_correspondences(
    flow: Tensor,
    mask: Tensor | None,
    stride: int,
    map_size: tuple[int, int],
    *,
    map_size2: tuple[int, int] | None = None,
    offset: float | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Cell-to-cell correspondences of two stride-``stride`` feature maps, per batch item.

    Args:
        flow: (B, 2, H, W) for each pixel of image 1 its (x, y) in image 2 (pixel centres at
            integers); non-finite values are invalid.
        mask: (B, H, W) bool flow validity, or None (valid wherever the flow is finite).
        stride: pixels per cell.
        map_size: (h, w) of map 1 (and of map 2 unless ``map_size2`` is given).
        map_size2: (h2, w2) of map 2 when it differs.
        offset: the pixel centre of cell 0 (both maps): ``(stride - 1) / 2`` by default (D2-Net's
            cells); a network's receptive-field centre otherwise (ResNet layer2: 0).

    Returns:
        B tuples ``(idx1, idx2)``: (N,) long flat indices ``i * w + j`` into map 1 and
        ``i2 * w2 + j2`` into map 2, in the row-major order of map 1's cells.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, H, W), got {tuple(flow.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    B, _, H, W = flow.shape
    if mask is not None and tuple(mask.shape) != (B, H, W):
        raise ValueError(f"mask must be (B, H, W) = {(B, H, W)}, got {tuple(mask.shape)}")
    h, w = map_size
    h2, w2 = map_size2 if map_size2 is not None else map_size
    device = flow.device
    y0, y1, fy, in_y = _interpolation_taps(_cell_centres(h, stride, device, offset), H)
    x0, x1, fx, in_x = _interpolation_taps(_cell_centres(w, stride, device, offset), W)
    Y0, Y1, X0, X1 = y0[:, None], y1[:, None], x0[None, :], x1[None, :]
    flow = flow.float()
    corners = [flow[:, :, Y, X] for Y, X in ((Y0, X0), (Y0, X1), (Y1, X0), (Y1, X1))]  # (B, 2, h, w)
    valid = (in_y[:, None] & in_x[None, :]).expand(B, h, w)
    for corner in corners:
        valid = valid & torch.isfinite(corner).all(1)
    if mask is not None:
        m = mask.bool()
        for Y, X in ((Y0, X0), (Y0, X1), (Y1, X0), (Y1, X1)):
            valid = valid & m[:, Y, X]
    wy, wx = fy.view(1, 1, h, 1), fx.view(1, 1, 1, w)
    safe = [torch.where(torch.isfinite(c), c, torch.zeros_like(c)) for c in corners]
    sampled = (
        (1 - wy) * ((1 - wx) * safe[0] + wx * safe[1]) + wy * ((1 - wx) * safe[2] + wx * safe[3])
    )  # (B, 2, h, w)
    origin = (stride - 1) / 2 if offset is None else float(offset)
    cells = torch.floor((sampled - origin) / stride + 0.5)
    j2, i2 = cells[:, 0], cells[:, 1]
    valid = valid & (j2 >= 0) & (j2 < w2) & (i2 >= 0) & (i2 < h2)
    flat1 = torch.arange(h * w, device=device)
    flat2 = (i2.clamp(0, h2 - 1) * w2 + j2.clamp(0, w2 - 1)).long().reshape(B, -1)
    out = []
    for b in range(B):
        keep = valid[b].reshape(-1)
        out.append((flat1[keep], flat2[b][keep]))
    return out


# ---------------------------------------------------------------- distinctiveness


def neighbour_counts(descriptors: Tensor, others: Tensor, margin: float, chunk_size: int | None = None) -> Tensor:
    """For each row of ``descriptors`` (N, D): how many rows of ``others`` (M, D) lie at a
    Euclidean distance strictly below ``margin``; (N,) long, no gradient.

    Rows are processed ``chunk_size`` at a time (None: as many as keep about 4M distances in
    memory), and distances are computed from differences (not the matmul expansion) so that a
    distance of exactly ``margin`` is not counted.
    """
    if descriptors.dim() != 2 or others.dim() != 2 or descriptors.shape[1] != others.shape[1]:
        raise ValueError(f"need (N, D) and (M, D), got {tuple(descriptors.shape)} and {tuple(others.shape)}")
    N, M = descriptors.shape[0], others.shape[0]
    counts = torch.zeros(N, dtype=torch.long, device=descriptors.device)
    if N == 0 or M == 0:
        return counts
    if chunk_size is None:
        chunk_size = max(1, _COUNT_ELEMENTS // M)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.no_grad(), torch.autocast(device_type=descriptors.device.type, enabled=False):
        a, b = descriptors.detach().float(), others.detach().float()
        for start in range(0, N, chunk_size):
            dist = torch.cdist(a[start : start + chunk_size], b, compute_mode="donot_use_mm_for_euclid_dist")
            counts[start : start + chunk_size] = (dist < margin).sum(1)
    return counts


def distinctiveness_targets(counts: Tensor, tau: float = 0.25) -> Tensor:
    """Target scores ``(1 + counts) ** -tau`` (float32, same shape as ``counts``)."""
    return (1 + counts.float()) ** -tau


def _flat_descriptors(encoded: Tensor) -> Tensor:
    """(D, h, w) map -> (h * w, D) float32 rows, L2-normalised."""
    if encoded.dim() != 3:
        raise ValueError(f"encoded map must be (D, h, w), got {tuple(encoded.shape)}")
    return F.normalize(encoded.float().flatten(1), dim=0, eps=_EPS).t()


def _flat_scores(scores: Tensor, cells: int, name: str) -> Tensor:
    """(h, w) or (1, h, w) score map -> (h * w,) float32."""
    if scores.numel() != cells:
        raise ValueError(f"{name} must have one score per cell ({cells}), got shape {tuple(scores.shape)}")
    return scores.float().reshape(-1)


def distinctiveness_loss(
    encoded1: Tensor,
    encoded2: Tensor,
    scores1: Tensor,
    scores2: Tensor,
    idx1: Tensor,
    idx2: Tensor,
    margin: float = 1.0,
    tau: float = 0.25,
) -> Tensor:
    """Stage-2 score loss of ONE pair at ONE level (scalar float32).

    Args:
        encoded1, encoded2: (D, h1, w1), (D, h2, w2) descriptor maps (normalised here).
        scores1, scores2: (h1, w1), (h2, w2) attention scores ((1, h, w) accepted).
        idx1, idx2: (N,) long flat cell indices of the correspondences.

    Returns ``mean_k |s1[idx1_k] - t(m1_k)| + mean_k |s2[idx2_k] - t(m2_k)|`` with
    ``t = distinctiveness_targets`` and ``m`` the `neighbour_counts` of each side's descriptor
    among ALL descriptors of the other map; gradient reaches the scores only. 0 (connected to the
    scores) when N = 0.
    """
    with torch.autocast(device_type=scores1.device.type, enabled=False):
        d1, d2 = _flat_descriptors(encoded1.detach()), _flat_descriptors(encoded2.detach())
        s1 = _flat_scores(scores1, d1.shape[0], "scores1")
        s2 = _flat_scores(scores2, d2.shape[0], "scores2")
        if idx1.numel() == 0:
            return 0 * (s1.sum() + s2.sum())
        t1 = distinctiveness_targets(neighbour_counts(d1[idx1], d2, margin), tau)
        t2 = distinctiveness_targets(neighbour_counts(d2[idx2], d1, margin), tau)
        return (s1[idx1] - t1).abs().mean() + (s2[idx2] - t2).abs().mean()


# ---------------------------------------------------------------- peakiness, reconstruction


def peakiness_loss(attention: Tensor, n: int = 32) -> Tensor:
    """``relu(1 - mean(maxpool_{n+1}(a) - avgpool_{n+1}(a)))`` with ``a = avgpool_3(attention)``
    (stride 1, paddings 1 and n/2; average pools count the zero padding, PyTorch's default);
    attention (B, 1, h, w) -> scalar float32. ``n`` must be even and >= 2."""
    if n < 2 or n % 2:
        raise ValueError(f"peakiness window n must be even and >= 2, got {n}")
    if attention.dim() != 4:
        raise ValueError(f"attention must be (B, 1, h, w), got {tuple(attention.shape)}")
    with torch.autocast(device_type=attention.device.type, enabled=False):
        a = F.avg_pool2d(attention.float(), 3, stride=1, padding=1)
        peaks = F.max_pool2d(a, n + 1, stride=1, padding=n // 2)
        means = F.avg_pool2d(a, n + 1, stride=1, padding=n // 2)
        return torch.relu(1 - (peaks - means).mean())


def _levels(value: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (value,) if isinstance(value, Tensor) else tuple(value)


def reconstruction_loss(features: Tensor | Sequence[Tensor], reconstruction: Tensor | Sequence[Tensor]) -> Tensor:
    """Sum over levels of ``MSE(reconstruction_l, features_l)`` (features detached); tuples of
    (B, C_l, h, w) tensors, or single tensors for one level. Scalar float32."""
    features, reconstruction = _levels(features), _levels(reconstruction)
    if len(features) != len(reconstruction) or not features:
        raise ValueError(f"need as many reconstructions as feature levels (>= 1), got {len(reconstruction)} and {len(features)}")
    with torch.autocast(device_type=features[0].device.type, enabled=False):
        total = features[0].new_zeros((), dtype=torch.float32)
        for level, (target, decoded) in enumerate(zip(features, reconstruction)):
            if target.shape != decoded.shape:
                raise ValueError(f"level {level}: reconstruction {tuple(decoded.shape)} != features {tuple(target.shape)}")
            total = total + F.mse_loss(decoded.float(), target.detach().float())
        return total


# ---------------------------------------------------------------- triplet


def _hardest_outside(queries: Tensor, table: Tensor, centres: Tensor, width: int, radius: int) -> Tensor:
    """min over rows c of ``table`` (M, D) with Chebyshev cell distance > radius from ``centres``
    (N,) of ``2 - 2 q.c``, for each row q of ``queries`` (N, D); +inf where no row qualifies."""
    M = table.shape[0]
    cells = torch.arange(M, device=table.device)
    rows, cols = cells // width, cells % width
    cheb = torch.maximum(
        (rows[None, :] - (centres // width)[:, None]).abs(), (cols[None, :] - (centres % width)[:, None]).abs()
    )
    dist = 2 - 2 * queries @ table.t()  # (N, M)
    return dist.masked_fill(cheb <= radius, float("inf")).min(dim=1).values


def triplet_margin_loss(
    encoded1: Tensor,
    encoded2: Tensor,
    idx1: Tensor,
    idx2: Tensor,
    margin: float = 1.0,
    safe_radius: int = 4,
    scores1: Tensor | None = None,
    scores2: Tensor | None = None,
) -> Tensor:
    """D2-Net's hardest-negative triplet margin loss of ONE pair at ONE level (scalar float32).

    Args:
        encoded1, encoded2: (D, h1, w1), (D, h2, w2) descriptor maps (normalised here).
        idx1, idx2: (N,) long flat cell indices of the correspondences.
        margin: triplet margin on ``d = 2 - 2 a.b``.
        safe_radius: negatives must be more than this many cells (Chebyshev) from the partner.
        scores1, scores2: (h1, w1), (h2, w2) scores, both or neither: weight each term by
            ``s1_k s2_k`` (normalised by their sum).

    Returns ``mean_k relu(margin + p_k - n_k)`` over the correspondences having a negative on at
    least one side (see the module docstring), or the weighted mean; 0 (connected to the inputs)
    when none remains.
    """
    if (scores1 is None) != (scores2 is None):
        raise ValueError("triplet_margin_loss: give both scores1 and scores2, or neither")
    if safe_radius < 0:
        raise ValueError(f"safe_radius must be >= 0, got {safe_radius}")
    with torch.autocast(device_type=encoded1.device.type, enabled=False):
        d1, d2 = _flat_descriptors(encoded1), _flat_descriptors(encoded2)
        weighted = scores1 is not None
        if weighted:
            s1 = _flat_scores(scores1, d1.shape[0], "scores1")
            s2 = _flat_scores(scores2, d2.shape[0], "scores2")
        zero = 0 * (encoded1.float().sum() + encoded2.float().sum())
        if weighted:
            zero = zero + 0 * (s1.sum() + s2.sum())
        if idx1.numel() == 0:
            return zero
        q1, q2 = d1[idx1], d2[idx2]  # (N, D)
        positive = 2 - 2 * (q1 * q2).sum(1)
        negative = torch.minimum(
            _hardest_outside(q1, d2, idx2, encoded2.shape[-1], safe_radius),
            _hardest_outside(q2, d1, idx1, encoded1.shape[-1], safe_radius),
        )
        keep = torch.isfinite(negative)
        if not bool(keep.any()):
            return zero
        losses = torch.relu(margin + positive[keep] - negative[keep])
        if not weighted:
            return losses.mean()
        w = s1[idx1][keep] * s2[idx2][keep]
        return (w * losses).sum() / w.sum().clamp_min(_EPS)


# ---------------------------------------------------------------- combined


@dataclass(frozen=True)
class MultiLevelLossConfig:
    """Which stage and its settings (see the module docstring)."""

    kind: str = "distinctiveness+"  # encoder | distinctiveness+ | triplet-weighted
    margin: float = 1.0  # triplet margin (on 2 - 2 a.b) and distinctiveness radius (Euclidean)
    safe_radius: int = 4  # cells (Chebyshev) around the partner excluded from the negatives
    min_correspondences: int = 128  # pairs with fewer are left out of the correspondence terms
    tau: float = 0.25  # distinctiveness target exponent
    peaky_n: int = 32  # peakiness window (even)
    peaky_lambda: float = 0.2  # stage-2 peakiness weight
    reconstruction_weight: float = 1.0  # stage 1
    triplet_weight: float = 1.0  # stage 1 and triplet-weighted

    def __post_init__(self) -> None:
        if self.kind not in MULTILEVEL_KINDS:
            raise ValueError(f"multilevel loss: kind={self.kind!r} is not one of {', '.join(MULTILEVEL_KINDS)}")
        if not self.margin > 0:
            raise ValueError(f"multilevel loss: margin must be > 0, got {self.margin}")
        if isinstance(self.safe_radius, bool) or not isinstance(self.safe_radius, int) or self.safe_radius < 0:
            raise ValueError(f"multilevel loss: safe_radius must be an integer >= 0, got {self.safe_radius!r}")
        if (
            isinstance(self.min_correspondences, bool)
            or not isinstance(self.min_correspondences, int)
            or self.min_correspondences < 1
        ):
            raise ValueError(f"multilevel loss: min_correspondences must be an integer >= 1, got {self.min_correspondences!r}")
        if not self.tau > 0:
            raise ValueError(f"multilevel loss: tau must be > 0, got {self.tau}")
        if isinstance(self.peaky_n, bool) or not isinstance(self.peaky_n, int) or self.peaky_n < 2 or self.peaky_n % 2:
            raise ValueError(f"multilevel loss: peaky_n must be an even integer >= 2, got {self.peaky_n!r}")
        for key in ("peaky_lambda", "reconstruction_weight", "triplet_weight"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"multilevel loss: {key} must be >= 0, got {getattr(self, key)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> MultiLevelLossConfig:
        """Build from a mapping, refusing unknown keys with the allowed ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"multilevel loss: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**values)


def _grid_size(levels: tuple[Tensor, ...], name: str) -> tuple[int, int]:
    """The (h, w) shared by every level's (B, C, h, w) map."""
    sizes = {tuple(t.shape[-2:]) for t in levels}
    if len(sizes) != 1:
        raise ValueError(f"multilevel loss: all levels of {name!r} must share one grid, got sizes {sorted(sizes)}")
    return sizes.pop()


class MultiLevelLoss(nn.Module):
    """The batch loss of the chosen stage (no parameters); see the module docstring."""

    def __init__(self, config: MultiLevelLossConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config if isinstance(config, MultiLevelLossConfig) else MultiLevelLossConfig.from_mapping(config)

    def forward(
        self,
        out1: Mapping[str, Sequence[Tensor]],
        out2: Mapping[str, Sequence[Tensor]],
        flow: Tensor,
        mask: Tensor | None,
        stride: int,
        offset: float | None = None,
    ) -> dict[str, Tensor]:
        """Loss of a batch of pairs.

        Args:
            out1, out2: network outputs of images 1 and 2: tuples over levels of ``encoded``
                (B, D, h, w), ``attention`` (B, 1, h, w) (stage 2), ``features`` and
                ``reconstruction`` (B, C_l, h, w) (stage 1).
            flow: (B, 2, H, W) image 1 -> image 2 pixel positions; mask: (B, H, W) bool or None.
            stride: pixels per cell of the maps; offset: the pixel centre of cell 0
                (`cell_correspondences`).

        Returns float32 scalars: ``total``; ``reconstruction`` and ``triplet`` (encoder),
        ``distinctiveness`` and ``peaky`` (distinctiveness+), ``triplet`` and ``peaky``
        (triplet-weighted), all unweighted; ``pairs`` the number of pairs used by the
        correspondence terms.
        """
        c = self.config
        enc1, enc2 = tuple(out1["encoded"]), tuple(out2["encoded"])
        if len(enc1) != len(enc2) or not enc1:
            raise ValueError(f"multilevel loss: need the same number (>= 1) of levels, got {len(enc1)} and {len(enc2)}")
        stage2 = c.kind != "encoder"
        att1 = tuple(out1["attention"]) if stage2 else ()
        att2 = tuple(out2["attention"]) if stage2 else ()
        if stage2 and not len(att1) == len(att2) == len(enc1):
            raise ValueError(
                f"multilevel loss: attention needs one map per level ({len(enc1)}), got {len(att1)} and {len(att2)}"
            )
        pairs = cell_correspondences(
            flow, mask, stride, _grid_size(enc1, "encoded"), map_size2=_grid_size(enc2, "encoded"), offset=offset
        )
        used = [b for b, (idx1, _) in enumerate(pairs) if idx1.numel() >= c.min_correspondences]

        if c.kind == "distinctiveness+":
            sources = att1 + att2
        elif c.kind == "triplet-weighted":
            sources = enc1 + enc2 + att1 + att2
        else:
            sources = enc1 + enc2
        term = 0 * sum(t.float().sum() for t in sources)  # graph-connected 0
        for b in used:
            idx1, idx2 = pairs[b]
            for level in range(len(enc1)):
                if c.kind == "distinctiveness+":
                    term = term + distinctiveness_loss(
                        enc1[level][b], enc2[level][b], att1[level][b], att2[level][b], idx1, idx2, c.margin, c.tau
                    )
                else:
                    scores = (att1[level][b], att2[level][b]) if c.kind == "triplet-weighted" else (None, None)
                    term = term + triplet_margin_loss(
                        enc1[level][b], enc2[level][b], idx1, idx2, c.margin, c.safe_radius, *scores
                    )
        term = term / max(len(used), 1)
        result: dict[str, Tensor] = {}
        if c.kind == "encoder":
            reconstruction = (
                reconstruction_loss(out1["features"], out1["reconstruction"])
                + reconstruction_loss(out2["features"], out2["reconstruction"])
            ) / 2
            result["reconstruction"] = reconstruction
            result["triplet"] = term
            total = c.reconstruction_weight * reconstruction + c.triplet_weight * term
        else:
            peaky = sum(
                (peakiness_loss(a1, c.peaky_n) + peakiness_loss(a2, c.peaky_n)) / 2 for a1, a2 in zip(att1, att2)
            )
            result["peaky"] = peaky
            if c.kind == "distinctiveness+":
                result["distinctiveness"] = term
                total = term + c.peaky_lambda * peaky
            else:
                result["triplet"] = term
                total = c.triplet_weight * term + c.peaky_lambda * peaky
        result["pairs"] = torch.tensor(float(len(used)), device=flow.device)
        return {"total": total, **result}

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind}, margin={c.margin}, safe_radius={c.safe_radius}, min_correspondences={c.min_correspondences}"
