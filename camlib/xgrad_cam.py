"""XGrad-CAM: gradients weighted by the normalised activations."""

from __future__ import annotations

import torch

from camlib._ops import broadcast_weights, spatial_dims
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["XGradCAM", "xgrad_cam_weights"]


def xgrad_cam_weights(activations: torch.Tensor, grads: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``w_c = sum_ij A_c^ij / (sum_ab A_c^ab) * dy/dA_c^ij``: ``[B, C, *S] -> [B, C]``."""
    dims = spatial_dims(grads)
    sum_activations = broadcast_weights(activations.sum(dim=dims), activations)
    return (grads * activations / (sum_activations + eps)).sum(dim=dims)


@register_method("xgradcam", title="XGrad-CAM")
class XGradCAM(BaseCAM):
    r"""XGrad-CAM.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020. https://arxiv.org/abs/2008.02312

    .. math::
        w^c_k = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}}
            \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Cost: one forward, one backward pass. Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import XGradCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with XGradCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return xgrad_cam_weights(activations, grads)
