"""Seg-Eigen-CAM: principal component of |gradient| x activation, salient side positive."""

from __future__ import annotations

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.utils.svd_on_activations import get_2d_projection_with_sign_correction

__all__ = ["SegEigenCAM"]


@register_method("segeigencam", title="SegEigenCAM")
class SegEigenCAM(BaseCAM):
    r"""Seg-Eigen-CAM.

    Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for
    Semantic Segmentation Models", Applied Sciences 15(13), 7562, 2025.
    https://doi.org/10.3390/app15137562

    .. math::
        L^c = \mathrm{ReLU}\big(s\, X^c v_1\big), \quad
        X^c = \mathrm{centre}\big(|\tfrac{\partial y^c}{\partial A}| \odot A\big)

    with the sign :math:`s` chosen so that the largest-magnitude value is
    positive. Meant for segmentation targets (``SemanticSegmentationTarget``) but
    works for any. Cost: one forward, one backward pass and a batched SVD.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import SegEigenCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with SegEigenCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities()

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection_with_sign_correction(grads.abs() * activations)
