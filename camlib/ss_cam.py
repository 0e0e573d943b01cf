"""SS-CAM: Score-CAM weights averaged over noisy copies of each channel's mask."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.score_cam import channel_mask_scores, normalized_upsampled_masks
from camlib.utils.batched import check_finite_scores
from camlib.utils.noise import add_gaussian_noise, check_noise_settings

__all__ = ["SSCAM", "ss_cam_weights"]


def ss_cam_weights(
    model: Callable,
    input_tensor: torch.Tensor,
    activations: torch.Tensor,
    targets: Sequence[Callable],
    *,
    num_samples: int = 35,
    std: float = 2.0,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """SS-CAM channel weights ``[B, C]``.

    Each channel's mask (:func:`camlib.score_cam.normalized_upsampled_masks`)
    gets ``num_samples`` draws of Gaussian noise ``N(0, std^2)`` at the input's
    resolution; the target scores of the noisy masked inputs are averaged and
    their softmax over channels is the weight. The noise comes from the default
    generator of the input's device (seed it with ``torch.manual_seed``), drawn
    in the order sample, image, channel.
    """
    batch, channels = activations.shape[:2]
    maps = activations.reshape(batch * channels, *activations.shape[2:])
    image = torch.arange(batch, device=activations.device).repeat_interleave(channels)

    def noisy(masks: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return add_gaussian_noise(masks, std)

    scores = channel_mask_scores(
        model, input_tensor, maps, image, targets, masks=normalized_upsampled_masks, samples=num_samples,
        perturb=noisy, batch_size=batch_size, progress=progress, desc="SSCAM",
    )  # fmt: skip
    check_finite_scores(scores, "the target score of a masked input", "SS-CAM's softmax weights would be NaN")
    return torch.softmax(scores.mean(dim=0).to(activations.device).reshape(batch, channels), dim=-1)


@register_method("sscam", title="SS-CAM")
class SSCAM(BaseCAM):
    r"""Smoothed Score-CAM.

    Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", arXiv 2020. https://arxiv.org/abs/2006.14255

    .. math::
        M_k = U\Big(\frac{A^k - \min A^k}{\max (A^k - \min A^k) + 10^{-8}}\Big), \qquad
        w^c = \mathrm{softmax}_k\Big(\frac{1}{N}\sum_{i=1}^{N}
            y^c\big(X \odot (M_k + \delta_{ik})\big)\Big), \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with :math:`U` (bi/tri)linear upsampling to the input's size (half-pixel
    centres) and :math:`\delta_{ik} \sim \mathcal{N}(0, \sigma^2)` noise drawn
    per pixel at the input's resolution. As in torchcam, the mask is normalised
    before it is upsampled and the noisy mask is not clipped.

    The noise comes from the default random generator of the model's device
    (``torch.manual_seed`` makes a call reproducible). Noise makes every mask
    distinct, so unlike :class:`~camlib.score_cam.ScoreCAM` no channel is
    shared.

    Cost: one forward pass, then ``num_samples x C`` forward passes per image
    (``batch_size`` masked inputs at a time); no backward pass.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels mask the input.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        num_samples: noisy masks per channel (:math:`N`).
        std: standard deviation of the noise (:math:`\sigma`).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``,
            ``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import SSCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with SSCAM(model, [model.layer4[-1]], num_samples=2, batch_size=256, progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=32, stochastic=True)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        num_samples: int = 35,
        std: float = 2.0,
        **kwargs: Any,
    ) -> None:
        num_samples, std = check_noise_settings(num_samples, std)
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.num_samples = num_samples
        self.std = std

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return ss_cam_weights(
            self.model, input_tensor, activations, targets, num_samples=self.num_samples, std=self.std,
            batch_size=self.batch_size, progress=self.progress,
        )  # fmt: skip
