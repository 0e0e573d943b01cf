"""Eigen-Grad-CAM: the first principal component of gradient x activation."""

from __future__ import annotations

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["EigenGradCAM"]


@register_method("eigengradcam", title="EigenGradCAM")
class EigenGradCAM(BaseCAM):
    r"""Eigen-Grad-CAM: like Eigen-CAM, but on the class-specific product
    :math:`\frac{\partial y^c}{\partial A} \odot A` (so it depends on the target).

    .. math::
        L^c = \mathrm{ReLU}(X^c v_1), \quad X^c = \mathrm{centre}\big(\tfrac{\partial y^c}{\partial A} \odot A\big)

    Cost: one forward, one backward pass and a batched SVD. Output:
    ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import EigenGradCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with EigenGradCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities()

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection(grads * activations)
