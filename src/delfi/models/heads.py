"""Trainable heads of DELF / DELG style models (see ``docs/ALGORITHMS.md`` sections 1-2).

Every module here is a plain `torch.nn.Module`: parameters are registered, nothing is tied to a device
or dtype, so ``model.to(device)``, optimisers, ``state_dict`` and DDP all work as usual.

Shapes use B batch, C channels, H x W feature-map size, D feature dimension, K classes.

- `AttentionHead`: DELF attention, 1x1 conv -> [BN] -> ReLU -> 1x1 conv -> softplus (raw score >= 0).
- `attention_pool`: the attention-weighted pooled feature that trains the attention head.
- `Autoencoder`: DELG's local-descriptor reduction (the linear code is the descriptor).
- `GeM`: generalised-mean pooling (fixed or learnable ``p``).
- `Whitening`: DELG's FC "whitening" layer, optionally followed by L2 normalisation.
- `ArcFaceHead`, `CosFaceHead`, `CosineSoftmax`, `LinearClassifier`: classifier heads producing logits
  for softmax CE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionHead",
    "attention_pool",
    "Autoencoder",
    "GeM",
    "Whitening",
    "ArcFaceHead",
    "CosFaceHead",
    "CosineSoftmax",
    "LinearClassifier",
    "MARGIN_RULES",
]

POOL_REDUCTIONS = ("mean", "sum")
MARGIN_RULES = ("tf", "easy")


class AttentionHead(nn.Module):
    """DELF attention: 1x1 conv (C -> hidden) -> [BatchNorm] -> ReLU -> 1x1 conv (hidden -> 1) -> softplus.

    The output is a raw, unbounded-above score >= 0 (not a probability); DELF thresholds it at extraction.

    Args:
        in_channels: C, channels of the feature map (1024 for ResNet-50 ``layer3``).
        hidden: channels of the hidden layer (512).
        batch_norm: True as TF DELF; False as DeLF-pytorch (no BN; the first conv then keeps its bias
            either way).

    Shapes:
        forward: (B, C, H, W) -> (B, 1, H, W).
    """

    def __init__(self, in_channels: int = 1024, hidden: int = 512, batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels, self.hidden, self.batch_norm = int(in_channels), int(hidden), bool(batch_norm)
        self.conv1 = nn.Conv2d(self.in_channels, self.hidden, kernel_size=1)
        self.bn = nn.BatchNorm2d(self.hidden) if self.batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(self.hidden, 1, kernel_size=1)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) features -> (B, 1, H, W) attention logits (before the softplus)."""
        return self.conv2(F.relu(self.bn(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) features -> (B, 1, H, W) attention scores >= 0."""
        return F.softplus(self.logits(x))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden={self.hidden}, batch_norm={self.batch_norm}"


def attention_pool(features: Tensor, scores: Tensor, reduce: str = "mean", eps: float = 1e-12) -> Tensor:
    """Attention-weighted pooling of L2-normalised feature vectors.

    ``pooled[b] = reduce_{h,w} (features[b, :, h, w] / ||features[b, :, h, w]|| * scores[b, 0, h, w])``

    Args:
        features: (B, C, H, W) feature map; each position's C-vector is L2-normalised first.
        scores: (B, 1, H, W) attention (from `AttentionHead`).
        reduce: ``"mean"`` over H, W (TF DELF, the default) or ``"sum"`` (DeLF-pytorch).
        eps: guards the normalisation of all-zero vectors.

    Returns:
        (B, C) pooled features (fed to a classifier to train the attention).
    """
    if reduce not in POOL_REDUCTIONS:
        raise ValueError(f"reduce must be one of {POOL_REDUCTIONS}, got {reduce!r}")
    if features.ndim != 4 or scores.ndim != 4 or scores.shape[1] != 1:
        raise ValueError(
            f"features must be (B, C, H, W) and scores (B, 1, H, W), got {tuple(features.shape)} "
            f"and {tuple(scores.shape)}"
        )
    if scores.shape[0] != features.shape[0] or scores.shape[2:] != features.shape[2:]:
        raise ValueError(f"scores {tuple(scores.shape)} do not fit features {tuple(features.shape)}")
    weighted = F.normalize(features, p=2.0, dim=1, eps=eps) * scores
    return weighted.mean(dim=(2, 3)) if reduce == "mean" else weighted.sum(dim=(2, 3))


class Autoencoder(nn.Module):
    """DELG local-descriptor autoencoder: encoder 1x1 conv C -> code (linear), decoder 1x1 conv code -> C + ReLU.

    The code has no activation: it IS the local descriptor (L2-normalised at extraction). DELG trains it
    on stop-gradient backbone features with ``MSE(features, reconstruction)``.

    Args:
        in_channels: C (1024 for ResNet-50 ``layer3``).
        code: the descriptor dimension (128).

    Shapes:
        forward: (B, C, H, W) -> ((B, code, H, W), (B, C, H, W)).
    """

    def __init__(self, in_channels: int = 1024, code: int = 128) -> None:
        super().__init__()
        self.in_channels, self.code = int(in_channels), int(code)
        self.encoder = nn.Conv2d(self.in_channels, self.code, kernel_size=1)
        self.decoder = nn.Conv2d(self.code, self.in_channels, kernel_size=1)

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, code, H, W), no activation."""
        return self.encoder(x)

    def decode(self, code: Tensor) -> Tensor:
        """(B, code, H, W) -> (B, C, H, W), ReLU."""
        return F.relu(self.decoder(code))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (code (B, code, H, W), reconstruction (B, C, H, W))."""
        code = self.encode(x)
        return code, self.decode(code)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, code={self.code}"


class GeM(nn.Module):
    """Generalised-mean pooling: ``(mean_{h,w} clamp(x, eps)^p)^(1/p)`` per channel.

    p = 1 is average pooling, p -> inf approaches max pooling. Computed as
    ``exp((logsumexp(p * log x) - log(H*W)) / p)``, which is the same value without overflow for large p.

    Args:
        p: the exponent (TF DELG: 3, fixed; DELG-pytorch: learnable, initialised to 3).
        learnable: make ``p`` an `nn.Parameter` (else a buffer, saved in the state dict but not trained).
        eps: lower clamp of the input (GeM needs positive values).

    Shapes:
        forward: (B, C, H, W) -> (B, C).
    """

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        self.learnable, self.eps = bool(learnable), float(eps)
        value = torch.tensor(float(p))
        if self.learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C)."""
        if x.ndim != 4:
            raise ValueError(f"GeM expects (B, C, H, W), got {tuple(x.shape)}")
        p = self.p.to(x.dtype)
        logs = x.clamp(min=self.eps).log().flatten(2) * p  # (B, C, H*W)
        return torch.exp((torch.logsumexp(logs, dim=2) - math.log(logs.shape[2])) / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4g}, learnable={self.learnable}, eps={self.eps}"


class Whitening(nn.Module):
    """DELG's FC "whitening" layer: ``y = W x + b``, then (option) L2 normalisation.

    Args:
        in_dim: D_in (2048 for ResNet-50 ``layer4`` after GeM).
        out_dim: D_out (TF DELG 2048, DELG-pytorch 512).
        bias: learn a bias.
        normalize: L2-normalise the output (the global descriptor is unit length).

    Shapes:
        forward: (B, D_in) -> (B, D_out).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, normalize: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(int(in_dim), int(out_dim), bias=bias)
        self.normalize = bool(normalize)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D_in) -> (B, D_out)."""
        y = self.fc(x)
        return F.normalize(y, p=2.0, dim=-1) if self.normalize else y

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class CosineSoftmax(nn.Module):
    """Cosine classifier: ``scale * cos(theta)`` with both the weights and the features L2-normalised.

    Args:
        in_dim: D.
        num_classes: K.
        scale: the logit scale s (DELG 45.25 = sqrt(2048)).

    Shapes:
        forward: (B, D) -> (B, K) logits for softmax cross-entropy.
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 45.25) -> None:
        super().__init__()
        self.in_dim, self.num_classes, self.scale = int(in_dim), int(num_classes), float(scale)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, features: Tensor) -> Tensor:
        """(B, D) -> (B, K) cosine similarities in [-1, 1] to the normalised class weights."""
        cos = F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).t()
        return cos.clamp(-1.0, 1.0)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, D) [and (B,) labels, ignored] -> (B, K) logits ``scale * cos``."""
        return self.scale * self.cosine(features)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, scale={self.scale}"


class ArcFaceHead(CosineSoftmax):
    """ArcFace: cosine logits with an additive angular margin on the target class.

    For each sample, with ``theta = acos(cos)`` the angle to its target class y, the target logit becomes
    ``scale * cos(theta + m)``; all other logits stay ``scale * cos(theta_j)``. Where the margin applies:

    - ``margin_rule="tf"`` (TF DELG, default): only where ``theta <= pi - m`` (so ``theta + m`` stays
      within [0, pi], keeping the logit monotone in theta); elsewhere the target logit is unchanged.
    - ``margin_rule="easy"`` ("easy margin" of the ArcFace reference code): only where ``cos > 0``
      (``theta < pi / 2``); elsewhere unchanged.

    Without labels (inference / retrieval) there is no margin: the logits are ``scale * cos``.

    Args:
        in_dim: D.
        num_classes: K.
        margin: m in radians (TF DELG 0.1; DELG-pytorch 0.15).
        scale: s (TF DELG 45.25 = sqrt(2048); DELG-pytorch 30).
        margin_rule: ``"tf"`` or ``"easy"``, see above.

    Shapes:
        forward: (B, D), labels (B,) int64 -> (B, K) logits for softmax cross-entropy.
    """

    def __init__(self, in_dim: int, num_classes: int, margin: float = 0.1, scale: float = 45.25,
                 margin_rule: str = "tf") -> None:
        super().__init__(in_dim, num_classes, scale=scale)
        if margin_rule not in MARGIN_RULES:
            raise ValueError(f"margin_rule must be one of {MARGIN_RULES}, got {margin_rule!r}")
        if not 0.0 <= margin < math.pi:
            raise ValueError(f"margin must be in [0, pi), got {margin}")
        self.margin, self.margin_rule = float(margin), margin_rule

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, D) features, optional (B,) class indices -> (B, K) logits."""
        cos = self.cosine(features)
        if labels is None or self.margin == 0.0:
            return self.scale * cos
        labels = labels.to(device=cos.device, dtype=torch.long).reshape(-1)
        if labels.shape[0] != cos.shape[0]:
            raise ValueError(f"labels must be ({cos.shape[0]},), got {tuple(labels.shape)}")
        target = cos.gather(1, labels[:, None])  # (B, 1)
        # cos(theta + m) = cos cos(m) - sin sin(m); the clamp keeps the sqrt's gradient finite at |cos| = 1.
        sin = (1.0 - target * target).clamp(min=1e-12).sqrt()
        shifted = target * math.cos(self.margin) - sin * math.sin(self.margin)
        if self.margin_rule == "tf":
            apply = target >= math.cos(math.pi - self.margin)  # theta <= pi - m
        else:
            apply = target > 0.0  # theta < pi / 2
        new_target = torch.where(apply, shifted, target)
        logits = cos.scatter(1, labels[:, None], new_target)
        return self.scale * logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, margin_rule={self.margin_rule!r}"


class CosFaceHead(CosineSoftmax):
    """CosFace (large-margin cosine loss, as CosPlace trains place classes): the target logit is
    ``scale * (cos(theta) - m)``, the others ``scale * cos(theta_j)``; no margin without labels.

    Args:
        in_dim: D.
        num_classes: K.
        margin: m, subtracted from the target cosine (CosPlace 0.4).
        scale: s (CosPlace 30).

    Shapes:
        forward: (B, D), labels (B,) int64 -> (B, K) logits for softmax cross-entropy.
    """

    def __init__(self, in_dim: int, num_classes: int, margin: float = 0.4, scale: float = 30.0) -> None:
        super().__init__(in_dim, num_classes, scale=scale)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, D) features, optional (B,) class indices -> (B, K) logits."""
        cos = self.cosine(features)
        if labels is None or self.margin == 0.0:
            return self.scale * cos
        labels = labels.to(device=cos.device, dtype=torch.long).reshape(-1)
        if labels.shape[0] != cos.shape[0]:
            raise ValueError(f"labels must be ({cos.shape[0]},), got {tuple(labels.shape)}")
        margin = torch.zeros_like(cos).scatter(1, labels[:, None], self.margin)
        return self.scale * (cos - margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"


class LinearClassifier(nn.Module):
    """A plain linear classifier (logits ``W x + b`` for softmax CE), e.g. on the attention-pooled feature.

    Shapes:
        forward: (B, D) [and (B,) labels, ignored] -> (B, K).
    """

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(int(in_dim), int(num_classes), bias=bias)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.fc(features)
