"""LayerCAM: activations weighted position by position by their positive gradients."""

from __future__ import annotations

import torch

from camlib._ops import reduce_channels
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["LayerCAM", "layer_cam_map"]


def layer_cam_map(activations: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """``sum_c ReLU(dy/dA_c) * A_c``: ``[B, C, *S] -> [B, *S]``."""
    return reduce_channels(torch.relu(grads) * activations, eigen_smooth)


@register_method("layercam", title="LayerCAM")
class LayerCAM(BaseCAM):
    r"""LayerCAM.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021. https://ieeexplore.ieee.org/document/9462463

    .. math::
        L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y^c}{\partial A^k}\big) \odot A^k\Big)

    Works well on early layers too (combine several with per-layer maps). Cost:
    one forward, one backward pass. Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import LayerCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with LayerCAM(model, [model.layer3[-1], model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64), per_layer=True).shape
        (1, 2, 64, 64)
    """

    capabilities = Capabilities(differentiable=True)

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return layer_cam_map(activations, grads, eigen_smooth)
