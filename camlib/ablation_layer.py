"""Ablation layers: how AblationCAM switches off one channel of a layer's output.

An ablation layer knows the layout of a target layer's output: where its
channels are, and what value "switched off" means. :class:`camlib.AblationCAM`
asks it for the channels worth ablating (:meth:`AblationLayer.activations_to_be_ablated`)
and, chunk by chunk, for copies of one image's output with one channel ablated
per copy (:meth:`AblationLayer.ablated_batch`), which it then runs through the
rest of the model.

Three layouts are provided:

* :class:`AblationLayer`: channels on dim 1 (``[B, C, H, W]``, ``[B, C, D, H, W]``).
* :class:`AblationLayerVit`: channels on the last dim (``[B, N, C]`` tokens,
  ``[B, H, W, C]`` channels-last maps).
* :class:`AblationLayerFasterRCNN`: a dict of feature maps (an FPN's output);
  channel ``k`` counts through the maps in the dict's order, as
  :func:`camlib.utils.reshape_transforms.fasterrcnn_reshape_transform`
  concatenates them.

Subclassing: override :meth:`AblationLayer.ablation_value` for another value,
or :meth:`AblationLayer.ablate` for another operation. Subclasses written for
pytorch-grad-cam, which override ``set_next_batch`` and ``__call__`` and read
``self.indices``, keep working: the CAM then drives them through that protocol.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar, Mapping, Union

import numpy as np
import torch

from camlib.utils.svd_on_activations import get_2d_projection

__all__ = ["AblationLayer", "AblationLayerFasterRCNN", "AblationLayerVit"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def _as_tensor(values: ArrayOrTensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values))
    raise TypeError(f"expected a torch tensor or a numpy array, got {type(values).__name__}")


def _as_indices(indices: Any, device: torch.device) -> torch.Tensor:
    return (
        torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        .to(device=device, dtype=torch.long)
        .reshape(-1)
    )


def _channel_hits(indices: torch.Tensor, num_channels: int, offset: int = 0) -> torch.Tensor:
    """``[n, num_channels]`` bool: row i is True at channel ``indices[i] - offset``."""
    channels = torch.arange(offset, offset + num_channels, device=indices.device)
    return indices[:, None] == channels[None, :]


class AblationLayer(torch.nn.Module):
    r"""Ablates channels on dim 1 of a layer's output (``[B, C, *spatial]``).

    The channel ablation of Ablation-CAM: Desai & Ramaswamy, "Ablation-CAM:
    Visual Explanations for Deep Convolutional Network via Gradient-free
    Localization", WACV 2020.
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    Copy :math:`i` of one image's output :math:`A` has channel :math:`k_i` set to

    .. math::
        v = \begin{cases} 0 & \min A = 0 \\ \min A - 10^7 & \text{otherwise} \end{cases}

    as in pytorch-grad-cam (0 is "off" after a ReLU; otherwise a value far below
    anything the layer produces). Cost: one copy of the layer's output per
    ablated channel, built chunk by chunk. Output: ``[n, C, *spatial]``, one row
    per index.

    Used by :class:`camlib.AblationCAM` (``ablation_layer=AblationLayer()``, the
    default); the layer is never inserted into the model.

    Attributes:
        indices: the channels of the current batch (one per copy), as in
            pytorch-grad-cam; set by :meth:`activations_to_be_ablated` and by the CAM.
        activations: the copies prepared by :meth:`set_next_batch`.

    Example:
        >>> import torch
        >>> from camlib.ablation_layer import AblationLayer
        >>> acts = torch.tensor([[[0., 1.], [2., 3.]]])  # [1, C=2, 2], minimum 0
        >>> AblationLayer().ablate(acts, [1, 0])  # one copy per channel
        tensor([[[0., 1.],
                 [0., 0.]],
        <BLANKLINE>
                [[0., 0.],
                 [2., 3.]]])
    """

    #: The dimension of the layer's output that holds the channels.
    channel_dim: ClassVar[int] = 1
    #: How far below the minimum a channel is pushed when the minimum is not 0.
    ablation_offset: ClassVar[float] = 1e7

    def __init__(self) -> None:
        super().__init__()
        self.indices: Any = None
        self.activations: Any = None

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}"

    # -- which channels --------------------------------------------------------------
    def objectiveness_mask_from_svd(
        self, activations: ArrayOrTensor, threshold: float = 0.01
    ) -> torch.Tensor:
        """Where the first principal component of one image's activations is not negligible.

        Args:
            activations: ``[C, *spatial]`` activations of one image.
            threshold: positions whose normalised ``|projection|`` is at most this are masked out.

        Returns:
            bool ``[*spatial]`` mask.
        """
        acts = _as_tensor(activations).float()
        projection = get_2d_projection(acts[None])[0].abs()
        projection = projection - projection.min()
        projection = projection / projection.max()
        return projection > threshold

    def activations_to_be_ablated(
        self, activations: ArrayOrTensor, ratio_channels_to_ablate: float = 1.0
    ) -> torch.Tensor:
        """The channels worth ablating for one image, and ``self.indices`` set to them.

        With ``ratio_channels_to_ablate == 1`` every channel. Otherwise each
        channel is scored by the share of its (min-shifted, max-scaled) magnitude
        that falls inside :meth:`objectiveness_mask_from_svd`, and the
        ``int(ratio * C)`` highest-scoring and the ``int(ratio * C)``
        lowest-scoring channels are kept, as pytorch-grad-cam does (constant
        channels, whose score is undefined, rank highest). A channel in both
        groups (``ratio > 0.5``) is listed once.

        Args:
            activations: ``[C, *spatial]`` activations of one image, as the CAM sees them
                (after ``reshape_transform``).
            ratio_channels_to_ablate: in (0, 1].

        Returns:
            int64 channel indices, sorted, on the activations' device.
        """
        acts = _as_tensor(activations)
        num_channels = acts.shape[0]
        if ratio_channels_to_ablate >= 1.0:
            self.indices = torch.arange(num_channels, device=acts.device)
            return self.indices
        acts = acts.float()
        inside = self.objectiveness_mask_from_svd(acts).reshape(1, -1)
        magnitude = acts.abs().reshape(num_channels, -1)
        magnitude = magnitude - magnitude.amin(dim=1, keepdim=True)
        magnitude = magnitude / magnitude.amax(dim=1, keepdim=True)
        scores = (inside * magnitude).sum(dim=1) / magnitude.sum(dim=1)
        order = torch.argsort(torch.nan_to_num(scores, nan=float("inf")), stable=True)
        count = int(num_channels * ratio_channels_to_ablate)
        chosen = torch.cat([order.flip(0)[:count], order[:count]])
        self.indices = torch.unique(chosen)
        return self.indices

    # -- how to ablate ------------------------------------------------------------------
    def num_channels(self, activations: Any) -> int:
        """How many channels this layer can ablate in ``activations`` (the layer's raw output).

        A subclass written for pytorch-grad-cam's protocol (it overrides ``set_next_batch``
        or ``__call__``) may take a tuple or list of feature maps, as mmdet's does for a
        neck: their channels on dim 1, counted in order."""
        if isinstance(activations, (tuple, list)) and _uses_legacy_protocol(type(self)):
            maps = [a for a in activations if isinstance(a, torch.Tensor) and a.ndim >= 2]
            if maps:
                return int(sum(a.shape[1] for a in maps))
        if not isinstance(activations, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__} ablates a tensor output, but the target layer returned a "
                f"{type(activations).__name__}; pass an ablation layer for this output (e.g. "
                "AblationLayerFasterRCNN() for an FPN's dict of feature maps)"
            )
        if activations.ndim < 2:
            raise ValueError(f"cannot ablate channels of an output of shape {list(activations.shape)}")
        return int(activations.shape[self.channel_dim])

    def ablation_value(self, activations: torch.Tensor) -> torch.Tensor:
        """The value an ablated channel is set to: 0 when ``activations.min() == 0``,
        else ``activations.min() - 1e7`` (a 0-d tensor of the activations' dtype).

        In float16 ``min - 1e7`` is ``-inf``, which turns into NaN further on
        (a LayerNorm, an attention softmax): the value is clamped to the
        dtype's finite range (-65504 in float16).
        """
        low = activations.amin()
        wide = low.to(torch.promote_types(low.dtype, torch.float32))
        value = torch.where(wide == 0, torch.zeros_like(wide), wide - self.ablation_offset)
        if low.is_floating_point():
            info = torch.finfo(low.dtype)
            value = value.clamp(info.min, info.max)
        return value.to(low.dtype)

    def ablate(self, activations: torch.Tensor, indices: Any) -> torch.Tensor:
        """Copies of ``activations`` with channel ``indices[i]`` of copy i ablated.

        Args:
            activations: ``[1, ...]`` one image's output (broadcast to one copy per
                index) or ``[n, ...]`` one row per index. Not modified.
            indices: ``n`` channel indices.

        Returns:
            a new ``[n, ...]`` tensor.
        """
        indices = _as_indices(indices, activations.device)
        value = self.ablation_value(activations).to(activations.dtype)
        count = indices.numel()
        rows = activations.expand(count, *activations.shape[1:]).clone()
        channels_second = rows.movedim(self.channel_dim % rows.ndim, 1)
        channels_second[torch.arange(count, device=rows.device), indices] = value
        return rows

    # -- the batch protocol ------------------------------------------------------------
    def ablated_batch(self, activations: Any, input_batch_index: int, indices: Any) -> Any:
        """The layer output for one chunk: ``len(indices)`` copies of image
        ``input_batch_index``'s output (``activations`` holds the whole batch),
        copy i with channel ``indices[i]`` ablated.

        This is what :class:`camlib.AblationCAM` calls. When a subclass overrides
        ``set_next_batch``, ``forward`` or ``__call__`` (pytorch-grad-cam's
        protocol), they are used: ``indices`` is stored in ``self.indices``,
        then ``set_next_batch`` and ``self(None)`` are called.
        """
        if _uses_legacy_protocol(type(self)):
            self.indices = indices
            self.set_next_batch(
                input_batch_index=input_batch_index,
                activations=activations,
                num_channels_to_ablate=len(indices),
            )
            return self(None)
        return self.ablate(_take_row(activations, input_batch_index), indices)

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        """Prepare ``num_channels_to_ablate`` copies of image ``input_batch_index``'s
        output in ``self.activations`` (pytorch-grad-cam's protocol)."""
        row = _take_row(activations, input_batch_index)
        self.activations = row.expand(num_channels_to_ablate, *row.shape[1:]).clone()

    def forward(self, x: Any = None) -> Any:
        """The copies prepared by :meth:`set_next_batch`, copy i with channel
        ``self.indices[i]`` ablated. ``x`` is ignored."""
        if self.activations is None or self.indices is None:
            raise RuntimeError(
                f"{type(self).__name__} has no batch to ablate; call set_next_batch(...) and set "
                ".indices first (AblationCAM does this for you)"
            )
        count = len(self.activations) if isinstance(self.activations, torch.Tensor) else None
        indices = self.indices if count is None else self.indices[:count]
        return self.ablate(self.activations, indices)


class AblationLayerVit(AblationLayer):
    """Ablates channels on the last dim of a layer's output: ``[B, N, C]`` tokens
    of a vision transformer, or ``[B, H, W, C]`` channels-last maps.

    Same ablation value as :class:`AblationLayer`.

    Example:
        >>> import torch
        >>> from camlib.ablation_layer import AblationLayerVit
        >>> tokens = torch.zeros(1, 5, 4)  # 5 tokens, 4 channels
        >>> AblationLayerVit().ablate(tokens + 1, [3]).amin(dim=1)
        tensor([[ 1.0000e+00,  1.0000e+00,  1.0000e+00, -1.0000e+07]])
    """

    channel_dim: ClassVar[int] = -1


class AblationLayerFasterRCNN(AblationLayer):
    """Ablates channels of a dict of feature maps (an FPN's output, as the
    ``backbone`` of torchvision's Faster R-CNN returns).

    Channel ``k`` counts through the maps in the dict's order: with five maps
    of 256 channels, ``k = 256 * level + channel``, the order in which
    :func:`camlib.utils.reshape_transforms.fasterrcnn_reshape_transform`
    concatenates them. Ablated channels are set to -1000, as in pytorch-grad-cam.

    Example:
        >>> import torch
        >>> from camlib.ablation_layer import AblationLayerFasterRCNN
        >>> fpn = {"0": torch.ones(1, 2, 4, 4), "pool": torch.ones(1, 2, 1, 1)}
        >>> out = AblationLayerFasterRCNN().ablate(fpn, [3])
        >>> out["0"].amin().item(), out["pool"][0, :, 0, 0].tolist()
        (1.0, [1.0, -1000.0])
    """

    #: The value ablated channels are set to.
    fpn_ablation_value: ClassVar[float] = -1000.0

    def num_channels(self, activations: Any) -> int:
        if not isinstance(activations, Mapping):
            raise TypeError(
                f"AblationLayerFasterRCNN ablates a dict of feature maps, but the target layer returned a "
                f"{type(activations).__name__}; use AblationLayer() for a [B, C, H, W] tensor"
            )
        return sum(int(value.shape[1]) for value in activations.values())

    def ablation_value(self, activations: Any) -> torch.Tensor:
        first = next(iter(activations.values())) if isinstance(activations, Mapping) else activations
        return torch.tensor(self.fpn_ablation_value, dtype=first.dtype, device=first.device)

    def ablate(self, activations: Mapping, indices: Any) -> OrderedDict:
        """Like :meth:`AblationLayer.ablate`, for a dict of ``[1 or n, C_l, H_l, W_l]`` maps."""
        first = next(iter(activations.values()))
        indices = _as_indices(indices, first.device)
        value = self.ablation_value(activations)
        result = OrderedDict()
        offset = 0
        for key, maps in activations.items():
            channels = maps.shape[1]
            hits = _channel_hits(indices, channels, offset).reshape(-1, channels, *([1] * (maps.ndim - 2)))
            rows = maps.expand(indices.numel(), *maps.shape[1:])
            result[key] = torch.where(hits, value.to(maps.dtype), rows)
            offset += channels
        return result

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        self.activations = OrderedDict(
            (
                key,
                value[input_batch_index : input_batch_index + 1]
                .expand(num_channels_to_ablate, *value.shape[1:])
                .clone(),
            )
            for key, value in activations.items()
        )

    def forward(self, x: Any = None) -> Any:
        if self.activations is None or self.indices is None:
            raise RuntimeError(
                "AblationLayerFasterRCNN has no batch to ablate; call set_next_batch(...) and set .indices first"
            )
        count = len(next(iter(self.activations.values())))
        return self.ablate(self.activations, self.indices[:count])


def _take_row(activations: Any, index: int) -> Any:
    """Image ``index`` of a batched output, keeping the batch dim (tensors and dicts of tensors)."""
    if isinstance(activations, torch.Tensor):
        return activations[index : index + 1]
    if isinstance(activations, Mapping):
        return OrderedDict((key, value[index : index + 1]) for key, value in activations.items())
    raise TypeError(
        f"cannot take image {index} of a {type(activations).__name__}; the built-in ablation layers handle "
        "tensors and dicts of tensors. Subclass AblationLayer and override ablated_batch for this output"
    )


_BUILTIN_PROTOCOL = {
    (cls.set_next_batch, cls.forward) for cls in (AblationLayer, AblationLayerVit, AblationLayerFasterRCNN)
}


def _uses_legacy_protocol(cls: type) -> bool:
    """Whether ``cls`` overrides pytorch-grad-cam's batch protocol (set_next_batch, forward, __call__)."""
    return (
        cls.__call__ is not torch.nn.Module.__call__
        or (cls.set_next_batch, cls.forward) not in _BUILTIN_PROTOCOL
    )
