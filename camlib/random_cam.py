"""RandomCAM: random channel weights, a baseline for sanity checks and metrics."""

from __future__ import annotations

import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["RandomCAM"]


@register_method("randomcam", title="RandomCAM")
class RandomCAM(BaseCAM):
    r"""Random channel weights :math:`w_k \sim U(-1, 1)`, drawn with torch's
    generator on the model's device (seed it with ``torch.manual_seed``).

    .. math::
        L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    A baseline: a useful explanation method should beat it on every metric.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import torch, torchvision
        >>> from camlib import RandomCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> _ = torch.manual_seed(0)
        >>> with RandomCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, class_specific=False, stochastic=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return torch.rand(activations.shape[:2], device=activations.device) * 2 - 1
