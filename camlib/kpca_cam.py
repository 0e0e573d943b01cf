"""KPCA-CAM: the first kernel principal component of the activations."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.utils.svd_on_activations import get_2d_projection_kernel

__all__ = ["KPCA_CAM"]


@register_method("kpcacam", title="KPCA-CAM")
class KPCA_CAM(BaseCAM):
    r"""KPCA-CAM.

    Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA", 2024. https://arxiv.org/abs/2410.00267

    With :math:`K` the double-centred kernel matrix between positions (each a
    channel vector, centred per channel) and :math:`(\lambda_1, u_1)` its top
    eigenpair:

    .. math::
        L = \mathrm{ReLU}\big(\sqrt{\lambda_1}\, u_1\big)

    the same as scikit-learn's ``KernelPCA(n_components=1).fit_transform``, but
    computed for the whole batch in torch on the model's device. Class-agnostic.
    Cost: one forward pass and one ``N x N`` eigendecomposition per image
    (``N`` = positions). Output: ``np.float32 [B, H, W]`` in [0, 1].

    Args:
        kernel: ``"sigmoid"`` (default), ``"rbf"``, ``"poly"``, ``"linear"`` or ``"cosine"``.
        gamma: kernel coefficient (default ``1 / channels``).

    Example:
        >>> import torch, torchvision
        >>> from camlib import KPCA_CAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with KPCA_CAM(model, [model.layer4[-1]], kernel="rbf") as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, class_specific=False)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        kernel: str = "sigmoid",
        gamma: Optional[float] = None,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        get_2d_projection_kernel(torch.zeros(1, 1, 1, 1), kernel, gamma)  # validates the kernel name
        self.kernel = kernel
        self.gamma = gamma

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection_kernel(activations, self.kernel, self.gamma)
