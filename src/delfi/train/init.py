"""Start a training run from trained weights instead of random ones (``net.init_from``), optionally
re-initialising heads (``net.reinit_heads``: ``clf`` reliability, ``sal`` repeatability).

A second stage can so retrain a head that saturated in the first: e.g. a reliability head pushed to 0
everywhere early in a short run (its softmax then has no gradient left) relearns from its initial
state on descriptors that are already good. The first stage's checkpoint may be any checkpoint
`delfi.models.checkpoints.load_checkpoint` reads, of the same architecture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

__all__ = ["HEADS", "check_heads", "initialise_network", "require_init_for_reinit"]

HEADS = ("clf", "sal")
"""The re-initialisable heads of `R2D2Net`: ``clf`` (reliability), ``sal`` (repeatability)."""


def check_heads(reinit_heads: Sequence[str]) -> None:
    """Refuse names that are not `HEADS` (ValueError naming the key and the choices)."""
    unknown = [h for h in reinit_heads if h not in HEADS]
    if unknown:
        raise ValueError(f"net.reinit_heads: unknown head(s) {', '.join(unknown)}; choose from {', '.join(HEADS)}")


def require_init_for_reinit(init_from: str | os.PathLike | None, reinit_heads: Sequence[str]) -> None:
    """Refuse heads to reset without trained weights to start from (ValueError saying what to give)."""
    if reinit_heads and init_from is None:
        raise ValueError(f"net.reinit_heads={list(reinit_heads)} resets heads of a trained network: give "
                         "net.init_from=CHECKPOINT (e.g. the last.ckpt of a first stage)")


def initialise_network(net: nn.Module, checkpoint: str | os.PathLike, reinit_heads: Sequence[str] = ()) -> None:
    """Load ``checkpoint`` into ``net`` (architectures must match), then reset ``reinit_heads``.

    Raises:
        ValueError: an unknown head, a checkpoint of another family or architecture (the message
            names the file and both architectures), or one `load_checkpoint` refuses.
    """
    from delfi.models.checkpoints import CheckpointError, load_checkpoint

    check_heads(reinit_heads)
    try:
        info = load_checkpoint(checkpoint).require_family("r2d2")
    except CheckpointError as exc:
        raise ValueError(f"net.init_from: {exc}") from None
    mine = net.architecture()
    theirs = {k: info.config.get(k, mine[k]) for k in mine}
    if theirs != mine:
        raise ValueError(f"net.init_from: {checkpoint} holds a {theirs} network, the run trains {mine}")
    net.load_state_dict(info.state_dict)
    for head in reinit_heads:
        getattr(net, head).reset_parameters()
