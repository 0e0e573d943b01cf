"""Grad-CAM: channel weights are the spatially averaged gradients."""

from __future__ import annotations

import torch

from camlib._ops import spatial_dims
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["GradCAM", "grad_cam_weights"]


def grad_cam_weights(grads: torch.Tensor) -> torch.Tensor:
    """``w_c = mean_{ij} dy/dA_c^{ij}``: ``[B, C, *S] -> [B, C]``."""
    return grads.mean(dim=spatial_dims(grads))


@register_method("gradcam", title="Grad-CAM")
class GradCAM(BaseCAM):
    r"""Grad-CAM.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017. https://arxiv.org/abs/1610.02391

    .. math::
        w^c_k = \frac{1}{Z}\sum_{ij} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Cost: one forward and one backward pass (down to the target layer only).
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import GradCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with GradCAM(model, target_layers=[model.layer4[-1]]) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape, maps.dtype
        ((2, 64, 64), dtype('float32'))
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return grad_cam_weights(grads)
