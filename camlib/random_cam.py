"""RandomCAM: random channel weights, a baseline for sanity checks and metrics."""

from __future__ import annotations

import numpy as np
import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method

__all__ = ["RandomCAM"]


@register_method("randomcam", title="RandomCAM")
class RandomCAM(BaseCAM):
    r"""Random channel weights :math:`w_k \sim U(-1, 1)`, drawn from numpy's global
    generator as pytorch-grad-cam draws them (seed it with ``np.random.seed``: the
    same seed gives the same maps as grad-cam 1.5.7).

    .. math::
        L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    A baseline: a useful explanation method should beat it on every metric.
    Output: ``np.float32 [B, H, W]`` in [0, 1].

    Example:
        >>> import numpy as np, torch, torchvision
        >>> from camlib import RandomCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> np.random.seed(0)
        >>> with RandomCAM(model, [model.layer4[-1]]) as cam:
        ...     cam(torch.randn(1, 3, 64, 64)).shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, class_specific=False, stochastic=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        weights = np.random.uniform(-1, 1, size=tuple(activations.shape[:2]))  # noqa: NPY002 (as 1.5.7)
        return torch.from_numpy(weights).to(device=activations.device, dtype=torch.float32)
