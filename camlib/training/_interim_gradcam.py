"""Interim differentiable Grad-CAM, used by GAIN until ``BaseCAM.differentiable_maps`` lands.

Same contract as the core call: ``differentiable_maps(input_tensor, targets)`` with one
target per image (``[B, H, W]``) or one list of K targets per image (``[B, K, H, W]``);
ReLU, per-map min-max (with an epsilon), then a bilinear resize to the input size, all
differentiable; gradients taken with ``create_graph=True``; hooks removed in ``finally``.
To be deleted once the core call is on main.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-7


class InterimGradCAM:
    """Minimal differentiable Grad-CAM over one or more ``[B, C, h, w]`` target layers."""

    def __init__(self, model: torch.nn.Module, target_layers: Sequence[torch.nn.Module]) -> None:
        self.model = model
        self.target_layers = list(target_layers)

    def differentiable_maps(self, input_tensor: torch.Tensor, targets: Sequence[Any]) -> torch.Tensor:
        per_image = [list(t) if isinstance(t, (list, tuple)) else [t] for t in targets]
        nested = isinstance(targets[0], (list, tuple))
        k = len(per_image[0])
        captured: dict = {}

        def hook(module, args, output):
            captured[module] = output

        handles = [layer.register_forward_hook(hook) for layer in self.target_layers]
        try:
            with torch.enable_grad():
                outputs = self.model(input_tensor)
        finally:
            for handle in handles:
                handle.remove()
        missing = [layer for layer in self.target_layers if layer not in captured]
        if missing:
            raise ValueError(f"target layer {missing[0].__class__.__name__} did not run in the forward pass")
        acts = [captured[layer] for layer in self.target_layers]
        size = input_tensor.shape[-2:]
        maps_k = []
        with torch.enable_grad():
            for j in range(k):
                score = torch.stack([per_image[b][j](outputs[b]).sum() for b in range(len(per_image))]).sum()
                grads = torch.autograd.grad(score, acts, create_graph=True, allow_unused=True)
                if any(g is None for g in grads):
                    raise ValueError("the target score does not depend on a target layer")
                layer_maps = []
                for a, g in zip(acts, grads):
                    w = g.mean(dim=(2, 3), keepdim=True)
                    cam = _minmax(F.relu((w * a).sum(dim=1, keepdim=True)))
                    layer_maps.append(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0])
                maps_k.append(_minmax(torch.stack(layer_maps).mean(0)))
        maps = torch.stack(maps_k, dim=1)
        return maps if nested else maps[:, 0]


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    low = cam.amin(dim=(-2, -1), keepdim=True)
    high = cam.amax(dim=(-2, -1), keepdim=True)
    return (cam - low) / (high - low + _EPS)
