"""RefineCAM: combine several layers' maps by their product, to denoise early layers."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from camlib.base_cam import BaseCAM
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.utils.image import scale_cam_image

__all__ = ["RefineCAM", "refine_maps"]


def refine_maps(per_layer_maps: torch.Tensor) -> torch.Tensor:
    """Product of per-layer maps: ``[B, L, *S] -> [B, *S]``, scaled to [0, 1].

    Each layer's map is first clipped at 0 and min-max normalised to [0, 1]
    (per image), so that every layer weighs the same in the product and a
    region survives only where all layers agree.
    """
    if per_layer_maps.ndim < 3:
        raise ValueError(f"expected per-layer maps [B, L, *spatial], got shape {list(per_layer_maps.shape)}")
    batch, layers = per_layer_maps.shape[:2]
    flat = torch.relu(per_layer_maps.float()).reshape(batch * layers, *per_layer_maps.shape[2:])
    normalised = scale_cam_image(flat).reshape(per_layer_maps.shape)
    return scale_cam_image(normalised.prod(dim=1))


class RefineCAM:
    r"""RefineCAM: the product of a base method's maps at several layers.

    Domeniconi, Stramiglio, Lombardi and Salti, "How to Evaluate and Refine
    your CAM", 2026. https://arxiv.org/abs/2605.14641

    With :math:`L^{(l)}` the base method's map at target layer :math:`l`,
    normalised to [0, 1] by :math:`\nu`,

    .. math::
        L = \nu\Big(\prod_{l} \nu\big(\mathrm{ReLU}(L^{(l)})\big)\Big)

    A region is kept only where every layer highlights it: deep layers remove
    the noise of early, high-resolution layers, and early layers sharpen deep,
    coarse ones. All layers come from ONE forward and backward pass of the base
    method (it replaces the base method's mean over layers by this product),
    not one pass per layer. Output: ``np.float32 [B, H, W]`` in [0, 1].

    pytorch-grad-cam meant to normalise every layer's map before the product,
    but its loop rebinds its loop variable and has no effect; it does not
    matter there only because each of its maps has already been scaled to
    [0, 1] by the base method. Here the normalisation is explicit.

    Args:
        model: the network (not modified).
        target_layers: the layers to combine, e.g. one per ResNet stage.
        reshape_transform: passed to the base method.
        base_method: a :class:`~camlib.base_cam.BaseCAM` subclass that makes
            one map per layer (default Grad-CAM++).
        **kwargs: further arguments for the base method's constructor (e.g.
            ``tta_transforms``, ``compute_input_gradient``).

    Example:
        >>> import torch, torchvision
        >>> from camlib import RefineCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> layers = [model.layer2[-1], model.layer3[-1], model.layer4[-1]]
        >>> with RefineCAM(model, target_layers=layers) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape, maps.dtype
        ((2, 64, 64), dtype('float32'))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        base_method: type = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_method, BaseCAM):
            raise TypeError(
                f"base_method must be a CAM class, got an instance of {type(base_method).__name__}; "
                f"pass the class itself: base_method={type(base_method).__name__}"
            )
        if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
            raise TypeError(
                f"base_method must be a camlib CAM class such as GradCAMPlusPlus, got {base_method!r}"
            )
        if base_method.allows_empty_target_layers:
            raise ValueError(
                f"{base_method.__name__} chooses its own layers and makes no map per target layer, so "
                "RefineCAM has nothing to multiply; use a method that explains the given target_layers "
                "(e.g. GradCAMPlusPlus, GradCAM, LayerCAM)"
            )
        self.base_cam = base_method(model, target_layers, reshape_transform, **kwargs)

    @property
    def model(self) -> torch.nn.Module:
        """The explained model."""
        return self.base_cam.model

    @property
    def target_layers(self) -> list:
        """The layers whose maps are multiplied."""
        return self.base_cam.target_layers

    @property
    def outputs(self):
        """The model's (detached) output of the last forward pass."""
        return self.base_cam.outputs

    @staticmethod
    def aggregate_multi_layers(cam_per_target_layer: Sequence[torch.Tensor]) -> torch.Tensor:
        """RefineCAM's combination of the base method's ``[B, 1, *S]`` per-layer maps: ``[B, *S]``."""
        return refine_maps(torch.cat(list(cam_per_target_layer), dim=1))

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        *,
        aug_smooth: bool = False,
        per_layer: bool = False,
    ) -> np.ndarray:
        """Compute the maps.

        Args:
            input_tensor: ``[B, C, H, W]`` (or ``[B, C, D, H, W]``) float tensor.
            targets: one callable per image, or None for each image's top class.
            eigen_smooth: passed to the base method.
            aug_smooth: average over test-time augmentations (keyword only).
            per_layer: return the base method's map at each target layer, the
                factors of the product, instead of the product (keyword only).

        Returns:
            ``np.float32`` maps in [0, 1]: ``[B, H, W]``, or ``[B, L, H, W]``
            with ``per_layer``.
        """
        if per_layer:
            return self.base_cam(
                input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, per_layer=True
            )
        # The base method runs its own pipeline with the product in place of
        # its mean over layers, for this call only.
        self.base_cam.aggregate_multi_layers = self.aggregate_multi_layers  # type: ignore[method-assign]
        try:
            return self.base_cam(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        finally:
            del self.base_cam.aggregate_multi_layers

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        *,
        aug_smooth: bool = False,
        per_layer: bool = False,
    ) -> np.ndarray:
        """Same as :meth:`forward`."""
        return self.forward(input_tensor, targets, eigen_smooth, aug_smooth=aug_smooth, per_layer=per_layer)

    def release(self) -> None:
        """Remove any hook still attached (hooks only live during a call anyway)."""
        self.base_cam.release()

    def __enter__(self) -> RefineCAM:
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"RefineCAM(base_method={type(self.base_cam).__name__}, model={type(self.model).__name__}, "
            f"target_layers={len(self.target_layers)} layer(s))"
        )
