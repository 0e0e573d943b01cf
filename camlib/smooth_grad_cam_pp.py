"""Smooth Grad-CAM++: Grad-CAM++ with its gradient powers averaged over noisy copies of the input."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from camlib._ops import broadcast_weights, spatial_dims
from camlib.base_cam import BaseCAM, weighted_sum_map
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.noise import add_gaussian_noise, check_noise_settings

__all__ = ["SmoothGradCAMpp", "smooth_grad_cam_pp_weights"]


def smooth_grad_cam_pp_weights(
    activations: torch.Tensor,
    grads: Sequence[torch.Tensor],
    eps: float = 1e-8,
) -> torch.Tensor:
    """Smooth Grad-CAM++ channel weights ``[B, C]`` from the clean activations
    ``[B, C, *S]`` and the gradients of the ``n`` noisy passes (each ``[B, C, *S]``).

    ``alpha = mean(g^2) / (2 mean(g^2) + sum_S(A * mean(g^3)) + eps)`` and
    ``w = sum_S(alpha * ReLU(mean(g)))``.
    """
    count = len(grads)
    if count == 0:
        raise ValueError("smooth_grad_cam_pp_weights needs the gradients of at least one noisy pass, got none")
    mean_1 = sum(grads) / count
    mean_2 = sum(g.pow(2) for g in grads) / count
    mean_3 = sum(g.pow(3) for g in grads) / count
    dims = spatial_dims(activations)
    denominator = 2 * mean_2 + broadcast_weights((mean_3 * activations).sum(dim=dims), activations) + eps
    alpha = mean_2 / denominator
    return (alpha * torch.relu(mean_1)).sum(dim=dims)


@register_method("smoothgradcam++", title="Smooth Grad-CAM++")
class SmoothGradCAMpp(BaseCAM):
    r"""Smooth Grad-CAM++.

    Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
    Technique for Deep Convolutional Neural Network Models", arXiv 2019.
    https://arxiv.org/abs/1908.01224

    With :math:`g_m = \partial y^c / \partial A^k` taken at the noisy input
    :math:`X + \delta_m`, :math:`\delta_m \sim \mathcal{N}(0, \sigma^2)`,
    :math:`m = 1..n`, and :math:`\overline{g^p} = \frac{1}{n}\sum_m g_m^p`:

    .. math::
        \alpha^{kc}_{ij} = \frac{\overline{g^2}_{ij}}
            {2\,\overline{g^2}_{ij} + \sum_{ab} A^k_{ab}\,\overline{g^3}_{ij} + 10^{-8}}, \qquad
        w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(\overline{g}_{ij}), \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    where :math:`A^k` are the activations of the clean input. As in torchcam,
    the numerator of :math:`\alpha` is the averaged square of the gradient
    (the paper writes the averaged gradient); unlike torchcam, the ReLU term
    uses the gradient averaged over all noisy passes and the map is built on
    the clean input's activations, as the paper describes (torchcam uses the
    last noisy pass for both). With ``std=0`` the two agree.

    The noise comes from the default random generator of the model's device
    (``torch.manual_seed`` makes a call reproducible).

    Cost: ``num_samples + 1`` forward passes (the clean one, which gives the activations, without
    autograd) and ``num_samples`` backward passes.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose activations and gradients are used.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        num_samples: noisy copies of the input (:math:`n`).
        std: standard deviation of the noise added to the input (:math:`\sigma`).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM`.

    Example:
        >>> import torch, torchvision
        >>> from camlib import SmoothGradCAMpp
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with SmoothGradCAMpp(model, [model.layer4[-1]], num_samples=2) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(stochastic=True)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        num_samples: int = 4,
        std: float = 0.3,
        **kwargs: Any,
    ) -> None:
        num_samples, std = check_noise_settings(num_samples, std)
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.num_samples = num_samples
        self.std = std

    def noisy_gradients(self, capture: Capture) -> List[List[torch.Tensor]]:
        """The gradients of every target layer at ``num_samples`` noisy copies of the
        captured input, for the captured targets: ``[sample][layer] -> [B, C, *S]``."""
        x = capture.input
        passes = []
        for _ in range(self.num_samples):
            noisy = add_gaussian_noise(x, self.std)
            record = super().capture(noisy, list(capture.targets), gradients=self.uses_gradients)
            if record.gradients is None:
                raise ValueError(
                    "SmoothGradCAMpp needs the gradients of the noisy passes, but this CAM was built with "
                    "uses_gradients=False; build it without that argument"
                )
            passes.append([g.float() for g in record.gradients])
        return passes

    def capture(
        self,
        x: torch.Tensor,
        targets: Optional[list] = None,
        *,
        default_targets: Optional[Callable[[torch.Tensor], list]] = None,
        gradients: Optional[bool] = False,
    ) -> Capture:
        """The clean pass: its activations and targets only (no backward pass; the
        gradients come from the noisy passes, :meth:`noisy_gradients`)."""
        return super().capture(x, targets, default_targets=default_targets, gradients=gradients)

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        passes = self.noisy_gradients(capture)
        maps = []
        for index, activations in enumerate(capture.activations):
            activations = activations.float()
            weights = smooth_grad_cam_pp_weights(activations, [grads[index] for grads in passes])
            maps.append(weighted_sum_map(weights, activations, eigen_smooth))
        return maps
