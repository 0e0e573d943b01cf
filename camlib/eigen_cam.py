"""Eigen-CAM: the first principal component of the activations (no gradients, no class)."""

from __future__ import annotations

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["EigenCAM"]


@register_method("eigencam", title="EigenCAM")
class EigenCAM(BaseCAM):
    r"""Eigen-CAM.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020. https://arxiv.org/abs/2008.00299

    With :math:`X` the ``positions x channels`` matrix of the activations,
    centred per channel, and :math:`v_1` its first right singular vector:

    .. math::
        L = \mathrm{ReLU}(X v_1)

    The sign of :math:`v_1` is fixed so the largest-magnitude entry is
    positive (pytorch-grad-cam leaves it to LAPACK). Class-agnostic: targets are
    ignored. Cost: one forward pass and a batched SVD. Output:
    ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import EigenCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with EigenCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, class_specific=False)

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection(activations)
