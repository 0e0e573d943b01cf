"""Temporary changes to the user's model, always undone."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for the block only; every submodule's
    ``training`` flag is restored on exit, even after an exception.
    Anything that is not an ``nn.Module`` is left alone."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
