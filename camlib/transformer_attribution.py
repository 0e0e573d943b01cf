"""Transformer attribution: gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021 rule)."""

from __future__ import annotations

from typing import List, Sequence

import torch

from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.attention import AttentionCAM, class_token_relevance, relevance_map

__all__ = ["TransformerAttribution", "transformer_relevance"]


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


@register_method("transformerattribution", title="Transformer attribution")
class TransformerAttribution(AttentionCAM):
    r"""Gradient-weighted attention relevance for vision transformers (Chefer et al.).

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for
    Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.
    https://arxiv.org/abs/2103.15679 (the gradient rule used here), following
    "Transformer Interpretability Beyond Attention Visualization", CVPR 2021.
    https://arxiv.org/abs/2012.09838

    .. math::
        \bar A^{(l)} = \mathbb{E}_h\Big[\Big(\frac{\partial y^c}{\partial A^{(l)}_h} \odot A^{(l)}_h\Big)^+\Big],
        \qquad R^{(0)} = I, \quad R^{(l)} = R^{(l-1)} + \bar A^{(l)} R^{(l-1)}, \qquad
        L^c = R^{(L)}_{\mathrm{cls},\,\mathrm{patches}}

    The attention probabilities of every attention module are captured in one
    forward pass, the summed target scores are differentiated with respect to
    them, and the relevance (:func:`transformer_relevance`) is propagated
    through the blocks. The class token's row over the patch tokens (the mean
    of the rows without a class token) is laid out on the patch grid.
    ``target_layers`` is ignored and may be empty.

    Choices the papers leave open, as in the authors' ViT notebook: the
    score is the target's logit, :math:`R` starts at the identity and is not
    renormalised, the ReLU comes after the product and before the mean over
    heads. The CVPR 2021 variant's LRP relevance of the attention needs LRP
    rules for every layer, so the ICCV 2021 rule (the attention itself) is used.

    Cost: one forward and one backward pass.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    The arguments are :class:`~camlib.utils.attention.AttentionCAM`'s.

    Example:
        >>> import torch, torchvision
        >>> from camlib import TransformerAttribution
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torchvision.models.VisionTransformer(
        ...     image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        >>> _ = torch.nn.init.normal_(model.heads.head.weight)  # torchvision's head starts at zero
        >>> with TransformerAttribution(model) as cam:
        ...     maps = cam(torch.randn(2, 3, 32, 32), [ClassifierOutputTarget(3)] * 2)
        >>> maps.shape, maps.dtype
        ((2, 32, 32), dtype('float32'))
    """

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The relevance's class-token row on the patch grid: one raw map ``[B, h, w]``."""
        relevance = transformer_relevance(capture.activations, capture.gradients)
        row = class_token_relevance(relevance, self.class_token)
        return [relevance_map(row, capture.spatial_size, self.prefix_tokens, self.reshape_transform)]
