"""Grad-CAM++: gradient weights that account for several instances of a class."""

from __future__ import annotations

import torch

from camlib._ops import broadcast_weights, spatial_dims
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["GradCAMPlusPlus", "grad_cam_plusplus_weights"]


def grad_cam_plusplus_weights(activations: torch.Tensor, grads: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Grad-CAM++ channel weights (eq. 19 of the paper, with exponential-free
    higher-order terms): ``[B, C, *S] -> [B, C]``.

    Computed in float64: the cube of a small gradient underflows float32 (and
    ``sum A`` of large activations overflows it), which would give blank or NaN
    maps although the weights are well defined (alpha does not change when the
    activations are scaled by ``s`` and the gradients by ``1/s``)."""
    out_dtype = torch.promote_types(grads.dtype, torch.float32)
    activations, grads = activations.double(), grads.double()
    dims = spatial_dims(grads)
    grads_2 = grads.pow(2)
    grads_3 = grads_2 * grads
    sum_activations = broadcast_weights(activations.sum(dim=dims), activations)
    alpha = grads_2 / (2 * grads_2 + sum_activations * grads_3 + eps)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(grads) * alpha).sum(dim=dims).to(out_dtype)


@register_method("gradcam++", title="Grad-CAM++")
class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++.

    Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", WACV 2018. https://arxiv.org/abs/1710.11063

    .. math::
        \alpha^{kc}_{ij} = \frac{(\partial_{ij} y^c)^2}
            {2(\partial_{ij} y^c)^2 + \sum_{ab} A^k_{ab}\,(\partial_{ij} y^c)^3}, \qquad
        w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(\partial_{ij} y^c)

    where :math:`\partial_{ij} y^c = \partial y^c / \partial A^k_{ij}`, and
    :math:`L^c = \mathrm{ReLU}(\sum_k w^c_k A^k)`. Cost: one forward, one
    backward pass. Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 3-D) in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import GradCAMPlusPlus
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with GradCAMPlusPlus(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return grad_cam_plusplus_weights(activations, grads)
