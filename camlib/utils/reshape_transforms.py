"""Reshape transforms: turn a layer's output into ``[B, C, *spatial]`` activations.

The three reference transforms are kept. When no transform is given, camlib
infers one from the activation's shape and the input's size (see
:func:`infer_reshape_transform`): token sequences ``[B, N, C]`` of vision
transformers (with class, distillation or register tokens in front) and
channels-last maps ``[B, h, w, C]`` (torchvision's and timm's Swin) need no
hand-written function. How many tokens precede the patch grid is read from the
model when it says (:func:`num_prefix_tokens`: timm's ``num_prefix_tokens``,
class, distillation and register token parameters), which settles small or
ambiguous grids; otherwise it is inferred from the token count. A dict of
feature maps (the output of a detector's FPN backbone) is resized to its
coarsest map and concatenated (:func:`feature_pyramid_to_map`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "fasterrcnn_reshape_transform",
    "feature_pyramid_to_map",
    "infer_reshape_transform",
    "is_feature_pyramid",
    "num_prefix_tokens",
    "swinT_reshape_transform",
    "tokens_to_grid",
    "vit_reshape_transform",
]

#: Most tokens that may precede the patch grid (class + distillation + registers).
MAX_PREFIX_TOKENS = 16
#: How far the vertical and horizontal strides may differ for an inexact grid.
_STRIDE_TOLERANCE = 1.15


def _coarsest_size(maps: Sequence[torch.Tensor]) -> tuple:
    return min((tuple(m.shape[2:]) for m in maps), key=math.prod)


def fasterrcnn_reshape_transform(x: dict) -> torch.Tensor:
    """Resize every feature map of an FPN output dict to the ``pool`` level's size
    (absolute values, bilinear) and concatenate them along channels.

    Without a ``"pool"`` entry (RetinaNet's and FCOS's FPNs end in ``"p6"``,
    ``"p7"``), the coarsest map's size is used.
    """
    values = list(x.values())
    target_size = x["pool"].shape[-2:] if "pool" in x else _coarsest_size(values)
    maps = [F.interpolate(torch.abs(value), target_size, mode="bilinear") for value in values]
    return torch.cat(maps, dim=1)


def feature_pyramid_to_map(x: Mapping) -> torch.Tensor:
    """A dict of ``[B, C_l, *S_l]`` feature maps (an FPN's levels) as one ``[B, sum C_l, *S]`` map.

    Every level is resized (bilinear, or trilinear for 3-D maps) to the
    coarsest level's size and the levels are concatenated along channels, in
    the dict's order, as :func:`fasterrcnn_reshape_transform` does, but keeping
    the values' signs (so gradients keep theirs). This is the transform camlib
    uses when a target layer returns such a dict and no ``reshape_transform``
    is given.

    Example:
        >>> import torch
        >>> fpn = {"0": torch.ones(1, 2, 8, 8), "1": torch.ones(1, 3, 4, 4), "pool": -torch.ones(1, 2, 2, 2)}
        >>> out = feature_pyramid_to_map(fpn)
        >>> tuple(out.shape), out[0, -1, 0, 0].item()
        ((1, 7, 2, 2), -1.0)
    """
    values = list(x.values())
    size = _coarsest_size(values)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    maps = [v if tuple(v.shape[2:]) == size else F.interpolate(v, size, mode=mode) for v in values]
    return torch.cat(maps, dim=1)


def is_feature_pyramid(x: object, spatial: int) -> bool:
    """Whether ``x`` is a non-empty dict of floating-point ``[B, C, *S]`` maps with ``spatial`` dims."""
    return (
        isinstance(x, Mapping)
        and len(x) > 0
        and all(
            isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim == spatial + 2 for v in x.values()
        )
        and len({v.shape[0] for v in x.values()}) == 1
    )


def num_prefix_tokens(model: torch.nn.Module) -> Optional[int]:
    """How many tokens precede the patch grid in ``model``'s token sequences, if the model says.

    Read from the first module that has an integer ``num_prefix_tokens``
    attribute (timm's ViT, DeiT, EVA, ... including register tokens), or else
    from the first module holding class / distillation / register token
    parameters (torchvision's ``class_token``, Hugging Face's ``cls_token``,
    ``distillation_token``, ``register_tokens``, CLIP's ``class_embedding``).
    None when nothing says (Swin, CNNs): the count is then inferred from the
    sequence length.

    Example:
        >>> import torchvision
        >>> num_prefix_tokens(torchvision.models.vit_b_16(weights=None, image_size=32))
        1
        >>> num_prefix_tokens(torchvision.models.resnet18(weights=None)) is None
        True
    """
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count
    for module in model.modules():
        found = False
        count = 0
        for name in _TOKEN_PARAMETERS:
            token = getattr(module, name, None)
            if isinstance(token, torch.Tensor):
                found = True
                count += int(token.shape[-2]) if token.ndim >= 2 else 1
        if found:
            return count
    return None


#: Parameter names of tokens that precede the patch grid (each ``[1, n, C]``, or ``[C]`` for one token).
_TOKEN_PARAMETERS = (
    "class_token",
    "cls_token",
    "class_embedding",
    "dist_token",
    "distillation_token",
    "register_tokens",
    "reg_token",
)


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


def _grid_with_prefix(num_tokens: int, prefix: int, input_hw: Sequence[int]) -> Optional[tuple[bool, int, int, int]]:
    """(exact, prefix, h, w) for ``num_tokens`` tokens after ``prefix`` leading ones, or None.

    ``exact``: the grid has the input's aspect ratio; otherwise the grid whose
    strides differ least (within the tolerance).
    """
    if not 0 <= prefix < num_tokens:
        return None
    best = None
    for mismatch, h, w in _grid_candidates(num_tokens - prefix, input_hw):
        if input_hw[0] * w == input_hw[1] * h:
            return True, prefix, h, w
        if mismatch <= _STRIDE_TOLERANCE and (best is None or mismatch < best[0]):
            best = (mismatch, h, w)
    return None if best is None else (False, prefix, best[1], best[2])


def _infer_token_grid(
    num_tokens: int, input_hw: Sequence[int], prefix_hint: Optional[int] = None
) -> Optional[tuple[int, int, int]]:
    """(prefix, h, w) for a token sequence, or None when no layout fits.

    In order of preference: the model's prefix count with a grid of the input's
    aspect ratio; the fewest prefix tokens giving such a grid (the grid must
    dominate the sequence); the model's prefix count with an inexact grid; the
    closest inexact grid.
    """
    hinted = None if prefix_hint is None else _grid_with_prefix(num_tokens, prefix_hint, input_hw)
    if hinted is not None and hinted[0]:
        return hinted[1:]
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
    if hinted is not None:
        return hinted[1:]
    return None if best is None else best[1:]


def infer_reshape_transform(
    shape: Sequence[int], input_spatial: Sequence[int], prefix_tokens: Optional[int] = None
) -> Optional[Callable]:
    """Pick a transform for an activation of ``shape`` given the input's spatial size.

    * ``[B, C, *S]`` with as many spatial dims as the input: None (already fine),
      unless the layout only makes sense as channels-last ``[B, h, w, C]``.
    * ``[B, N, C]`` tokens for a 2-D input: the prefix tokens are dropped and the
      rest laid out as an ``h x w`` grid whose aspect ratio matches the input's.
      With ``prefix_tokens`` (what the model says, see :func:`num_prefix_tokens`)
      that many are dropped when the rest is a grid of the input's aspect
      ratio; otherwise the fewest leading tokens that leave such a grid (a
      model whose blocks carry no class token, like CaiT's, still works), and
      failing that the closest grid.

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
        grid = _infer_token_grid(shape[1], input_spatial, prefix_tokens)
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
