"""Small tensor helpers shared by the CAM methods."""

from __future__ import annotations

import torch

from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["broadcast_weights", "reduce_channels", "spatial_dims"]


def spatial_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a ``[B, C, *spatial]`` tensor: ``(2, ..., ndim - 1)``."""
    return tuple(range(2, tensor.ndim))


def broadcast_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` weights reshaped to multiply a ``[B, C, *spatial]`` tensor."""
    return weights.reshape(*weights.shape[:2], *([1] * (like.ndim - 2)))


def reduce_channels(weighted: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
    """``[B, C, *S] -> [B, *S]``: the channel sum, or the first principal component."""
    return get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)
