"""Turn a training checkpoint into a small weights file: the network and how it was made, nothing else.

A Lightning checkpoint of `delfi train` holds the optimiser state, loops and callbacks besides the
network (about 3x the network's size). `export_weights` keeps the network's tensors and the delfi
metadata (family, architecture, normalisation, provenance) and writes them with
`delfi.models.checkpoints.save_checkpoint`. The file depends only on the tensors and the metadata, so
the same training gives a byte-identical file; `provenance` entries given here replace the
checkpoint's (e.g. file names instead of one machine's absolute paths).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["export_weights"]


def export_weights(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    provenance: Mapping[str, Any] | None = None,
    keep_train_config: bool = True,
) -> Path:
    """Write the network of ``checkpoint`` (delfi / Lightning / official R2D2) to ``out``.

    Args:
        checkpoint: any checkpoint `load_checkpoint` reads.
        out: the weights file to write (atomically); refused when it is ``checkpoint`` itself.
        provenance: entries replacing the checkpoint's provenance entries of the same name.
        keep_train_config: keep the whole training config in the provenance (``train_config``).

    Raises:
        CheckpointError: ``checkpoint`` cannot be read (the message names it).
        ValueError: ``out`` is ``checkpoint``.
    """
    from delfi.models.checkpoints import load_checkpoint, save_checkpoint
    from delfi.models.networks import build_network

    source, target = Path(checkpoint), Path(out)
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"{target}: the output is the checkpoint being exported")
    info = load_checkpoint(source)
    network = build_network(info.family, info.config)
    network.load_state_dict(info.state_dict)
    record = dict(info.provenance)
    if not keep_train_config:
        record.pop("train_config", None)
    record.update(dict(provenance or {}))
    return save_checkpoint(target, network, family=info.family, config=dict(info.config),
                           normalisation=info.normalisation, provenance=record)
