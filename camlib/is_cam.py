"""IS-CAM: Score-CAM weights integrated over growing multiples of each channel's mask."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.score_cam import channel_mask_scores, distinct_channel_maps, normalized_upsampled_masks
from camlib.utils.batched import check_finite_scores

__all__ = ["ISCAM", "is_cam_coefficients", "is_cam_weights"]


def is_cam_coefficients(num_samples: int) -> torch.Tensor:
    """The mask multiples of IS-CAM: ``c_i = sum_{j=1}^{i} j / N`` for ``i = 1..N``
    (``[N]`` float64, e.g. ``[0.1, 0.3, 0.6, ..., 5.5]`` for ``N = 10``)."""
    steps = torch.arange(1, num_samples + 1, dtype=torch.float64) / num_samples
    return torch.cumsum(steps, dim=0)


def is_cam_weights(
    model: Callable,
    input_tensor: torch.Tensor,
    activations: torch.Tensor,
    targets: Sequence[Callable],
    *,
    num_samples: int = 10,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """IS-CAM channel weights ``[B, C]``: the softmax over channels of the mean target
    score of the input masked by ``c_i`` times each channel's mask
    (:func:`camlib.score_cam.normalized_upsampled_masks`), ``c_i`` from
    :func:`is_cam_coefficients`. Channels with the same map (and constant channels)
    are scored once per image."""
    batch, channels = activations.shape[:2]
    maps, image, inverse = distinct_channel_maps(activations)
    coefficients = is_cam_coefficients(num_samples).float().to(input_tensor.device)

    def scaled(masks: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        factor = coefficients[sample.to(coefficients.device)]
        return masks.mul_(factor.reshape(-1, *([1] * (masks.ndim - 1))).to(masks.device))  # fresh masks

    scores = channel_mask_scores(
        model, input_tensor, maps, image, targets, masks=normalized_upsampled_masks, samples=num_samples,
        perturb=scaled, batch_size=batch_size, progress=progress, desc="ISCAM",
    )  # fmt: skip
    check_finite_scores(scores, "the target score of a masked input", "IS-CAM's softmax weights would be NaN")
    scores = scores.mean(dim=0).to(activations.device)[inverse].reshape(batch, channels)
    return torch.softmax(scores, dim=-1)


@register_method("iscam", title="IS-CAM")
class ISCAM(BaseCAM):
    r"""Integrated Score-CAM.

    Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations", arXiv 2020. https://arxiv.org/abs/2010.03023

    .. math::
        M_k = U\Big(\frac{A^k - \min A^k}{\max (A^k - \min A^k) + 10^{-8}}\Big), \qquad
        c_i = \sum_{j=1}^{i} \frac{j}{N}, \qquad
        w^c = \mathrm{softmax}_k\Big(\frac{1}{N}\sum_{i=1}^{N} y^c\big(X \odot c_i M_k\big)\Big), \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with :math:`U` (bi/tri)linear upsampling to the input's size (half-pixel
    centres). The multiples :math:`c_i` accumulate as in torchcam's
    implementation (they reach :math:`(N + 1) / 2`), and the mask is normalised
    before it is upsampled. Channels with the same map, and all constant
    channels (which give the zero mask), are scored once per image.

    Cost: one forward pass, then ``num_samples`` forward passes per distinct
    channel map per image (``batch_size`` masked inputs at a time); no backward pass.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels mask the input.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        num_samples: integration steps (:math:`N`).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``,
            ``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import ISCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with ISCAM(model, [model.layer4[-1]], num_samples=2, batch_size=256, progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=32)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        num_samples: int = 10,
        **kwargs: Any,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.num_samples = num_samples

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return is_cam_weights(
            self.model, input_tensor, activations, targets, num_samples=self.num_samples,
            batch_size=self.batch_size, progress=self.progress,
        )  # fmt: skip
