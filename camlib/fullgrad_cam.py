"""FullGrad: input-gradients plus the bias-gradients of every convolution and batch norm."""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.find_layers import find_layer_predicate_recursive
from camlib.utils.image import scale_accross_batch_and_channels, scale_cam_image
from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["BIAS_LAYER_TYPES", "FullGrad", "effective_bias", "fullgrad_map", "has_spatial_bias"]

#: The layers whose biases FullGrad uses (matched by exact type, as pytorch-grad-cam
#: does); the 3-D types serve 5-D (volumetric or video) inputs.
BIAS_LAYER_TYPES = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Conv3d, torch.nn.BatchNorm3d)

_BATCH_NORM_TYPES = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def has_spatial_bias(layer: torch.nn.Module) -> bool:
    """Whether FullGrad uses ``layer``: a convolution or batch norm (2-D or 3-D) with a bias."""
    return type(layer) in BIAS_LAYER_TYPES and getattr(layer, "bias", None) is not None


def effective_bias(layer: torch.nn.Module) -> torch.Tensor:
    """The per-channel bias ``[C]`` a layer adds to its output, detached.

    For a convolution it is its ``bias``. A batch norm in eval mode computes
    ``gamma (x - mu) / sqrt(var + eps) + beta``, whose constant part is
    ``beta - gamma mu / sqrt(var + eps)`` with the running statistics.
    """
    with torch.no_grad():
        if isinstance(layer, _BATCH_NORM_TYPES):
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            return (layer.bias - layer.running_mean * scale).detach().float()
        return layer.bias.detach().float()


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``[N, *s]`` maps to ``size`` (torch order) without rescaling their values."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def _cv_order(size: Sequence[int]) -> tuple:
    """Spatial size in torch order (D, H, W) -> OpenCV order (W, H, D), as scale_cam_image expects."""
    return tuple(int(s) for s in reversed(tuple(size)))


def fullgrad_map(
    input_tensor: torch.Tensor,
    input_grad: torch.Tensor,
    biases: Sequence[torch.Tensor],
    bias_grads: Sequence[torch.Tensor],
    eigen_smooth: bool = False,
) -> torch.Tensor:
    """The FullGrad saliency of a batch, before the final scaling: ``[B, *S]``.

    Every map below is min-max scaled to [0, 1] on its own (per image and
    channel) and resized to the input's spatial size ``S``.

    Args:
        input_tensor: the input ``x``, ``[B, C_in, *S]``.
        input_grad: ``dy/dx``, same shape.
        biases: one ``[C_l]`` effective bias per layer.
        bias_grads: one ``dy/dz_l`` ``[B, C_l, *S_l]`` per layer (the gradient
            with respect to the layer's output).
        eigen_smooth: instead of summing the terms, project the ``C_in + L``
            term maps (shrunk 8x per side to save memory, keeping at least 2
            pixels per side) on their first principal component and resize it back.

    Returns:
        ``[B, *S]`` float32 tensor, non-negative (sum) or scaled to [0, 1] (eigen).
    """
    if len(biases) != len(bias_grads):
        raise ValueError(
            f"got {len(biases)} biases but {len(bias_grads)} gradients; pass one gradient per bias"
        )
    size = tuple(input_tensor.shape[2:])
    input_term = scale_accross_batch_and_channels((input_grad.float() * input_tensor.float()).abs(), None)
    # Resizing is linear, so summing a layer's scaled channels before resizing
    # gives the same map as resizing every channel, at a fraction of the cost.
    layer_maps = []
    for bias, grads in zip(biases, bias_grads):
        bias = bias.to(grads.device).reshape(1, -1, *([1] * (grads.ndim - 2)))
        per_channel = scale_accross_batch_and_channels((bias * grads.float()).abs(), None)
        layer_maps.append(_resize(per_channel.sum(dim=1), size))
    if not eigen_smooth:
        total = input_term.sum(dim=1)
        for layer_map in layer_maps:
            total = total + layer_map
        return total
    terms = torch.cat([input_term, *(m[:, None] for m in layer_maps)], dim=1)
    # (at least 2 per side where possible, so that small inputs keep a non-trivial map)
    small = tuple(min(s, max(2, s // 8)) for s in size)
    terms = scale_accross_batch_and_channels(terms, _cv_order(small))
    projection = get_2d_projection(terms)
    return scale_cam_image(projection, _cv_order(size))


def _channels_first(output: torch.Tensor) -> torch.Tensor:
    """Convolutions and batch norms already give ``[B, C, *S]``: nothing to infer."""
    return output


@register_method("fullgrad", title="FullGrad")
class FullGrad(BaseCAM):
    r"""FullGrad.

    Srinivas and Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019. https://arxiv.org/abs/1905.00780

    The map sums the input-gradient term and the bias-gradient term of every
    ``Conv2d``/``BatchNorm2d`` (``Conv3d``/``BatchNorm3d`` for 5-D inputs) that
    has a bias; ``target_layers`` is ignored:

    .. math::
        S(x) = \sum_{c} \psi\big(|x_c \odot \nabla_{x_c} y|\big)
             + \sum_{l} \sum_{c} \psi\big(|b_{l,c}\, \nabla_{z_{l,c}} y|\big)

    where :math:`z_l` is layer :math:`l`'s output, :math:`b_l` its bias (for a
    batch norm :math:`\beta - \gamma\mu/\sqrt{\sigma^2+\epsilon}` from the
    running statistics) and :math:`\psi` scales a map to [0, 1] and resizes it
    to the input. With ``eigen_smooth`` the term maps are projected on their
    first principal component instead of summed. The result is scaled to [0, 1].

    Cost: one forward and one full backward pass (down to the input), holding
    one gradient per bias layer. Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]``
    for 5-D input) in [0, 1]. ``per_layer=True`` is not available: the terms
    are summed into one map.

    Args:
        model: the network (not modified).
        target_layers: ignored (a warning is issued when it is not empty);
            pass ``[]``.
        reshape_transform: applied to every bias layer's output; rarely needed,
            since convolutions and batch norms give ``[B, C, *S]``.
        output_adapter: selects the scores in the model's output (see
            :class:`~camlib.base_cam.BaseCAM`).

    Example:
        >>> import torch, torchvision
        >>> from camlib import FullGrad
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with FullGrad(model, target_layers=[]) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape, maps.dtype
        ((2, 64, 64), dtype('float32'))
    """

    capabilities = Capabilities(input_gradient=True, own_layers=True, per_layer=False)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: Optional[List[torch.nn.Module]] = None,
        reshape_transform: Optional[Callable] = None,
        *,
        output_adapter: Optional[Callable] = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if target_layers is not None and not isinstance(target_layers, (list, tuple)):
            raise TypeError(
                f"target_layers must be a list (FullGrad ignores it; pass []), got {type(target_layers).__name__}"
            )
        # A module registered in several places (shared weights) is used once.
        bias_layers = list(
            {id(layer): layer for layer in find_layer_predicate_recursive(model, has_spatial_bias)}.values()
        )
        if target_layers:
            warnings.warn(
                f"FullGrad ignores target_layers: it uses all {len(bias_layers)} Conv/BatchNorm layers "
                "with a bias instead. Pass target_layers=[] to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        for layer in bias_layers:
            if isinstance(layer, _BATCH_NORM_TYPES) and layer.running_mean is None:
                raise ValueError(
                    f"{layer!r} has no running statistics (track_running_stats=False), so its bias "
                    "contribution depends on the batch and FullGrad cannot use it; build the model with "
                    "track_running_stats=True or use a method that does not need biases (e.g. GradCAM)"
                )
        if not bias_layers:
            warnings.warn(
                f"{type(model).__name__} has no Conv2d/BatchNorm2d/Conv3d/BatchNorm3d layer with a bias; "
                "the FullGrad map is the input-gradient term alone",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(
            model,
            bias_layers,
            reshape_transform if reshape_transform is not None else _channels_first,
            output_adapter=output_adapter,
            **kwargs,
        )

    @property
    def bias_data(self) -> list[np.ndarray]:
        """The current effective bias of every layer used, as numpy arrays (as in pytorch-grad-cam)."""
        return [effective_bias(layer).cpu().numpy() for layer in self.target_layers]

    def get_bias_data(self, layer: torch.nn.Module) -> torch.Tensor:
        """The effective bias ``[C]`` of one of FullGrad's layers (see :func:`effective_bias`)."""
        return effective_bias(layer)

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """The FullGrad map as one entry: the input term and every bias term that ran, summed."""
        ran = [i for i, grads in enumerate(capture.gradients) if grads is not None]
        biases = [self.get_bias_data(capture.layers[i]) for i in ran]
        grads = [capture.gradients[i] for i in ran]
        return [fullgrad_map(capture.input, capture.input_gradient, biases, grads, eigen_smooth)]

    def __repr__(self) -> str:
        return f"FullGrad(model={type(self.model).__name__}, {len(self.target_layers)} bias layer(s))"
