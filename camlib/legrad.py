"""LeGrad: the positive gradient of each block's own prediction with respect to its attention."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["legrad_relevance"]


def legrad_relevance(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Per-key relevance ``[B, N]``: positive gradients averaged over heads, queries and blocks.

    .. math::
        E^{(l)} = \frac{1}{hN}\sum_{h,i} \Big(\frac{\partial s^{(l)}}{\partial A^{(l)}_{h,i,\cdot}}\Big)^+,
        \qquad E = \frac{1}{|\mathcal{L}|}\sum_{l \in \mathcal{L}} E^{(l)}

    Args:
        gradients: for each block :math:`l`, the gradient of its score
            :math:`s^{(l)}` with respect to its attention ``[B, heads, N, N]``.

    Example:
        >>> g = torch.tensor([[[[1.0, -1.0], [3.0, 1.0]]]])
        >>> legrad_relevance([g, 2 * g])
        tensor([[3.0000, 0.7500]])
    """
    if not gradients:
        raise ValueError("legrad_relevance needs the gradient of at least one block")
    per_block = [g.float().clamp(min=0).mean(dim=(1, 2)) for g in gradients]
    return torch.stack(per_block).mean(dim=0)
