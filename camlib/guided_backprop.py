"""Guided backpropagation and deconvnet saliency: input gradients through modified ReLUs.

Both methods differentiate a class score with respect to the input image, but
change how gradients pass backwards through each ReLU:

* **Guided backpropagation** (Springenberg et al., "Striving for Simplicity:
  The All Convolutional Net", https://arxiv.org/abs/1412.6806) keeps a gradient
  only where the ReLU's input was positive *and* the incoming gradient is
  positive: :math:`\\frac{\\partial L}{\\partial x} = g \\cdot [x > 0] \\cdot [g > 0]`.
* **Deconvnet** (Zeiler & Fergus, "Visualizing and Understanding Convolutional
  Networks", https://arxiv.org/abs/1311.2901) ignores the forward mask and
  passes the positive part of the incoming gradient: :math:`\\max(g, 0)`.

The rule is applied by swapping every ``torch.nn.ReLU`` module of the model for
a module with the modified backward, for the duration of one call only. ReLUs
applied functionally (``torch.relu``, ``F.relu``, ``x.relu()``) inside a
model's ``forward`` cannot be swapped and keep the ordinary gradient.

Multiply a guided map with a CAM to get Guided Grad-CAM (:func:`guided_grad_cam`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import nn
from torch.autograd import Function

from camlib.utils.legacy import guided_backprop_device
from camlib.utils.model_state import eval_mode
from camlib.utils.validation import model_device

__all__ = [
    "DeconvnetReLU",
    "DeconvnetReLUModel",
    "GuidedBackpropReLU",
    "GuidedBackpropReLUModel",
    "GuidedBackpropReLUasModule",
    "guided_grad_cam",
]

TargetCategory = Union[None, int, Sequence[int], np.ndarray, torch.Tensor]


class GuidedBackpropReLU(Function):
    """ReLU whose backward pass follows the guided-backpropagation rule.

    Forward: :math:`\\max(x, 0)`. Backward: :math:`g \\cdot [x > 0] \\cdot [g > 0]`,
    where :math:`g` is the incoming gradient. Use it as ``GuidedBackpropReLU.apply(x)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # Keep only the (freshly allocated) sign mask: nothing the model does later can change it.
        ctx.save_for_backward(x > 0)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (positive_input,) = ctx.saved_tensors
        keep = positive_input & (grad_output > 0)
        return grad_output * keep.to(grad_output.dtype)


class DeconvnetReLU(Function):
    """ReLU whose backward pass follows the deconvnet rule of Zeiler & Fergus.

    Forward: :math:`\\max(x, 0)`. Backward: :math:`\\max(g, 0)`, whatever the sign
    of the forward input. Use it as ``DeconvnetReLU.apply(x)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.clamp(min=0)


class _ReLURuleModule(nn.Module):
    """A module applying a ReLU autograd ``Function`` with a custom backward rule."""

    def __init__(self, rule: Type[Function]) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule.apply(x)

    def extra_repr(self) -> str:
        return self.rule.__name__


class GuidedBackpropReLUasModule(_ReLURuleModule):
    """``nn.Module`` form of :class:`GuidedBackpropReLU`, usable in place of ``nn.ReLU``."""

    def __init__(self) -> None:
        super().__init__(GuidedBackpropReLU)


@contextmanager
def _relus_replaced(model: nn.Module, rule: Type[Function]) -> Iterator[int]:
    """Swap every ``nn.ReLU`` submodule of ``model`` for one applying ``rule``, until exit.

    On exit, normal or not, each parent gets back its original ReLU object
    (untouched, so with its own ``inplace`` flag). A ReLU shared by several
    parents, or reused several times in ``forward``, is handled: each
    registration is swapped and restored.

    Yields:
        The number of ReLU registrations swapped.
    """
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent._modules.items()):
                if isinstance(child, nn.ReLU):
                    parent._modules[name] = _ReLURuleModule(rule)
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, original in reversed(swapped):
            parent._modules[name] = original


def _target_indices(target_category: TargetCategory, output: torch.Tensor) -> torch.Tensor:
    """Resolve ``target_category`` into one class index per image, as a long tensor on ``output``'s device."""
    batch_size, n_classes = output.shape
    if target_category is None:
        return output.argmax(dim=1)
    if isinstance(target_category, (torch.Tensor, np.ndarray)):
        target_category = target_category.tolist()  # 0-d gives a scalar, otherwise a list
    if isinstance(target_category, (list, tuple)):
        values = list(target_category)
        if len(values) != batch_size:
            raise ValueError(
                f"target_category has {len(values)} entries but the batch has {batch_size} images; "
                "pass one class index per image, a single int for all, or None for each image's top class"
            )
    else:
        values = [target_category] * batch_size
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                "target_category must be an int, a list of ints (one per image) or None; "
                f"got {value!r} ({type(value).__name__})"
                + (f" in {target_category!r}" if isinstance(target_category, (list, tuple)) else "")
            )
    indices = [int(value) for value in values]
    for index in indices:
        if not -n_classes <= index < n_classes:
            raise ValueError(f"target_category {index} is out of range for a model with {n_classes} outputs")
    return torch.tensor(indices, dtype=torch.long, device=output.device) % n_classes


class _ReLURuleModel:
    """Shared driver: input gradient of a class score with the ReLUs' backward replaced by ``_rule``."""

    _rule: Type[Function]

    def __init__(self, model: nn.Module, device: Union[str, torch.device, None] = None, **legacy_kwargs) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device = guided_backprop_device(self, model, device, legacy_kwargs)  # the older use_cuda
        self.model = model
        if device is None:
            self.device = model_device(model, default="cpu")  # a meta-device model is refused clearly
        else:
            model_device(model, default="cpu")
            self.device = torch.device(device)
            self.model = self.model.to(self.device)

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        """Run the wrapped model on ``input_img`` (no ReLU swapping)."""
        return self.model(input_img)

    def __call__(self, input_img: torch.Tensor, target_category: TargetCategory = None) -> np.ndarray:
        """Compute the map for each image of a batch.

        Args:
            input_img: a batch of images, shape ``[B, C, H, W]``. It is not modified.
            target_category: the class to explain: an int for all images, a list
                of ints (one per image), or None for each image's top-scoring class.

        Returns:
            float32 maps with channels last: shape ``[H, W, C]`` when ``B == 1``
            (as pytorch-grad-cam returns), ``[B, H, W, C]`` otherwise.
        """
        if not isinstance(input_img, torch.Tensor):
            raise TypeError(
                f"input_img must be a torch.Tensor of shape [B, C, H, W], got {type(input_img).__name__}"
            )
        if input_img.ndim != 4:
            raise ValueError(
                f"input_img must have shape [B, C, H, W], got {tuple(input_img.shape)}; "
                "add a batch dimension with input_img.unsqueeze(0)"
            )
        if not input_img.is_floating_point():
            raise TypeError(f"input_img must be a floating point tensor, got dtype {input_img.dtype}")
        if not bool(torch.isfinite(input_img).all()):  # as BaseCAM (check_input_tensor) rejects it
            raise ValueError("input_img contains NaN or Inf values; check the preprocessing")
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), input_img.dtype)
        x = input_img.detach().to(self.device, dtype).requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad(), _relus_replaced(self.model, self._rule) as n_swapped:
            if n_swapped == 0:
                warnings.warn(
                    f"{type(self.model).__name__} has no torch.nn.ReLU modules, so {type(self).__name__} "
                    "returns the plain input gradient; functional relu calls (F.relu, torch.relu) "
                    "cannot be replaced",
                    stacklevel=2,
                )
            output = self.model(x)
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"the model returned {type(output).__name__}, expected a tensor of class scores "
                    "[B, n_classes]; wrap the model so that forward returns the logits tensor"
                )
            if output.ndim != 2 or output.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the model output has shape {tuple(output.shape)}, expected [B, n_classes] with "
                    f"B = {x.shape[0]}; wrap the model so that forward returns one score vector per image"
                )
            targets = _target_indices(target_category, output)
            score = output.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
        maps = grad.permute(0, 2, 3, 1).float().cpu().numpy()
        return maps[0] if maps.shape[0] == 1 else maps


class GuidedBackpropReLUModel(_ReLURuleModel):
    """Guided backpropagation saliency (Springenberg et al., https://arxiv.org/abs/1412.6806).

    The map is the gradient of the target class score :math:`y^c` with respect
    to the input, where every ``nn.ReLU`` back-propagates
    :math:`g \\cdot [x > 0] \\cdot [g > 0]` instead of :math:`g \\cdot [x > 0]`.

    During a call the model's ``nn.ReLU`` modules are swapped for guided ones and
    the model is put in eval mode; both are undone before the call returns, even
    on error. Parameters' ``.grad`` are not touched. Functional relus
    (``F.relu`` in ``forward``) keep the ordinary gradient.

    Args:
        model: a classifier returning ``[B, n_classes]`` scores.
        device: where to run; if given, the model is moved there (as
            pytorch-grad-cam does). Defaults to the device of the model's parameters.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> GuidedBackpropReLUModel(net, "cpu")(torch.randn(1, 3, 8, 8), target_category=1).shape
        (8, 8, 3)
    """

    _rule = GuidedBackpropReLU


class DeconvnetReLUModel(_ReLURuleModel):
    """Deconvnet saliency (Zeiler & Fergus, https://arxiv.org/abs/1311.2901).

    The map is the gradient of the target class score with respect to the
    input, where every ``nn.ReLU`` back-propagates :math:`\\max(g, 0)` (the
    forward mask is ignored). Same interface, output shapes and guarantees as
    :class:`GuidedBackpropReLUModel`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> DeconvnetReLUModel(net, "cpu")(torch.randn(2, 3, 8, 8), target_category=[0, 1]).shape
        (2, 8, 8, 3)
    """

    _rule = DeconvnetReLU


def guided_grad_cam(
    cam_mask: Union[np.ndarray, torch.Tensor],
    guided_backprop: Union[np.ndarray, torch.Tensor],
) -> Union[np.ndarray, torch.Tensor]:
    """Guided Grad-CAM: a CAM multiplied into a guided-backpropagation map.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", https://arxiv.org/abs/1610.02391. The CAM is
    broadcast over the channel axis: :math:`M_{b,h,w,c} = L_{b,h,w} \\cdot G_{b,h,w,c}`.
    Pass the result to :func:`camlib.utils.image.deprocess_image` to view it.

    Args:
        cam_mask: CAM(s) of shape ``[B, H, W]`` or ``[H, W]``.
        guided_backprop: guided map(s) of shape ``[B, H, W, C]`` or ``[H, W, C]``,
            as returned by :class:`GuidedBackpropReLUModel`.

    Returns:
        The product, shaped like ``guided_backprop``: a numpy array if both
        inputs are numpy, otherwise a tensor on ``guided_backprop``'s device
        (or ``cam_mask``'s if only that one is a tensor).

    Example:
        >>> import numpy as np
        >>> guided_grad_cam(np.ones((4, 5)), np.ones((4, 5, 3))).shape
        (4, 5, 3)
    """
    for name, value in (("cam_mask", cam_mask), ("guided_backprop", guided_backprop)):
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if tuple(cam_mask.shape) != tuple(guided_backprop.shape[:-1]):
        raise ValueError(
            f"cam_mask has shape {tuple(cam_mask.shape)} but guided_backprop has shape "
            f"{tuple(guided_backprop.shape)}; expected cam_mask [B, H, W] with guided_backprop [B, H, W, C] "
            "(or [H, W] with [H, W, C]), e.g. grayscale_cam[0] with the map of one image"
        )
    if isinstance(cam_mask, np.ndarray) and isinstance(guided_backprop, np.ndarray):
        return cam_mask[..., None] * guided_backprop
    if isinstance(guided_backprop, torch.Tensor):
        device = guided_backprop.device
    else:
        device = cam_mask.device
    cam = torch.as_tensor(cam_mask, device=device)
    guided = torch.as_tensor(guided_backprop, device=device)
    return cam[..., None] * guided
