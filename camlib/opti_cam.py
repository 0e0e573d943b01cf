"""Opti-CAM: channel weights optimised so that the input masked by the map keeps the target score high."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from camlib._ops import broadcast_weights
from camlib.base_cam import BaseCAM, weighted_sum_map
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.batched import score_outputs
from camlib.utils.progress import progress_bar

__all__ = ["OptiCAM", "opti_cam_mask"]


def opti_cam_mask(activations: torch.Tensor, logits: torch.Tensor, size: tuple) -> torch.Tensor:
    """Opti-CAM's mask: ``sum_k softmax(logits)_k A^k`` upsampled ((bi/tri)linearly, corners not aligned)
    to ``size`` and min-max scaled per image: ``[B, C, *s]`` activations, ``[B, C]`` logits ->
    ``[B, *size]`` in [0, 1] (0 where the map is constant)."""
    # exp(u - max u) instead of softmax(u): the same mask (min-max scaling removes the factor), but each
    # weight's gradient is computed as a product, not a difference of two near-equal terms, so a channel
    # without effect (all zero) gets exactly 0 instead of rounding noise that Adam would scale to a full step
    weights = torch.exp(logits - logits.detach().amax(dim=1, keepdim=True))
    saliency = (broadcast_weights(weights, activations) * activations).sum(dim=1)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[saliency.ndim - 1]
    up = F.interpolate(saliency[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]
    flat = up.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(up.shape)


@register_method("opticam", title="Opti-CAM")
class OptiCAM(BaseCAM):
    r"""Opti-CAM.

    Zhang, Torres, Sicre, Avrithis & Ayache, "Opti-CAM: Optimizing saliency maps
    for interpretability", CVIU 2024 (arXiv 2023). https://arxiv.org/abs/2301.07002

    .. math::
        S_u = \sum_k \mathrm{softmax}(u)_k\, \mathrm{ReLU}(A^k), \qquad
        u^\star = \arg\max_u\; y^c\big(X \odot n(U(S_u))\big), \qquad
        L^c = S_{u^\star}

    with :math:`U` upsampling to the input's size and :math:`n` min-max scaling
    to [0, 1]; :math:`u` (one weight per channel and image) starts at 0.5 and is
    optimised by Adam on the target score of the masked input.

    Choices follow the authors' published code (hanwei0912/OptiCAM): ReLU'd
    activations, the softmax over channels, bilinear upsampling, min-max
    scaling, the raw target score (the logit) as objective, Adam with
    ``learning_rate=0.1`` for ``iterations=50`` (their script's defaults).
    Their check every ``iterations // 10`` steps that stops the whole batch
    when its summed loss went up is left out, so an image's map does not depend
    on the other images of the batch.

    Each image is optimised on its own, from its own single-image forward pass,
    so its map is exactly the one a call with that image alone returns. (The
    objective is per image, but 50 Adam steps at ``learning_rate=0.1`` amplify
    the rounding differences between a batched and a single-image convolution,
    about 1e-7, to about 1e-2 in the map: on resnet18, a batch of two differed
    from its images' single calls by up to 0.026.)

    Cost: one forward pass on the batch, then per image one forward pass and
    ``iterations`` forward and backward passes through the whole model (the
    gradient goes to the channel weights only; nothing is written into the
    model's ``.grad``). Output:
    ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels are combined (each optimised on its own).
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        iterations: Adam steps (50).
        learning_rate: Adam's learning rate (0.1).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import OptiCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with OptiCAM(model, [model.layer4[-1]], iterations=5, progress=False) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape
        (2, 64, 64)
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        iterations: int = 50,
        learning_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer (50 by default), got {iterations!r}")
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
            raise ValueError(f"learning_rate must be a positive number (0.1 by default), got {learning_rate!r}")
        self.iterations = iterations
        self.learning_rate = float(learning_rate)

    def optimised_weights(self, capture: Capture, index: int) -> torch.Tensor:
        """The optimised channel weights ``softmax(u*)`` ``[B, C]`` of layer ``index``."""
        x, targets = capture.input, list(capture.targets)
        activations = torch.relu(capture.activations[index]).detach()
        logits = torch.full(activations.shape[:2], 0.5, device=activations.device, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=self.learning_rate)
        size = tuple(x.shape[2:])
        with torch.enable_grad(), progress_bar(
            total=self.iterations, progress=self.progress, desc="OptiCAM", leave=False, unit="step"
        ) as bar:
            for _ in range(self.iterations):
                mask = opti_cam_mask(activations, logits, size).to(x.dtype)
                scores = score_outputs(self.model(x * mask[:, None]), targets)
                (grad,) = torch.autograd.grad(-scores.sum(), [logits])
                logits.grad = grad
                optimizer.step()
                logits.grad = None
                bar.update(1)
        return torch.softmax(logits.detach(), dim=1)

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The raw map of every layer, each image optimised from its own single-image capture."""
        if capture.input.shape[0] == 1:
            return super().layer_maps(capture, eigen_smooth)
        per_image = [
            super(OptiCAM, self).layer_maps(self.capture(capture.input[i : i + 1], [target]), eigen_smooth)
            for i, target in enumerate(capture.targets)
        ]
        return [torch.cat(maps) for maps in zip(*per_image)]

    def layer_map(self, capture: Capture, index: int, eigen_smooth: bool) -> torch.Tensor:
        """``sum_k softmax(u*)_k ReLU(A^k)`` ``[B, *s]`` (first principal component with ``eigen_smooth``)."""
        weights = self.optimised_weights(capture, index)
        return weighted_sum_map(weights, torch.relu(capture.activations[index]), eigen_smooth)
