"""FEM: Feature Explanation Method, channels weighted by their share of k-sigma outliers."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from camlib._ops import broadcast_weights, spatial_dims
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["FEM", "fem_weights"]


def fem_weights(activations: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """Fraction of each channel's positions above ``mean + k * std`` (population std):
    ``[B, C, *S] -> [B, C]``."""
    dims = spatial_dims(activations)
    mean = activations.mean(dim=dims)
    std = activations.std(dim=dims, correction=0)
    threshold = broadcast_weights(mean + k * std, activations)
    return (activations > threshold).float().mean(dim=dims)


@register_method("fem", title="FEM")
class FEM(BaseCAM):
    r"""FEM, the Feature Explanation Method.

    Fuad et al., "Features Understanding in 3D CNNs for Actions Recognition in
    Video", IPTA 2020. https://hal.science/hal-02963298/document

    .. math::
        w_k = \frac{1}{Z}\sum_{ij} \mathbb{1}\big[A^k_{ij} > \mu_k + k_\sigma \sigma_k\big], \qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    Class-agnostic, no gradients. Cost: one forward pass. Output:
    ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 3-D) in [0, 1].

    Args:
        k: number of standard deviations above the mean that counts as salient.

    Example:
        >>> import torch, torchvision
        >>> from camlib import FEM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with FEM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, class_specific=False, min_positions=6)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        k: float = 2,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.k = k

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return fem_weights(activations, self.k)
