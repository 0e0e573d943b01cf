"""HiResCAM: the element-wise product of gradients and activations, summed over channels."""

from __future__ import annotations

import warnings

import torch

from camlib._ops import reduce_channels
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["HiResCAM", "hirescam_map"]


def hirescam_map(activations: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """``sum_c dy/dA_c * A_c``: ``[B, C, *S] -> [B, *S]``."""
    return reduce_channels(grads * activations, eigen_smooth)


@register_method("hirescam", title="HiResCAM")
class HiResCAM(BaseCAM):
    r"""HiResCAM.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations
    of convolutional neural networks", 2020. https://arxiv.org/abs/2011.08891

    .. math::
        L^c = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k} \odot A^k\Big)

    Unlike Grad-CAM the gradients are not averaged, so the map shows exactly the
    locations that raise the score (for a model ending in global average pooling
    and a linear layer it equals Grad-CAM). Cost: one forward, one backward pass.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import HiResCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with HiResCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        if eigen_smooth:
            warnings.warn(
                "eigen_smooth replaces HiResCAM's sum by a principal component, so the map loses "
                "HiResCAM's faithfulness guarantee",
                stacklevel=4,
            )
        return hirescam_map(activations, grads, eigen_smooth)
