r"""Ablation-CAM over several target layers at once.

Channel :math:`k` is ablated in every target layer that has a channel
:math:`k`, all in the same forward pass; the drop of the target score gives one
weight per channel index, and each layer's map uses those shared weights (a
layer with :math:`C_l` channels the first :math:`C_l`). With a single target
layer this is Ablation-CAM (:class:`camlib.AblationCAM`) run through the whole
model.

The ablation is done by :class:`AblationLayer` wrappers swapped into the model
in place of the target layers for the scoring passes only; the original layers
(the same objects) are put back in ``finally``, so the model is unchanged after
a call, also when it raises.

"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Callable, ClassVar, Iterator, List, Optional, Sequence

import numpy as np
import torch

from camlib.ablation_layer import AblationLayerFasterRCNN
from camlib.base_cam import BaseCAM, weighted_sum_map
from camlib.capabilities import Capabilities
from camlib.capture import Capture, describe_module
from camlib.registry import register_method
from camlib.utils.batched import batched_target_scores, check_finite_scores, score_outputs
from camlib.utils.find_layers import replace_layer_recursive
from camlib.utils.model_state import eager_module
from camlib.utils.reshape_transforms import is_feature_pyramid

__all__ = ["AblationCAM", "AblationLayer", "relative_drops", "replace_layer_recursive"]


_describe = describe_module


class AblationLayer(torch.nn.Module):
    """Runs ``layer``, then ablates channel ``indices[i]`` of row ``i`` of its output.

    The ablated channel is set to 0 when the row's minimum is 0 (the usual case
    after a ReLU), otherwise to the row's minimum minus ``ablation_offset``
    (``1e5``). The output is not modified in place.

    Args:
        layer: the module whose output is ablated.
        reshape_transform: only used to pick the channel dimension, as in
            pytorch-grad-cam: None means channels on dim 1 (``[B, C, H, W]``),
            anything else channels last (``[B, tokens, C]``).
        indices: one channel index per row of the next batch (or one list of
            indices per row); rows beyond ``len(indices)`` are an error.
        channel_dim: the channel dimension, overriding the rule above.

    Attributes:
        calls: how many times the wrapper ran (the CAM checks it was reached).

    Example:
        >>> import torch
        >>> from camlib.ablation_cam_multilayer import AblationLayer
        >>> layer = AblationLayer(torch.nn.ReLU(), None, indices=[1])
        >>> layer(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, -99999.0, 1.0]
    """

    #: How far below the row's minimum an ablated channel is pushed when that minimum is not 0.
    ablation_offset: ClassVar[float] = 1e5

    def __init__(
        self,
        layer: torch.nn.Module,
        reshape_transform: Optional[Callable] = None,
        indices: Any = (),
        *,
        channel_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        self.layer = layer
        self.reshape_transform = reshape_transform
        self.indices = indices
        self.channel_dim = (
            (1 if reshape_transform is None else -1) if channel_dim is None else int(channel_dim)
        )
        self.calls = 0
        #: When set, forward passes of other threads go through the layer unablated.
        self.owner_thread: Optional[int] = None

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.owner_thread is not None and threading.get_ident() != self.owner_thread:
            return self.layer(*args, **kwargs)  # another thread's forward pass while swapped in
        self.calls += 1
        return self.ablate(self.layer(*args, **kwargs))

    def ablate(self, output: Any) -> Any:
        """A copy of ``output`` with channel ``indices[i]`` of row ``i`` ablated.

        A dict of feature maps (an FPN's levels) is ablated as the concatenation
        of its levels along channels, in the dict's order (the layout camlib uses
        for such outputs, :func:`~camlib.utils.reshape_transforms.feature_pyramid_to_map`),
        with :class:`~camlib.ablation_layer.AblationLayerFasterRCNN`'s value (-1000), as
        AblationCAM does: pushing an FPN level far below its minimum removes every detection.
        """
        if isinstance(output, dict) and is_feature_pyramid(output, next(iter(output.values())).ndim - 2):
            ablated, offset = [], 0
            for key, level in output.items():
                ablated.append((key, self._ablate_tensor(level, offset, AblationLayerFasterRCNN.fpn_ablation_value)))
                offset += level.shape[1]
            return type(output)(ablated)
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"AblationLayer ablates a tensor output (or a dict of feature maps), but {_describe(self.layer)} "
                f"returned a {type(output).__name__}; choose a target layer that returns a tensor"
            )
        return self._ablate_tensor(output, 0)

    def _ablate_tensor(self, output: torch.Tensor, offset: int, fixed: Optional[float] = None) -> torch.Tensor:
        rows = output.shape[0]
        indices = torch.as_tensor(
            np.asarray(self.indices) if not isinstance(self.indices, torch.Tensor) else self.indices
        ).to(device=output.device, dtype=torch.long)
        indices = indices.reshape(1, 1) if indices.ndim == 0 else indices.reshape(len(indices), -1)
        if indices.shape[0] < rows or indices.shape[1] == 0:
            raise ValueError(
                f"AblationLayer has {indices.shape[0]} channel indices for a batch of {rows}; set .indices to "
                "one channel per row of the batch"
            )
        dim = self.channel_dim % output.ndim
        if dim == 0:
            raise ValueError("channel_dim cannot be the batch dimension (0)")
        channels = output.shape[dim]
        hits = (indices[:rows, :, None] == torch.arange(offset, offset + channels, device=output.device)).any(dim=1)
        shape = [rows] + [1] * (output.ndim - 1)
        hits = hits.reshape(*shape[:dim], channels, *shape[dim + 1 :])
        low = output.reshape(rows, -1).amin(dim=1)
        value = torch.where(low == 0, torch.zeros_like(low), low - self.ablation_offset)
        if fixed is not None:
            value = torch.full_like(low, fixed)
        return torch.where(hits, value.reshape(shape).to(output.dtype), output)


def _find_slot(model: torch.nn.Module, layer: torch.nn.Module) -> Optional[tuple]:
    """``(parent, name)`` of the first place ``layer`` (by identity) is registered, depth first."""
    for name, child in model._modules.items():
        if child is layer:
            return model, name
        if child is not None:
            found = _find_slot(child, layer)
            if found is not None:
                return found
    return None


def relative_drops(original: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM's weights ``(y - y_k) / y``: ``original`` scores ``[B]``, ``ablated`` scores ``[B, K]``.

    An image whose score is exactly 0 gets the plain drop ``y - y_k`` (with a warning).

    Example:
        >>> import torch
        >>> relative_drops(torch.tensor([2.0]), torch.tensor([[1.0, 2.0, 3.0]])).tolist()
        [[0.5, 0.0, -0.5]]
    """
    zero = original == 0
    if bool(zero.any()):
        warnings.warn(
            "the target score of an image is exactly 0, so Ablation-CAM's relative drop (y - y_k) / y is "
            "undefined; its map uses the plain drop y - y_k instead",
            stacklevel=6,
        )
    denominator = torch.where(zero, torch.ones_like(original), original)[:, None]
    return (original[:, None] - ablated) / denominator


@contextlib.contextmanager
def _swapped(
    model: torch.nn.Module, layers: Sequence[torch.nn.Module], wrappers: Sequence[torch.nn.Module]
) -> Iterator[None]:
    """Put ``wrappers[i]`` where ``layers[i]`` is registered; put the layers back on exit."""
    slots = []
    for layer in layers:
        slot = _find_slot(model, layer)
        if slot is None:
            raise ValueError(
                f"target layer {_describe(layer)} is the model itself or not one of its registered submodules, so "
                "it cannot be ablated; pick a submodule from model.named_modules()"
            )
        slots.append(slot)
    done = []
    try:
        for (parent, name), wrapper in zip(slots, wrappers):
            parent._modules[name] = wrapper
            done.append((parent, name))
        yield
    finally:
        for (parent, name), layer in reversed(list(zip(done, layers))):
            parent._modules[name] = layer


@register_method("ablationcam-multilayer", title="Ablation-CAM (multi-layer)")
class AblationCAM(BaseCAM):
    r"""Ablation-CAM with channel :math:`k` ablated in every target layer at once.

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020.
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    With :math:`y^c_k` the target score when channel :math:`k` is ablated in
    every target layer :math:`l` that has :math:`C_l > k` channels:

    .. math::
        w^c_k = \frac{y^c - y^c_k}{y^c}, \qquad
        L^c_l = \mathrm{ReLU}\Big(\sum_{k < C_l} w^c_k A^k_l\Big), \qquad
        L^c = \frac{1}{|\mathcal{L}|}\sum_l \mathrm{norm}(L^c_l)

    (an image whose score is exactly 0 gets the plain drop :math:`y^c - y^c_k`,
    with a warning). Layers of equal width share every weight, as in
    pytorch-grad-cam (which supports only that case); a wider layer's extra
    channels are ablated alone. A layer returning a dict of feature maps (an
    FPN) is ablated as the concatenation of its levels.

    Cost: one forward pass, then one forward pass of the whole model per
    channel of the widest layer per image, ``batch_size`` at a time.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; its layers are swapped for the scoring passes only
            and always put back.
        target_layers: the layers to ablate together.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        batch_size: ablated copies per forward pass (default 32).
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).
        **kwargs: further :class:`~camlib.base_cam.BaseCAM` arguments (e.g. ``output_adapter``).

    Example:
        >>> import torch, torchvision
        >>> from camlib.ablation_cam_multilayer import AblationCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> layers = [model.layer1[1], model.layer2[0]]  # 64 and 128 channels
        >>> with AblationCAM(model, layers, batch_size=64, progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=32)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        *,
        batch_size: Optional[int] = None,
        progress: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, batch_size=batch_size, progress=progress, **kwargs)

    # -- weights -------------------------------------------------------------------------------------
    def _channel_dims(self, capture: Capture) -> list[int]:
        """For each target layer, the dim of its raw output that holds the CAM's channels."""
        preferred = (1, -1) if self.reshape_transform is None else (-1, 1)
        dims = []
        for layer, raw, activations in zip(capture.layers, capture.raw_activations, capture.activations):
            num_channels = int(activations.shape[1])
            if isinstance(raw, dict) and is_feature_pyramid(raw, activations.ndim - 2):
                dims.append(1)
                continue
            if not isinstance(raw, torch.Tensor):
                raise TypeError(
                    f"multi-layer AblationCAM ablates tensor outputs (or dicts of feature maps), but target layer "
                    f"{_describe(layer)} returned a {type(raw).__name__}; choose layers that return tensors"
                )
            shape = tuple(raw.shape)
            dim = next((d for d in preferred if len(shape) >= 2 and shape[d] == num_channels), None)
            if dim is None:
                raise ValueError(
                    f"cannot find the {num_channels} channels of target layer {_describe(layer)} in its output of "
                    f"shape {list(shape)} (looked at dims 1 and -1); check reshape_transform"
                )
            dims.append(dim)
        return dims

    def shared_weights(self, capture: Capture) -> torch.Tensor:
        """Weights ``[B, K]`` (``K`` the widest layer's channels) shared by all target layers:
        the normalised drops of the target scores when channel ``k`` is ablated in every layer at once."""
        input_tensor, targets = capture.input, list(capture.targets)
        batch = capture.activations[0].shape[0]
        num_channels = max(int(a.shape[1]) for a in capture.activations)
        device = capture.activations[0].device
        original = score_outputs(capture.outputs, targets).to(device)
        check_finite_scores(original, "the target score", "Ablation-CAM's relative drops (y - y_k) / y would be NaN")
        dims = self._channel_dims(capture)
        dim_of = {id(layer): dim for layer, dim in zip(capture.layers, dims)}
        layers = list({id(layer): layer for layer in capture.layers}.values())
        wrappers = [AblationLayer(layer, self.reshape_transform, channel_dim=dim_of[id(layer)]) for layer in layers]
        for wrapper in wrappers:
            wrapper.training = False
            wrapper.owner_thread = threading.get_ident()

        def make_inputs(start: int, stop: int) -> torch.Tensor:
            flat = torch.arange(start, stop, device=input_tensor.device)
            for wrapper in wrappers:
                wrapper.indices = flat % num_channels
            return input_tensor[flat // num_channels]

        def targets_for(start: int, stop: int) -> list:
            return [targets[j // num_channels] for j in range(start, stop)]

        try:
            model = eager_module(self.model)  # held by this call only (BaseCAM's per-model lock)
            with _swapped(model, layers, wrappers):
                scores = batched_target_scores(
                    model,
                    batch * num_channels,
                    make_inputs,
                    targets_for,
                    self.batch_size,
                    progress=self.progress,
                    desc="AblationCAM (multi-layer)",
                )
            missed = [wrapper.layer for wrapper in wrappers if wrapper.calls == 0]
            if missed:
                raise ValueError(
                    f"target layer {_describe(missed[0])} did not run while swapped for its ablation wrapper (the "
                    "model reaches it other than through its registered submodules), so it cannot be ablated"
                )
        finally:
            for wrapper in wrappers:
                wrapper.indices = ()
        check_finite_scores(scores, "the target score of an ablated copy", "Ablation-CAM's weights would be NaN")
        return relative_drops(original, scores.to(device).reshape(batch, num_channels))

    # -- maps -------------------------------------------------------------------------------------------
    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """One raw map per target layer, each with the shared weights of its channels."""
        weights = self.shared_weights(capture)
        return [
            weighted_sum_map(weights[:, : activations.shape[1]], activations, eigen_smooth)
            for activations in capture.activations
        ]
