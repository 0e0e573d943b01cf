"""Reshape transforms: turn a layer's output into ``[B, C, *spatial]`` activations.

The three reference transforms are kept. When no transform is given, camlib
infers one from the activation's shape and the input's size (see
:func:`infer_reshape_transform`): token sequences ``[B, N, C]`` of vision
transformers (with class, distillation or register tokens in front) and
channels-last maps ``[B, h, w, C]`` (torchvision's Swin) need no hand-written
function.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "fasterrcnn_reshape_transform",
    "infer_reshape_transform",
    "swinT_reshape_transform",
    "tokens_to_grid",
    "vit_reshape_transform",
]

#: Most tokens that may precede the patch grid (class + distillation + registers).
MAX_PREFIX_TOKENS = 16
#: How far the vertical and horizontal strides may differ for an inexact grid.
_STRIDE_TOLERANCE = 1.15


def fasterrcnn_reshape_transform(x: dict) -> torch.Tensor:
    """Resize every feature map of an FPN output dict to the ``pool`` level's size
    (absolute values, bilinear) and concatenate them along channels."""
    target_size = x["pool"].shape[-2:]
    maps = [F.interpolate(torch.abs(value), target_size, mode="bilinear") for value in x.values()]
    return torch.cat(maps, dim=1)


def swinT_reshape_transform(tensor: torch.Tensor, height: int = 7, width: int = 7) -> torch.Tensor:
    """``[B, h*w, C]`` (or ``[B, h, w, C]``) tokens to a ``[B, C, h, w]`` map."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
    return result.permute(0, 3, 1, 2)


def vit_reshape_transform(tensor: torch.Tensor, height: int = 14, width: int = 14) -> torch.Tensor:
    """``[B, 1 + h*w, C]`` tokens (class token first) to a ``[B, C, h, w]`` map."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.permute(0, 3, 1, 2)


def tokens_to_grid(tensor: torch.Tensor, prefix: int, height: int, width: int) -> torch.Tensor:
    """Drop ``prefix`` leading tokens of ``[B, N, C]`` and lay the rest out as ``[B, C, h, w]``."""
    tokens = tensor[:, prefix:, :]
    return tokens.reshape(tensor.size(0), height, width, tensor.size(2)).permute(0, 3, 1, 2)


def _channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


def _stride_mismatch(input_hw: Sequence[int], h: int, w: int) -> float:
    """How much the vertical and horizontal strides of an h x w grid differ (ratio >= 1)."""
    stride_h, stride_w = input_hw[0] / h, input_hw[1] / w
    return math.exp(abs(math.log(stride_h / stride_w)))


def _grid_candidates(n: int, input_hw: Sequence[int]):
    """All (mismatch, h, w) with h * w == n."""
    for h in range(1, math.isqrt(n) + 1):
        if n % h == 0:
            for hh, ww in ((h, n // h), (n // h, h)):
                yield _stride_mismatch(input_hw, hh, ww), hh, ww


def _infer_token_grid(num_tokens: int, input_hw: Sequence[int]) -> Optional[tuple[int, int, int]]:
    """(prefix, h, w) for a token sequence, or None when no layout fits."""
    best = None
    for prefix in range(min(num_tokens, MAX_PREFIX_TOKENS + 1)):
        n = num_tokens - prefix
        if n < 4 * prefix:  # the grid must dominate the sequence
            break
        for mismatch, h, w in _grid_candidates(n, input_hw):
            if input_hw[0] * w == input_hw[1] * h:  # exact aspect ratio: take the fewest prefix tokens
                return prefix, h, w
            if mismatch <= _STRIDE_TOLERANCE and (best is None or mismatch < best[0]):
                best = (mismatch, prefix, h, w)
    return None if best is None else best[1:]


def infer_reshape_transform(shape: Sequence[int], input_spatial: Sequence[int]) -> Optional[Callable]:
    """Pick a transform for an activation of ``shape`` given the input's spatial size.

    * ``[B, C, *S]`` with as many spatial dims as the input: None (already fine),
      unless the layout only makes sense as channels-last ``[B, h, w, C]``.
    * ``[B, N, C]`` tokens for a 2-D input: the prefix tokens are dropped and the
      rest laid out as an ``h x w`` grid whose aspect ratio matches the input's.

    Raises:
        ValueError: when the shape cannot be mapped to a grid; the message says
            to pass ``reshape_transform``.
    """
    shape = tuple(int(s) for s in shape)
    input_spatial = tuple(int(s) for s in input_spatial)
    ndim, spatial = len(shape), len(input_spatial)
    if ndim == spatial + 2:
        if spatial == 2:
            channels_first_ok = _stride_mismatch(input_spatial, shape[2], shape[3]) <= 1.3
            channels_last_ok = _stride_mismatch(input_spatial, shape[1], shape[2]) <= 1.3
            if channels_last_ok and not channels_first_ok:
                return _channels_last_to_first
        return None
    if ndim == 3 and spatial == 2:
        grid = _infer_token_grid(shape[1], input_spatial)
        if grid is not None:
            return partial(tokens_to_grid, prefix=grid[0], height=grid[1], width=grid[2])
        raise ValueError(
            f"cannot lay out {shape[1]} tokens of an activation of shape {list(shape)} as a grid "
            f"matching an input of size {input_spatial[0]}x{input_spatial[1]}; pass "
            "reshape_transform=... (for example functools.partial(vit_reshape_transform, height=h, width=w))"
        )
    raise ValueError(
        f"a target layer produced an activation of shape {list(shape)} ({ndim}-D) for a "
        f"{spatial + 2}-D input; expected [B, C, {', '.join('HWD'[:spatial])}] maps or [B, tokens, C] "
        "tokens. Choose a layer that outputs a spatial map, or pass reshape_transform=... that returns one"
    )
