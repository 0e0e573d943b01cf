"""RefineCAM: combine several layers' maps by their product, to denoise early layers."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch

from camlib.cam_wrapper import CAMWrapper, build_base_cam
from camlib.capabilities import Capabilities
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.registry import register_method
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


@register_method("refinecam", title="RefineCAM")
class RefineCAM(CAMWrapper):
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

    capabilities = GradCAMPlusPlus.capabilities.but(wraps_method=True, differentiable=False, layer_fusion="product")

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        base_method: type = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_method, type) and getattr(base_method, "capabilities", Capabilities()).own_layers:
            raise ValueError(
                f"{base_method.__name__} chooses its own layers and makes no map per target layer, so "
                "RefineCAM has nothing to multiply; use a method that explains the given target_layers "
                "(e.g. GradCAMPlusPlus, GradCAM, LayerCAM)"
            )
        super().__init__(build_base_cam("RefineCAM", base_method, model, target_layers, reshape_transform, **kwargs))

    def aggregate(self, per_layer_maps: torch.Tensor) -> torch.Tensor:
        """The product of the base method's per-layer maps (:func:`refine_maps`); with
        ``per_layer`` the call returns the factors instead."""
        return refine_maps(per_layer_maps)
