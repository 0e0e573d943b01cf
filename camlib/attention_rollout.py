"""Attention rollout: the product of every block's attention, residual connections included."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.attention import ATTENTION_CAPABILITIES, AttentionCAM, class_token_relevance, relevance_map

__all__ = ["HEAD_FUSIONS", "AttentionRollout", "attention_rollout", "fuse_heads"]

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


@register_method("attentionrollout", title="Attention rollout")
class AttentionRollout(AttentionCAM):
    r"""Attention rollout for vision transformers.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    https://arxiv.org/abs/2005.00928

    .. math::
        \hat A^{(l)} = \mathrm{rownorm}\big(\mathrm{fuse}_h A^{(l)}_h + I\big), \qquad
        L = \big[\hat A^{(L)} \cdots \hat A^{(1)}\big]_{\mathrm{cls},\,\mathrm{patches}}

    The attention probabilities of every attention module of the model
    (torchvision ``nn.MultiheadAttention``, timm ``Attention``, Hugging Face
    ViT attention; see :mod:`camlib.utils.attention`) are captured in one
    forward pass, rolled out (:func:`attention_rollout`), and the class
    token's row over the patch tokens is laid out on the patch grid (class,
    distillation and register tokens dropped). Without a class token (a
    mean-pooled ViT) the mean of all rows is used. ``target_layers`` is
    ignored (the rollout needs every block) and may be empty.

    Choices the paper leaves open: ``head_fusion`` ``"max"``/``"min"`` and
    ``discard_ratio`` follow vit-explain (Gildenblat), which introduced them:
    the lowest entries of each fused matrix are dropped, keeping the class
    token's attention to itself, before the identity is added; rows are then
    renormalised.

    Cost: one forward pass, no gradients. The map does not depend on the
    target. Output: ``np.float32 [B, H, W]`` in [0, 1].

    Args:
        model: a vision transformer.
        target_layers: ignored (may be empty).
        reshape_transform: lays per-token values ``[B, N, 1]`` out as
            ``[B, 1, h, w]``; None infers the patch grid.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"``.
        discard_ratio: fraction in [0, 1) of each fused attention matrix, its
            lowest entries, set to zero.
        **kwargs: the other :class:`~camlib.base_cam.BaseCAM` arguments.

    Raises:
        ValueError: the model has no attention module (a CNN), or a bad option.

    Example:
        >>> import torch, torchvision
        >>> from camlib import AttentionRollout
        >>> model = torchvision.models.VisionTransformer(
        ...     image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        >>> with AttentionRollout(model, head_fusion="max", discard_ratio=0.5) as cam:
        ...     maps = cam(torch.randn(2, 3, 32, 32))
        >>> maps.shape, maps.dtype
        ((2, 32, 32), dtype('float32'))
    """

    capabilities = ATTENTION_CAPABILITIES.but(gradients=False, class_specific=False)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: Optional[List[torch.nn.Module]] = None,
        reshape_transform: Optional[Callable] = None,
        *args: Any,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {list(HEAD_FUSIONS)}, got {head_fusion!r}")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The rollout's class-token row on the patch grid: one raw map ``[B, h, w]``."""
        rollout = attention_rollout(capture.activations, self.head_fusion, self.discard_ratio, self.class_token)
        relevance = class_token_relevance(rollout, self.class_token)
        return [relevance_map(relevance, capture.spatial_size, self.prefix_tokens, self.reshape_transform)]
