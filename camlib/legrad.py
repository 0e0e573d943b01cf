"""LeGrad: the positive gradient of each block's own prediction with respect to its attention."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.attention import AttentionCAM, relevance_map, transformer_blocks
from camlib.utils.batched import score_outputs
from camlib.utils.model_outputs import OutputAdaptedTarget

__all__ = ["LeGrad", "legrad_relevance", "mean_pooled_head"]


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


def mean_pooled_head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's classifier on mean-pooled block tokens: ``[B, N, C] -> [B, classes]``.

    LeGrad's per-block prediction, as in the authors' code: the mean over all
    tokens (class token included), then the model's final norm and head.
    Known for torchvision's ``VisionTransformer`` (``encoder.ln``, ``heads``),
    timm's ViT family (``norm``, ``fc_norm``, ``head``; DeiT's distillation
    head averaged in, as timm does at inference) and Hugging Face's
    ``*ForImageClassification`` (``layernorm``, ``classifier``).

    Raises:
        ValueError: for another model; pass ``score_projection`` to :class:`LeGrad`.
    """
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "ln", None), torch.nn.Module) and isinstance(
        getattr(model, "heads", None), torch.nn.Module
    ):
        return lambda tokens: model.heads(encoder.ln(tokens.mean(dim=1)))
    if all(isinstance(getattr(model, name, None), torch.nn.Module) for name in ("norm", "fc_norm", "head")):
        second = getattr(model, "head_dist", None)

        def timm_head(tokens: torch.Tensor) -> torch.Tensor:
            pooled = model.fc_norm(model.norm(tokens.mean(dim=1)))
            scores = model.head(pooled)
            return scores if second is None else (scores + second(pooled)) / 2

        return timm_head
    base = getattr(model, str(getattr(model, "base_model_prefix", "")), None)
    norm = getattr(base, "layernorm", None)
    if isinstance(norm, torch.nn.Module) and isinstance(getattr(model, "classifier", None), torch.nn.Module):
        return lambda tokens: model.classifier(norm(tokens.mean(dim=1)))
    raise ValueError(
        f"LeGrad needs each block's prediction, but camlib does not know the classifier head of "
        f"{type(model).__name__}; pass score_projection=a function mapping block tokens [B, N, C] to the "
        "scores the targets read, e.g. lambda z: model.head(model.norm(z.mean(dim=1)))"
    )


def _unwrapped(target: Callable) -> Callable:
    """The target itself, without the output adapter (block scores are already a tensor)."""
    return target.target if isinstance(target, OutputAdaptedTarget) else target


@register_method("legrad", title="LeGrad")
class LeGrad(AttentionCAM):
    r"""LeGrad: feature-formation sensitivity of vision transformers.

    Bousselham et al., "LeGrad: An Explainability Method for Vision
    Transformers via Feature Formation Sensitivity", 2024.
    https://arxiv.org/abs/2404.03214

    .. math::
        s^{(l)} = y^c\big(\mathrm{head}(\mathrm{norm}(\bar z^{(l)}))\big), \qquad
        E^{(l)}_j = \frac{1}{hN}\sum_{h,i}\Big(\frac{\partial s^{(l)}}{\partial A^{(l)}_{h,i,j}}\Big)^+,
        \qquad L^c = \frac{1}{|\mathcal{L}|}\sum_{l\in\mathcal{L}} E^{(l)}_{\mathrm{patches}}

    For each explained block :math:`l`, its output tokens are mean-pooled
    (:math:`\bar z^{(l)}`) and passed through the model's final norm and head
    (:func:`mean_pooled_head`, or ``score_projection``); the target's score of
    that prediction is differentiated with respect to the block's own
    attention probabilities :math:`A^{(l)}`; the positive part is averaged
    over heads and query tokens (:func:`legrad_relevance`), and the patch
    keys are laid out on the patch grid.

    Choices the paper leaves open, from the authors' code (``legrad-torch``):
    mean pooling over all tokens, class token included, before the norm and
    head, whatever the model's own pooling; the mean over query rows includes
    the class token's; the last two blocks by default (their
    ``layer_index=-2``); per-block maps summed (here averaged: the same map
    after scaling). torchcam 0.5.0's LeGrad makes the same choices.

    Cost: one forward pass and one backward pass per explained block.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Args:
        model: a vision transformer.
        target_layers: the transformer blocks to explain (modules containing
            one attention module each, e.g. ``model.encoder.layers[-2:]``; a
            layer inside a block, such as ``blocks[-2].norm1``, names its
            block); empty or None: the last two blocks.
        reshape_transform: lays per-token values ``[B, N, 1]`` out as
            ``[B, 1, h, w]``; None infers the patch grid.
        score_projection: maps a block's tokens ``[B, N, C]`` to the scores
            the targets read (``[B, classes]``); None: :func:`mean_pooled_head`.
        **kwargs: the other :class:`~camlib.base_cam.BaseCAM` arguments.

    Raises:
        ValueError: no attention module (a CNN), a target layer that is not a
            block with one attention module, or a model whose head camlib
            does not know and no ``score_projection``.

    Example:
        >>> import torch, torchvision
        >>> from camlib import LeGrad
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torchvision.models.VisionTransformer(
        ...     image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        >>> _ = torch.nn.init.normal_(model.heads.head.weight)  # torchvision's head starts at zero
        >>> with LeGrad(model, list(model.encoder.layers)) as cam:
        ...     maps = cam(torch.randn(2, 3, 32, 32), [ClassifierOutputTarget(3)] * 2)
        >>> maps.shape, maps.dtype
        ((2, 32, 32), dtype('float32'))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: Optional[List[torch.nn.Module]] = None,
        reshape_transform: Optional[Callable] = None,
        *args: Any,
        score_projection: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if score_projection is not None and not callable(score_projection):
            raise TypeError(
                f"score_projection must be a function of block tokens [B, N, C], got {type(score_projection).__name__}"
            )
        all_attention = self.attention_modules  # every one; the base class told a CNN it needs attention
        self.score_projection = mean_pooled_head(model) if score_projection is None else score_projection
        if self.target_layers:
            self.attention_modules = [_attention_in(model, layer, all_attention) for layer in self.target_layers]
        else:
            self.attention_modules = all_attention[-2:]
        self.blocks = transformer_blocks(model, self.attention_modules)

    def block_scores(self, tokens: torch.Tensor, targets: Sequence[Callable]) -> torch.Tensor:
        """A block's own scores ``[B]``: :attr:`score_projection` of its tokens, read by the targets."""
        return score_outputs(self.score_projection(tokens), [_unwrapped(t) for t in targets])

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The mean over blocks of the positive gradients on the patch grid: one raw map ``[B, h, w]``."""
        relevance = legrad_relevance(capture.gradients)
        return [relevance_map(relevance, capture.spatial_size, self.prefix_tokens, self.reshape_transform)]


def _attention_in(
    model: torch.nn.Module, layer: torch.nn.Module, attention_modules: Sequence[torch.nn.Module]
) -> torch.nn.Module:
    """The one attention module inside ``layer``, or inside the smallest module holding
    ``layer`` that has exactly one (so a ViT's usual CAM layer, ``blocks[-2].norm1``,
    names its block)."""
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    node: Optional[torch.nn.Module] = layer
    while node is not None:
        inside = [m for m in attention_modules if any(m is sub for sub in node.modules())]
        if len(inside) == 1:
            return inside[0]
        if len(inside) > 1:
            break
        node = parents.get(id(node))
    raise ValueError(
        f"LeGrad's target layers are transformer blocks holding one attention module each (or layers "
        f"inside one); {repr(layer).splitlines()[0]} holds {len(inside)}. Pass blocks such as "
        "model.encoder.layers[-2:] (torchvision), model.blocks[-2:] (timm), or an empty list for the last two"
    )
