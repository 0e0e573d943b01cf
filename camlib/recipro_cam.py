"""Recipro-CAM: the map at a position is the target score when only that position's features are kept.

For every spatial position of the target layer, a copy of the layer's output
is kept around that position (a 3x3 Gaussian window by default) and zeroed
everywhere else; each copy goes through the part of the network after the
layer, and the softmax probability of the target at that position is the map's
value there. No gradient, no masking of the input: only the network's tail runs
again, once per position, batched (:func:`camlib.utils.tail_scoring.score_layer_copies`,
the torch.fx split that AblationCAM also uses, or the whole model with a hook
replacing the layer's output when the model cannot be split).
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.utils.tail_scoring import class_probabilities, score_layer_copies

__all__ = ["ReciproCAM", "masked_layer_copies", "position_masks"]

#: The window kept around a position, per axis (its outer product is the 2-D or 3-D window).
GAUSSIAN_1D = (0.25, 0.5, 0.25)
KERNELS = ("gaussian", "point")


def position_masks(spatial: tuple, kernel: str = "gaussian", device: Any = None, dtype: Any = None) -> torch.Tensor:
    """One mask per position of a ``spatial`` grid: ``[P, *spatial]`` with ``P = prod(spatial)``.

    Mask ``p`` (positions in row-major order) is the window centred on position
    ``p``, cut at the borders (not renormalised): with ``kernel="gaussian"`` the
    outer product of ``(1/4, 1/2, 1/4)`` along each axis (``1/4`` at the centre
    in 2-D), with ``kernel="point"`` 1 at the position and 0 elsewhere.

    Example:
        >>> position_masks((2, 2))[0]
        tensor([[0.2500, 0.1250],
                [0.1250, 0.0625]])
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    spatial = tuple(int(s) for s in spatial)
    count = math.prod(spatial)
    eye = torch.eye(count, device=device, dtype=torch.float32).reshape(count, 1, *spatial)
    if kernel == "point":
        masks = eye[:, 0]
    else:
        window = torch.tensor(GAUSSIAN_1D, device=device)
        for _ in spatial[1:]:
            window = window[..., None] * torch.tensor(GAUSSIAN_1D, device=device)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(spatial)]
        masks = conv(eye, window[None, None], padding=1)[:, 0]
    return masks.to(dtype) if dtype is not None else masks


def masked_layer_copies(raw: torch.Tensor, activations_shape: tuple, image: int, masks: torch.Tensor) -> torch.Tensor:
    """Copies of image ``image``'s layer output ``raw``, copy i multiplied by ``masks[i]``.

    ``raw`` is the layer's output as it returned it; ``activations_shape`` its
    ``[B, C, *s]`` layout after the reshape transform. Three layouts are known:
    channels first (``raw`` is ``[B, C, *s]``), channels last (``[B, *s, C]``)
    and tokens (``[B, N, C]`` with ``N - prod(s)`` leading prefix tokens, such as
    a class token, which are left unchanged; the rest laid out row-major).

    Raises:
        ValueError: for any other layout.
    """
    channels, spatial = activations_shape[1], tuple(activations_shape[2:])
    count = masks.shape[0]
    masks = masks.to(raw.dtype)
    if not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"ReciproCAM needs the target layer to return a tensor, got {type(raw).__name__}; choose a layer "
            "that outputs a feature map or tokens"
        )
    row = raw[image : image + 1]
    if tuple(raw.shape[1:]) == (channels, *spatial):
        return row * masks[:, None]
    if tuple(raw.shape[1:]) == (*spatial, channels):
        return row * masks[..., None]
    positions = math.prod(spatial)
    if raw.ndim == 3 and raw.shape[2] == channels and raw.shape[1] >= positions:
        prefix = raw.shape[1] - positions
        copies = row.repeat(count, 1, 1)
        copies[:, prefix:] = copies[:, prefix:] * masks.reshape(count, positions, 1)
        return copies
    raise ValueError(
        f"ReciproCAM cannot tell where the positions of the target layer's output {list(raw.shape)} are "
        f"(its map is {list(activations_shape)}); choose a layer that outputs [B, C, *spatial] maps, "
        "[B, *spatial, C] channels-last maps or [B, tokens, C] tokens"
    )


class ReciproCAM(BaseCAM):
    r"""Recipro-CAM.

    Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for
    convolutional neural networks", 2022. https://arxiv.org/abs/2209.14074 ;
    for vision transformers, "ViT-ReciproCAM: Gradient and Attention-Free
    Visual Explanations for Vision Transformer", 2023. https://arxiv.org/abs/2310.02588

    .. math::
        L^c_{p} = \mathrm{softmax}\big(f_{\text{tail}}(A \odot G_p)\big)_c

    where :math:`A` is the target layer's output, :math:`G_p` the 3x3 (3x3x3)
    Gaussian window :math:`(\tfrac14, \tfrac12, \tfrac14)^{\otimes d}` centred on
    position :math:`p` (cut at the borders) and :math:`f_{\text{tail}}` the part
    of the network after the layer. The map is then min-max scaled and resized
    like every camlib map.

    Choices the paper leaves open follow the authors' published code
    (openvinotoolkit/training_extensions, ``recipro_cam.py``): the Gaussian
    window (``kernel="point"`` keeps one position only, the paper's first
    variant) and the softmax of the logits (``softmax=False`` scores the raw
    target; outputs other than a ``[B, classes]`` tensor are never softmaxed).
    For token outputs the leading prefix tokens (class, distillation, register
    tokens) are kept unmasked, camlib's choice.

    Cost: one forward pass, then ``h * w`` (``d * h * w``) copies per image
    through the part of the model after the target layer, ``batch_size`` at a
    time, no backward pass; about one extra forward pass of the tail per
    position. Models that cannot be split after the layer run whole per copy.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose positions are kept one at a time.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        kernel: ``"gaussian"`` (default) or ``"point"``.
        softmax: score the softmax probability of the target (default), or the raw target score.
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``: copies per forward pass,
            64 by default; ``progress=False``, ...).

    Attributes:
        split_model: run only the part after the target layer when it can be split off
            (default True); False always runs the whole model.
        last_paths: for the last call, per target layer, ``"split"`` or ``"full"``.

    Not in the method registry yet, so ``cam.py`` and ``camlib explain`` do not offer it: it
    does not yet pass the shared all-methods suite everywhere (structured model outputs read
    through ``output_adapter``, half precision, detectors, 3-D segmenters).

    Example:
        >>> import torch, torchvision
        >>> from camlib import ReciproCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with ReciproCAM(model, [model.layer4[-1]], progress=False) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape, maps.dtype, cam.last_paths
        ((2, 64, 64), dtype('float32'), ['split'])
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=64, eigen_smooth=False)
    split_model: bool = True

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        kernel: str = "gaussian",
        softmax: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if not isinstance(softmax, bool):
            raise TypeError(f"softmax must be True or False, got {softmax!r}")
        self.kernel = kernel
        self.softmax = softmax
        self.last_paths: list[str] = []

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """Each layer's map of per-position scores ``[B, *s]``; the paths taken go to :attr:`last_paths`."""
        results = [self._layer_scores(capture, i) for i in range(len(capture.layers))]
        self.last_paths = [path for _, path in results]
        return [maps for maps, _ in results]

    def _layer_scores(self, capture: Capture, index: int) -> tuple[torch.Tensor, str]:
        raw, activations = capture.raw_activations[index], capture.activations[index]
        batch, spatial = activations.shape[0], tuple(activations.shape[2:])
        masks = position_masks(spatial, self.kernel, device=activations.device)
        positions = masks.shape[0]
        masked_layer_copies(raw, tuple(activations.shape), 0, masks[:1])  # checks the layout first

        def copies(start: int, stop: int) -> torch.Tensor:
            parts = []
            for b in range(start // positions, (stop - 1) // positions + 1):
                lo, hi = max(start, b * positions) - b * positions, min(stop, (b + 1) * positions) - b * positions
                parts.append(masked_layer_copies(raw, tuple(activations.shape), b, masks[lo:hi]))
            return torch.cat(parts)

        scores, path = score_layer_copies(
            self.model,
            capture.layers[index],
            capture.input,
            raw,
            capture.outputs,
            [b for b in range(batch) for _ in range(positions)],
            copies,
            list(capture.targets),
            batch_size=self.batch_size,
            progress=self.progress,
            desc="ReciproCAM",
            split=self.split_model,
            transform_outputs=class_probabilities if self.softmax else None,
        )
        return scores.float().reshape(batch, *spatial), path
