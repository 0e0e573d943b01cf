"""Grad-CAM element-wise: ReLU of gradient x activation, summed over channels."""

from __future__ import annotations

import torch

from camlib._ops import reduce_channels
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["GradCAMElementWise", "grad_cam_elementwise_map"]


def grad_cam_elementwise_map(activations: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """``sum_c ReLU(dy/dA_c * A_c)``: ``[B, C, *S] -> [B, *S]``."""
    return reduce_channels(torch.relu(grads * activations), eigen_smooth)


@register_method("gradcamelementwise", title="Grad-CAM element-wise")
class GradCAMElementWise(BaseCAM):
    r"""Grad-CAM with element-wise weighting (a variant of HiResCAM).

    .. math::
        L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y^c}{\partial A^k} \odot A^k\big)\Big)

    Only positive contributions of each channel at each position count. Cost:
    one forward, one backward pass. Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import GradCAMElementWise
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with GradCAMElementWise(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return grad_cam_elementwise_map(activations, grads, eigen_smooth)
