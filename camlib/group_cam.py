"""Group-CAM: Grad-CAM-weighted channels summed in groups, each group scored as a mask on the input."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from camlib._ops import broadcast_weights, spatial_dims
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.batched import batched_target_scores
from camlib.utils.image import at_least_float32, gaussian_blur
from camlib.utils.messages import BlankMapWarning, warn_user
from camlib.utils.tail_scoring import class_probabilities

__all__ = ["GroupCAM", "group_masks", "warn_if_blank"]


def group_masks(
    activations: torch.Tensor, grads: torch.Tensor, groups: int, size: tuple, quantile: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-CAM's masks: ``[B, C, *s]`` activations and gradients -> ``([B, G, *size], valid [B, G])``.

    The channels, weighted by their mean gradient (Grad-CAM's weights), are split
    into ``groups`` consecutive groups (``torch.chunk``: the last groups may be
    smaller) and summed; each group map is ReLU'd, its values at or below its
    ``quantile`` (linear interpolation, as ``numpy.percentile``) set to 0,
    upsampled ((bi/tri)linear, corners not aligned) to ``size`` and min-max
    scaled to [0, 1]. A group whose upsampled map is constant is not valid (its
    mask is 0).
    """
    weights = grads.mean(dim=spatial_dims(grads))
    weighted = broadcast_weights(weights, activations) * activations
    maps = torch.stack([chunk.sum(dim=1) for chunk in weighted.chunk(groups, dim=1)], dim=1).relu()
    flat = maps.flatten(2)
    threshold = torch.quantile(flat, quantile, dim=-1, keepdim=True)
    maps = torch.where(flat > threshold, flat, torch.zeros_like(flat)).reshape(maps.shape)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 2]
    up = F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)
    flat = up.flatten(2)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    valid = (high > low)[..., 0]
    scaled = torch.where(high > low, (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return scaled.reshape(up.shape), valid


@register_method("groupcam", title="Group-CAM")
class GroupCAM(BaseCAM):
    r"""Group-CAM.

    Zhang, Rao & Yang, "Group-CAM: Group Score-Weighted Visual Explanations for
    Deep Convolutional Networks", 2021. https://arxiv.org/abs/2103.13859

    .. math::
        M_g = n\Big(U\big(\tau_{0.7}\big(\mathrm{ReLU}\textstyle\sum_{k \in g} \alpha^c_k A^k\big)\big)\Big), \qquad
        \alpha^c_k = \frac{1}{Z}\sum_{ij} \frac{\partial y^c}{\partial A^k_{ij}}

    .. math::
        s_g = p^c\big(X \odot M_g + \tilde X \odot (1 - M_g)\big) - p^c(\tilde X), \qquad
        L^c = \mathrm{ReLU}\Big(\sum_g s_g M_g\Big)

    with :math:`G` groups of consecutive channels, :math:`\tau_{0.7}` zeroing
    the values at or below the map's 70th percentile, :math:`U` upsampling to
    the input's size, :math:`n` min-max scaling, :math:`\tilde X` the input
    blurred (Gaussian, 51 taps, :math:`\sigma = 50` px, mirrored borders) and
    :math:`p^c` the softmax probability of the target. The map is at the
    input's resolution.

    Choices the paper leaves open follow the authors' published code
    (wofmanaf/Group-CAM, ``cam/groupcam.py``): 32 groups, the 70th-percentile
    threshold, the blur, probabilities rather than logits (``softmax=False``
    scores the raw target; outputs other than a ``[B, classes]`` tensor are never
    softmaxed), groups with a constant map skipped.

    With ``softmax=True`` and a model whose scores (found as every camlib
    method finds them: :meth:`~camlib.base_cam.BaseCAM.model_scores`, ``output_adapter``)
    are ``[B, classes]``, the targets are called on the class probabilities (the
    sigmoid of a single logit); other outputs (segmentation maps, a detector's boxes)
    go to the targets as the model returned them. The masks, the blur and the blend
    are computed in float32 whatever the model's precision.

    A blank map is a result, not a failure: when no group's masked input scores the
    target above the blurred input (a class the model does not see in the image, an
    untrained model), :math:`L^c` is zero everywhere and a
    :class:`~camlib.utils.messages.BlankMapWarning` names the images and the best gain
    (the capability record's ``gain_over_baseline``). The authors' code returns None there.

    Cost: one forward and one backward pass, then ``groups + 1`` forward passes
    per image (the blurred baseline and each group's masked input), ``batch_size``
    at a time. Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels are grouped.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        groups: number of channel groups (32).
        softmax: score class probabilities (default) or the raw target.
        blur_sigma: the baseline's blur, in pixels (50).
        blur_kernel: the blur's taps, odd (51).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``, ``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import GroupCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with GroupCAM(model, [model.layer4[-1]], progress=False) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape, maps.dtype
        ((2, 64, 64), dtype('float32'))
    """

    capabilities = Capabilities(
        extra_forwards=True, default_batch_size=32, eigen_smooth=False, gain_over_baseline=True
    )

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        groups: int = 32,
        softmax: bool = True,
        blur_sigma: float = 50.0,
        blur_kernel: int = 51,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer (32 in the paper), got {groups!r}")
        if not isinstance(softmax, bool):
            raise TypeError(f"softmax must be True or False, got {softmax!r}")
        gaussian_blur(torch.zeros(1, 1, 1), blur_sigma, blur_kernel)  # checks the blur's arguments
        self.groups = groups
        self.softmax = softmax
        self.blur_sigma = float(blur_sigma)
        self.blur_kernel = int(blur_kernel)

    def layer_map(self, capture: Capture, index: int, eigen_smooth: bool) -> torch.Tensor:
        """The score-weighted sum of the group masks ``[B, *S]`` at the input's resolution."""
        x = capture.input
        targets = list(capture.targets)
        transform = (lambda out: class_probabilities(out, self.model_scores)) if self.softmax else None
        activations, grads = capture.activations[index], capture.gradients[index]
        batch, size = x.shape[0], tuple(x.shape[2:])
        masks, valid = group_masks(at_least_float32(activations), at_least_float32(grads), self.groups, size)
        groups = masks.shape[1]
        image32 = at_least_float32(x)  # blur and blend in float32, then run the model in its own dtype
        blurred = gaussian_blur(image32, self.blur_sigma, self.blur_kernel, border="reflect")
        # input i: image i // (groups + 1); slot 0 is the blurred baseline, slot g + 1 group g's mask
        per_image = groups + 1

        def make_inputs(start: int, stop: int) -> torch.Tensor:
            rows = torch.arange(start, stop, device=x.device)
            image, slot = rows // per_image, rows % per_image
            mask = masks[image, (slot - 1).clamp_min(0)] * (slot > 0).reshape(-1, *[1] * len(size))
            mask = mask[:, None].to(image32.dtype)
            return (image32[image] * mask + blurred[image] * (1 - mask)).to(x.dtype)

        def targets_for(start: int, stop: int) -> list:
            return [targets[i // per_image] for i in range(start, stop)]

        model = self.model if transform is None else (lambda inputs: transform(self.model(inputs)))
        scores = batched_target_scores(
            model, batch * per_image, make_inputs, targets_for, self.batch_size, self.progress, desc="GroupCAM"
        ).to(x.device).reshape(batch, per_image)
        gains = (scores[:, 1:] - scores[:, :1]) * valid
        result = (broadcast_weights(gains.to(masks.dtype), masks) * masks).sum(dim=1)
        warn_if_blank(result, gains, valid, scores[:, 0])
        return result


def warn_if_blank(maps: torch.Tensor, gains: torch.Tensor, valid: torch.Tensor, baseline: torch.Tensor) -> None:
    """Warn (:class:`~camlib.utils.messages.BlankMapWarning`) about the images whose Group-CAM map
    ``[B, *S]`` is nowhere positive, saying why: no valid group, or no gain over the baseline."""
    blank = maps.flatten(1).amax(dim=1) <= 0
    if not bool(blank.any()):
        return
    images = blank.nonzero()[:, 0].tolist()
    first = images[0]
    if not bool(valid[first].any()):
        why = (
            "every channel group's map is constant after the 70th-percentile threshold, so no group masks the "
            "input (the layer's gradient-weighted activations carry no spatial information: try an earlier layer "
            "or fewer groups)"
        )
    else:
        best = float(gains[first][valid[first]].max())
        why = (
            f"no channel group's masked input raises the target's score above the blurred input's "
            f"({float(baseline[first]):.4g}; best gain {best:.3g}), so Group-CAM has no region to show: the model "
            "does not find the target in the image more than in its blurred copy. Explain a target the model sees "
            "(targets=None picks each image's top class) or use a trained model"
        )
    warn_user(f"GroupCAM: the map of image(s) {images[:5]} is blank: {why}", BlankMapWarning)
