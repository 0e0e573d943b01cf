"""Score-CAM: a channel's weight is the target score of the input masked by that channel.

Every channel of the target layer is upsampled to the input's size, min-max
normalised, and multiplied into the input; the model scores each masked input,
and the softmax of the scores over the channels gives the weights.

Masked inputs are built chunk by chunk (never all ``B x C`` of them at once).
Channels that give the same mask are scored once: channels with identical
values share one forward pass, and every constant channel (all zeros, for
example, common after a ReLU) gives the all-zero mask, scored once per image.

"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.registry import register_method
from camlib.utils.batched import batched_target_scores, check_finite_scores, warn_if_scores_equal

__all__ = [
    "ScoreCAM",
    "channel_mask_scores",
    "distinct_channel_maps",
    "normalized_upsampled_masks",
    "score_cam_masks",
    "score_cam_weights",
]

#: Added to the range of each upsampled channel before dividing by it.
MASK_EPS = 1e-8


def distinct_channel_maps(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct channel maps of each image, constant maps replaced by zeros.

    Args:
        activations: ``[B, C, *S]``.

    Returns:
        ``(maps, image, inverse)``: ``maps [U, *S]`` the distinct maps (grouped by
        image), ``image [U]`` the image each belongs to, and ``inverse [B * C]``
        the row of ``maps`` for each (image, channel).
    """
    batch, channels = activations.shape[:2]
    flat = activations.reshape(batch * channels, -1)
    low, high = torch.aminmax(flat, dim=1)  # one pass for both
    flat = torch.where((high == low)[:, None], 0.0, flat)  # constant maps -> zeros (a NaN map stays NaN)
    image = torch.arange(batch, device=flat.device, dtype=flat.dtype)[:, None].expand(batch, channels)
    keys = torch.cat([image.reshape(-1, 1), flat], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    maps = unique[:, 1:].reshape(-1, *activations.shape[2:])
    return maps, unique[:, 0].long(), inverse


def score_cam_masks(maps: torch.Tensor, size: tuple) -> torch.Tensor:
    """Score-CAM masks: ``[n, *s]`` channel maps upsampled to ``size`` ((bi/tri)linear,
    corners aligned) and min-max normalised per map: ``[n, *size]`` in [0, 1]."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 1]
    upsampled = F.interpolate(maps[:, None].float(), size=tuple(size), mode=mode, align_corners=True)[:, 0]
    view = (-1,) + (1,) * (upsampled.ndim - 1)
    low, high = torch.aminmax(upsampled.reshape(upsampled.shape[0], -1), dim=1)  # one pass for both
    low, high = low.view(view), high.view(view)
    # in place: one mask-sized buffer per chunk
    return upsampled.sub_(low).div_(high - low + MASK_EPS)


def normalized_upsampled_masks(maps: torch.Tensor, size: tuple) -> torch.Tensor:
    """Masks normalised first, then upsampled: each ``[n, *s]`` channel map min-max
    normalised at its own resolution (``(A - min A) / (max(A - min A) + 1e-8)``), then
    (bi/tri)linearly upsampled to ``size`` (half-pixel centres): ``[n, *size]`` in [0, 1].

    The order SS-CAM and IS-CAM use (:class:`camlib.ss_cam.SSCAM`, :class:`camlib.is_cam.ISCAM`).
    """
    flat = maps.float().reshape(maps.shape[0], -1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    normalized = (shifted / (shifted.amax(dim=1, keepdim=True) + MASK_EPS)).reshape(maps.shape)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 1]
    return F.interpolate(normalized[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def channel_mask_scores(
    model: Callable,
    input_tensor: torch.Tensor,
    maps: torch.Tensor,
    image: torch.Tensor,
    targets: Sequence[Callable],
    *,
    masks: Callable[[torch.Tensor, tuple], torch.Tensor] = score_cam_masks,
    samples: int = 1,
    perturb: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    batch_size: int = 16,
    progress: Optional[bool] = None,
    desc: Optional[str] = None,
) -> torch.Tensor:
    """The target score of the input masked by each channel map: the loop Score-CAM,
    SS-CAM and IS-CAM share.

    Masked inputs are built lazily, ``batch_size`` at a time, through
    :func:`camlib.utils.batched.batched_target_scores`, on the input's device.
    Input ``j`` of the ``samples * U`` ones is sample ``s = j // U`` of map
    ``u = j % U`` (sample-major order): ``input[image[u]] * perturb(mask_u, s)``.

    Args:
        model: the network.
        input_tensor: the prepared input ``[B, C, *S]``.
        maps: channel maps ``[U, *s]`` (e.g. from :func:`distinct_channel_maps`).
        image: ``[U]`` the image each map belongs to.
        targets: one target per image.
        masks: ``(maps, size) -> [n, *size]`` masks in [0, 1] (default :func:`score_cam_masks`).
        samples: scored inputs per map.
        perturb: ``(masks [n, *S], sample [n]) -> masks``, applied to each chunk's
            masks (noise, a scale); None leaves them as they are.
        batch_size: masked inputs per forward pass.
        progress: show a progress bar (None: the environment decides).
        desc: the bar's label.

    Returns:
        float32 scores ``[samples, U]``.
    """
    count = int(maps.shape[0])
    size = tuple(input_tensor.shape[2:])
    image = image.to(input_tensor.device)
    image_of = image.tolist()

    def make_inputs(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=maps.device)
        rows = index % count
        chunk = masks(maps[rows], size)
        if perturb is not None:
            chunk = perturb(chunk, index // count)
        chunk = chunk.to(input_tensor.dtype).unsqueeze(1)
        if input_tensor.shape[0] == 1:  # one image: broadcast it, one pass over the chunk
            return torch.mul(input_tensor.expand(len(rows), *input_tensor.shape[1:]), chunk)
        # the indexed input is a fresh copy: multiply in place (no second input-sized buffer per chunk)
        return input_tensor[image[rows.to(image.device)]].mul_(chunk)

    def targets_for(start: int, stop: int) -> list:
        return [targets[image_of[j % count]] for j in range(start, stop)]

    scores = batched_target_scores(model, samples * count, make_inputs, targets_for, batch_size, progress, desc)
    return scores.reshape(samples, count)


def score_cam_weights(
    model: Callable,
    input_tensor: torch.Tensor,
    activations: torch.Tensor,
    targets: Sequence[Callable],
    *,
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Score-CAM channel weights ``[B, C]``: the softmax over channels of the target
    score of the input masked by each distinct channel map (:func:`score_cam_masks`)."""
    batch, channels = activations.shape[:2]
    maps, image, inverse = distinct_channel_maps(activations)
    scores = channel_mask_scores(
        model, input_tensor, maps, image, targets, batch_size=batch_size, progress=progress, desc="ScoreCAM"
    )
    scores = scores[0]
    check_finite_scores(scores, "the target score of a masked input", "Score-CAM's softmax weights would be NaN")
    warn_if_scores_equal(
        scores, image, "ScoreCAM", "distinct masked inputs",
        "its softmax weights are uniform and the map is the plain mean of the channels, with no class information",
    )  # fmt: skip
    scores = scores.to(activations.device)[inverse].reshape(batch, channels)
    return torch.softmax(scores, dim=-1)


@register_method("scorecam", title="Score-CAM")
class ScoreCAM(BaseCAM):
    r"""Score-CAM.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020. https://arxiv.org/abs/1910.01279

    .. math::
        M_k = \frac{U(A^k) - \min U(A^k)}{\max U(A^k) - \min U(A^k) + 10^{-8}}, \qquad
        w^c = \mathrm{softmax}_k\big(y^c(X \odot M_k)\big), \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    with :math:`U` (bi/tri)linear upsampling to the input's size, corners aligned.

    Cost: one forward pass, then one per distinct channel map per image
    (``batch_size`` masked inputs at a time, 16 by default); no backward pass.
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels mask the input.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``,
            ``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import ScoreCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with ScoreCAM(model, [model.layer4[-1]], batch_size=128, progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=16)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return score_cam_weights(
            self.model, input_tensor, activations, targets, batch_size=self.batch_size, progress=self.progress
        )
