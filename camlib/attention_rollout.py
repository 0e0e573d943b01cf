"""Attention rollout: the product of every block's attention, residual connections included."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["HEAD_FUSIONS", "attention_rollout", "fuse_heads"]

#: How the heads of one layer are combined.
HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """``[B, heads, N, N] -> [B, N, N]``: mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {list(HEAD_FUSIONS)}, got {head_fusion!r}")


def _discard_lowest(fused: torch.Tensor, discard_ratio: float, keep_first: bool) -> torch.Tensor:
    """Zero the ``discard_ratio`` fraction of lowest entries of each ``[N, N]`` matrix.

    With ``keep_first`` the class token's attention to itself (entry [0, 0]) is never dropped.
    """
    flat = fused.flatten(1)
    count = int(flat.shape[1] * discard_ratio)
    if count == 0:
        return fused
    ranked = flat.clone()
    if keep_first:
        ranked[:, 0] = float("inf")
    lowest = ranked.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(fused)


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    keep_class_token: bool = True,
) -> torch.Tensor:
    r"""Roll attention out through the blocks: ``[B, N, N]`` token-to-token relevance.

    For each block, in forward order, the heads are fused
    (:func:`fuse_heads`), optionally the lowest ``discard_ratio`` fraction of
    the fused matrix is set to zero, the identity is added for the residual
    connection and rows are renormalised to sum to one:

    .. math::
        \hat A^{(l)} = \mathrm{rownorm}\big(\mathrm{fuse}_h A^{(l)}_h + I\big), \qquad
        \tilde A = \hat A^{(L)} \hat A^{(L-1)} \cdots \hat A^{(1)}

    Args:
        attentions: per-block probabilities ``[B, heads, N, N]``, first block first.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"``.
        discard_ratio: fraction in [0, 1) of each fused matrix's entries,
            the lowest, set to zero before the identity is added.
        keep_class_token: never discard entry [0, 0] (the class token's attention to itself).

    Example:
        >>> a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # one image, one head, two tokens
        >>> attention_rollout([a, a])[0]
        tensor([[0.5625, 0.4375],
                [0.0000, 1.0000]])
    """
    if not attentions:
        raise ValueError("attention_rollout needs the attention of at least one block")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    rollout = None
    for attention in attentions:
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise ValueError(f"each attention must be [B, heads, N, N], got shape {list(attention.shape)}")
        fused = fuse_heads(attention.float(), head_fusion)
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio, keep_class_token)
        residual = fused + torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        residual = residual / residual.sum(dim=-1, keepdim=True)
        rollout = residual if rollout is None else residual @ rollout
    return rollout
