"""Recipro-CAM: the map at a position is the target's probability when the features there are kept alone.

For every spatial position of the target layer, a copy of the layer's output
keeps only that position's neighbourhood, zeros elsewhere (the authors'
"mosaic" feature maps): for a feature map, the position's feature vector
spread over its 3x3 neighbourhood with Gaussian weights (Recipro-CAM); for a
vision transformer's tokens, the tokens of the 3x3 neighbourhood, each its own
feature under the Gaussian weights, with the class token kept
(ViT-ReciproCAM). Each copy goes through the part of the network after the
layer, and the softmax probability of the target is the map's value at that
position. No gradient, no masking of the input: only the network's tail runs
again, once per position, batched (:func:`camlib.utils.tail_scoring.score_layer_copies`,
the torch.fx split that AblationCAM also uses, or the whole model with a hook
replacing the layer's output when the model cannot be split).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.batched import check_finite_scores
from camlib.utils.reshape_transforms import is_feature_pyramid
from camlib.utils.tail_scoring import class_probabilities, concat_outputs, score_layer_copies

__all__ = ["ReciproCAM", "position_masks", "reciprocal_copies"]

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


def reciprocal_copies(
    raw: Any, activations_shape: tuple, image: int, masks: torch.Tensor, centers: torch.Tensor
) -> Any:
    """Copies of image ``image``'s layer output ``raw``, one per position in ``centers``.

    ``masks[i]`` is the window centred on position ``centers[i]`` (see
    :func:`position_masks`). ``raw`` is the layer's output as it returned it;
    ``activations_shape`` its ``[B, C, *s]`` layout after the reshape transform.
    Known layouts, and what copy ``i`` holds (``A`` the image's features, ``q``
    a position, zeros outside the window):

    * feature maps, channels first (``raw`` is ``[B, C, *s]``) or channels last
      (``[B, *s, C]``): the feature vector at ``centers[i]`` spread over the
      window, ``copy_i[:, q] = masks[i][q] * A[:, centers[i]]``, as the Recipro-CAM
      authors' code builds its "mosaic" feature maps;
    * tokens (``[B, N, C]``, the last ``prod(s)`` tokens the grid, row-major): each
      grid token its own feature under the window, ``copy_i[q] = masks[i][q] *
      A[q]``, as the ViT-ReciproCAM authors' code masks tokens; the ``N - prod(s)``
      leading prefix tokens (class, distillation, register tokens) are kept
      unchanged in every copy;
    * a dict of ``[B, C_l, *s_l]`` feature maps (an FPN's levels, laid out on the
      coarsest grid): each level keeps its own features under the window resized
      to the level's grid.

    With ``kernel="point"`` masks the two rules give the same copy: the one
    position (token) kept.

    Raises:
        ValueError: for any other layout.

    Example:
        >>> a = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> reciprocal_copies(a, (1, 1, 2, 2), 0, position_masks((2, 2), "point")[1:2], torch.tensor([1]))
        tensor([[[[0., 1.],
                  [0., 0.]]]])
    """
    channels, spatial = activations_shape[1], tuple(activations_shape[2:])
    positions = math.prod(spatial)
    count = masks.shape[0]
    if isinstance(raw, Mapping) and is_feature_pyramid(raw, len(spatial)):
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        copies = {}
        for key, level in raw.items():
            window = masks[:, None].to(level.dtype)
            if tuple(level.shape[2:]) != spatial:
                window = F.interpolate(window.float(), size=level.shape[2:], mode=mode).to(level.dtype)
            copies[key] = level[image : image + 1] * window
        return type(raw)(copies) if isinstance(raw, dict) else copies
    if not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"ReciproCAM needs the target layer to return a tensor or a dict of feature maps, got "
            f"{type(raw).__name__}; choose a layer that outputs a feature map or tokens"
        )
    masks = masks.to(raw.dtype)
    flat_masks = masks.reshape(count, positions)
    if tuple(raw.shape[1:]) == (channels, *spatial):
        centre = raw[image].reshape(channels, positions)[:, centers]  # [C, n]
        return (centre.T[:, :, None] * flat_masks[:, None, :]).reshape(count, channels, *spatial)
    if tuple(raw.shape[1:]) == (*spatial, channels):
        centre = raw[image].reshape(positions, channels)[centers]  # [n, C]
        return (flat_masks[:, :, None] * centre[:, None, :]).reshape(count, *spatial, channels)
    if raw.ndim == 3 and raw.shape[2] == channels and raw.shape[1] >= positions:
        prefix = raw.shape[1] - positions
        # [n, P, C]: each grid token keeps its own feature under the window
        grid = flat_masks[:, :, None] * raw[image : image + 1, prefix:]
        return torch.cat([raw[image : image + 1, :prefix].expand(count, -1, -1), grid], dim=1)
    raise ValueError(
        f"ReciproCAM cannot tell where the positions of the target layer's output {list(raw.shape)} are "
        f"(its map is {list(activations_shape)}); choose a layer that outputs [B, C, *spatial] maps, "
        "[B, *spatial, C] channels-last maps or [B, tokens, C] tokens"
    )


@register_method("reciprocam", title="Recipro-CAM")
class ReciproCAM(BaseCAM):
    r"""Recipro-CAM.

    Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for
    convolutional neural networks", 2022. https://arxiv.org/abs/2209.14074 ;
    for vision transformers, "ViT-ReciproCAM: Gradient and Attention-Free
    Visual Explanations for Vision Transformer", 2023. https://arxiv.org/abs/2310.02588

    .. math::
        M_p[:, q] = G(q - p)\, A[:, p] \ \text{(feature maps)}, \qquad
        M_p[q] = G(q - p)\, A[q] \ \text{(tokens)}, \qquad
        L^c_{p} = \mathrm{softmax}\big(f_{\text{tail}}(M_p)\big)_c

    where :math:`A` is the target layer's output, :math:`G` the 3x3 (3x3x3)
    Gaussian window :math:`(\tfrac14, \tfrac12, \tfrac14)^{\otimes d}` (cut at
    the borders, not renormalised), and :math:`f_{\text{tail}}` the part of the
    network after the layer. For a feature map (``[B, C, *s]`` or channels last)
    copy :math:`M_p` holds the feature vector at :math:`p` spread over its
    neighbourhood; for tokens (``[B, N, C]``) it holds the neighbourhood's
    tokens, each its own feature under the window, and the prefix tokens as they
    are; zeros elsewhere. The map is min-max scaled (the authors' normalisation)
    and resized like every camlib map.

    Choices the papers leave open follow the authors' published code. For
    feature maps, ``src/recipro_cam.py`` of github.com/sybyun/ReciproCAM (and
    ``recipro_cam.py`` of openvinotoolkit/training_extensions): the centre
    feature spread by the Gaussian window (``kernel="point"`` keeps it at the
    position only, the variant the authors' hook-based code uses). For tokens,
    ``src/vit_recipro_cam.py`` of github.com/sybyun/vitcam (its defaults
    ``is_gaussian=True``, ``cls_token=True``; the same as ``ViTReciproCAM`` of
    openvinotoolkit/training_extensions), checked point by point: the grid
    tokens of the 3x3 neighbourhood keep their own features times the Gaussian
    weights (``1/4`` at the centre, cut at the borders, not renormalised), the
    others are zeroed (``kernel="point"``: only the token at :math:`p`, its
    ``is_gaussian=False``); the class token is kept unchanged in every copy (camlib
    keeps every leading prefix token: class, distillation, register tokens,
    where the authors' code knows only one class token); the copies replace the
    target layer's output and run through everything after it (the rest of the
    block with its unmasked residual input, the later blocks, the final
    LayerNorm and the head); the map is the softmax probability of the target
    (the top class of the unmasked image by default) per copy, min-max scaled.
    The authors target the LayerNorm before the attention of the second-to-last
    block (torchvision's ``encoder.layers[-2].ln_1``, timm's ``blocks[-2].norm1``);
    camlib uses the layers it is given. For both: the softmax of the logits
    (``softmax=False`` scores the raw target), and min-max scaling of the scores
    (camlib shifts them by their minimum first, so negative raw scores are not
    cut by the ReLU; probabilities are unchanged by it). The softmax goes through
    the CAM's ``output_adapter`` (or :func:`~camlib.utils.model_outputs.logits_of`):
    the class scores inside a structured output are replaced by probabilities and
    the targets see the same structure; outputs without ``[B, classes]`` scores
    (a segmentation map, a detector's boxes) are scored as they are.
    camlib's own choices: channels-last maps (``[B, H, W, C]``, torchvision's
    Swin) follow the feature-map rule; for a dict of feature maps (a detector's
    FPN, laid out on the coarsest level's grid) each level keeps its own
    features under the window resized to its grid; in half precision the
    split-off tail runs in float32 on a copy (the map is the small differences
    between the copies' scores, which ``bfloat16`` rounds away).

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
        split_cache: the model's split per target layer, traced on the first call, checked on
            every call and traced again when the model changed; :meth:`release` empties it.

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
        #: The torch.fx split of the model per target layer, traced on the first call (checked on every call).
        self.split_cache: dict = {}

    def release(self) -> None:
        """Remove any hook still attached and forget the cached splits of the model."""
        self.split_cache.clear()
        super().release()

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """Each layer's map of per-position scores ``[B, *s]``; the paths taken go to :attr:`last_paths`."""
        results = [self._layer_scores(capture, i) for i in range(len(capture.layers))]
        self.last_paths = [path for _, path in results]
        return [maps for maps, _ in results]

    def _layer_scores(self, capture: Capture, index: int) -> tuple[torch.Tensor, str]:
        raw, activations = capture.raw_activations[index], capture.activations[index]
        batch, spatial = activations.shape[0], tuple(activations.shape[2:])
        shape = tuple(activations.shape)
        masks = position_masks(spatial, self.kernel, device=activations.device)
        positions = masks.shape[0]
        every = torch.arange(positions, device=activations.device)
        reciprocal_copies(raw, shape, 0, masks[:1], every[:1])  # checks the layout before any pass

        def copies(start: int, stop: int) -> Any:
            parts = []
            for b in range(start // positions, (stop - 1) // positions + 1):
                lo, hi = max(start, b * positions) - b * positions, min(stop, (b + 1) * positions) - b * positions
                parts.append(reciprocal_copies(raw, shape, b, masks[lo:hi], every[lo:hi]))
            return concat_outputs(parts)

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
            transform_outputs=(lambda out: class_probabilities(out, self.model_scores)) if self.softmax else None,
            float32_tail=True,
            split_cache=self.split_cache,
        )
        check_finite_scores(scores, "the target score of a copy", "ReciproCAM's map would be NaN")
        scores = scores.float().reshape(batch, positions)
        # The authors scale the scores to [0, 1] by their range; shifting by the minimum first keeps
        # negative scores (raw logits, a segmentation target) from being cut by the ReLU.
        scores = scores - scores.amin(dim=1, keepdim=True)
        return scores.reshape(batch, *spatial), path
