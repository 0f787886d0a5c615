"""Running a network for inference without changing it: eval mode and inference mode, restored.

Extractors run on networks that may be in training (an extractor built on the trainer's network,
a validation pass between optimiser steps). `evaluating` puts every submodule in eval mode for the
duration of a block and then gives each one back its own previous mode (a frozen batch norm inside
a training network stays frozen); `inference` adds ``torch.inference_mode``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["evaluating", "inference", "inference_method"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block; afterwards every submodule has its previous ``training`` flag."""
    modes = [(m, m.training) for m in module.modules()]
    if not any(training for _, training in modes):
        yield module
        return
    for m, _ in modes:
        m.training = False
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def inference(module: nn.Module) -> Iterator[nn.Module]:
    """`evaluating` plus ``torch.inference_mode()``."""
    with evaluating(module), torch.inference_mode():
        yield module


def inference_method(method: F) -> F:
    """Decorate an extractor method: it runs with ``self.network`` in `inference`."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        with inference(self.network):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
