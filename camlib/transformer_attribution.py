"""Transformer attribution: gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021 rule)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["transformer_relevance"]


def transformer_relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Token-to-token relevance ``[B, N, N]`` from attention and its gradient, block by block.

    Starting from :math:`R = I`, for each block in forward order:

    .. math::
        \bar A^{(l)} = \mathbb{E}_h\big[(\nabla A^{(l)}_h \odot A^{(l)}_h)^+\big], \qquad
        R \leftarrow R + \bar A^{(l)} R

    Args:
        attentions: per-block probabilities ``[B, heads, N, N]``, first block first.
        gradients: the gradient of the target score with respect to each.

    Example:
        >>> a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
        >>> g = torch.tensor([[[[2.0, -2.0], [1.0, 1.0]]]])
        >>> transformer_relevance([a], [g])[0]
        tensor([[2., 0.],
                [0., 2.]])
    """
    if not attentions or len(attentions) != len(gradients):
        raise ValueError(
            f"transformer_relevance needs one gradient per attention, got {len(attentions)} attention(s) "
            f"and {len(gradients)} gradient(s)"
        )
    first = attentions[0]
    eye = torch.eye(first.shape[-1], device=first.device, dtype=torch.float32)
    relevance = eye.expand(first.shape[0], -1, -1)
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient.float() * attention.float()).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance
