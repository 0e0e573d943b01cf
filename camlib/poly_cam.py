"""Poly-CAM: a high-resolution map built from several layers, the deepest one refined by the earlier ones."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from camlib._ops import broadcast_weights
from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.score_cam import distinct_channel_maps
from camlib.utils.batched import batched_target_scores, score_outputs
from camlib.utils.image import at_least_float32
from camlib.utils.tail_scoring import class_probabilities

__all__ = ["PolyCAM", "local_relevance_normalization", "poly_cam_masks", "poly_combine"]

VARIANTS = ("+", "-", "+-")
#: Percent of the values left out at each end by the masks' normalisation.
OUTLIER_PERCENT = 0.1


def _resize(maps: torch.Tensor, size: tuple) -> torch.Tensor:
    """``[N, *s]`` -> ``[N, *size]``, (bi/tri)linear, corners not aligned."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 1]
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def poly_cam_masks(maps: torch.Tensor, size: tuple) -> torch.Tensor:
    """Poly-CAM's masks: ``[n, *s]`` channel maps -> ``[n, *size]`` in [0, 1].

    Each map is shifted by its 0.1th percentile, divided by the distance between
    its 0.1th and 99.9th percentiles (at least 1e-12), clipped to [0, 1] and
    upsampled ((bi/tri)linearly, corners not aligned) to ``size``. The authors'
    code divides by the 99.9th percentile alone, the same for the post-ReLU
    activations it was written for (their 0.1th percentile is 0); dividing by
    the range keeps the masks of signed activations (LayerNorm tokens, FPN
    levels) in [0, 1] instead of saturating every channel whose values are all
    negative to an all-one mask.
    """
    flat = at_least_float32(maps).flatten(1)
    q = torch.tensor([OUTLIER_PERCENT / 100, 1 - OUTLIER_PERCENT / 100], device=flat.device, dtype=flat.dtype)
    low, high = torch.quantile(flat, q, dim=1)
    scaled = ((flat - low[:, None]) / (high - low).clamp_min(1e-12)[:, None]).clamp(0, 1)
    return _resize(scaled.reshape(maps.shape), size)


def local_relevance_normalization(fine: torch.Tensor, coarse_size: tuple) -> torch.Tensor:
    """``fine / max(U(D(fine)), 1e-12)``: each value divided by the local mean-like level of its
    ``coarse_size`` cell (``D`` down-, ``U`` upsampling, (bi/tri)linear), for ``[B, *s]`` maps."""
    level = _resize(_resize(fine, coarse_size), tuple(fine.shape[1:]))
    return fine / level.clamp_min(1e-12)


def poly_combine(layer_maps: List[torch.Tensor], lnorm: bool = True) -> torch.Tensor:
    """Combine per-layer maps ``[B, *s_l]``, finest first, deepest last, into one map at the finest
    resolution: from the deepest, ``P = ReLU(LNorm(M_l) * U(P))`` layer by layer."""
    combined = layer_maps[-1]
    for fine in reversed(layer_maps[:-1]):
        if lnorm:
            fine = local_relevance_normalization(fine, tuple(combined.shape[1:]))
        combined = torch.relu(fine * _resize(combined, tuple(fine.shape[1:])))
    return combined


@register_method("polycam", title="Poly-CAM")
class PolyCAM(BaseCAM):
    r"""Poly-CAM (PCAM+, PCAM- and PCAM+/-).

    Englebert, Cornu & De Vleeschouwer, "Poly-CAM: High resolution class
    activation map for convolutional neural networks", 2022. https://arxiv.org/abs/2204.13359

    For each target layer :math:`l`, with :math:`M_k` channel :math:`k`
    normalised (shifted by its 0.1th percentile, divided by the distance to its
    99.9th, clipped to [0, 1]) and upsampled to
    the input, and :math:`p^c` the softmax probability of the target:

    .. math::
        w^{+}_k = p^c(X \odot M_k), \quad
        w^{-}_k = \mathrm{ReLU}\big(p^c(X) - p^c(X \odot (1 - M_k))\big), \quad
        w^{\pm}_k = \mathrm{ReLU}\big(w^{+}_k + p^c(X) - p^c(X \odot (1 - M_k))\big)

    .. math::
        S_l = \mathrm{ReLU}\Big(\sum_k w_k A^k_l\Big), \qquad
        P_L = S_L, \qquad
        P_l = \mathrm{ReLU}\Big(\frac{S_l}{U(D(S_l))} \odot U(P_{l+1})\Big)

    from the deepest layer :math:`L` to the finest: each layer's map, divided by
    its own local level at the coarser resolution (``lnorm``), sharpens the
    upsampled map of the layers after it. The result is at the finest layer's
    resolution.

    Choices follow the authors' published code (aenglebert/polycam): the
    percentile normalisation of the masks (0.1th and 99.9th percentiles; they
    divide by the 99.9th alone, which is the same on post-ReLU activations, see
    :func:`poly_cam_masks`), the softmax of the logits (the sigmoid of a single
    logit; ``softmax=False`` scores the raw target), local normalisation on,
    PCAM+/- by default (their README's example), the masked inputs of PCAM-
    masked by ``1 - M_k``. The final map is min-max scaled (the authors' code
    clips at the percentiles again). Layers are combined from the coarsest grid
    to the finest, whatever their order in ``target_layers``.

    With ``softmax=True`` and a model whose scores (found as every
    camlib method finds them: :meth:`~camlib.base_cam.BaseCAM.model_scores`,
    ``output_adapter``) are ``[B, classes]``, the targets are called on the
    class probabilities; other outputs (segmentation maps, a detector's boxes)
    go to the targets as the model returned them.

    Cost: one forward pass, then per image and layer one masked forward pass
    per distinct channel map (two for ``"+-"``), ``batch_size`` at a time, no
    backward pass: Score-CAM's cost summed over the layers. Output:
    ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1];
    ``per_layer`` is refused (the layers make one map).

    Args:
        model: the network; not modified.
        target_layers: layers of decreasing resolution, e.g. the last block of each ResNet stage.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        variant: ``"+"``, ``"-"`` or ``"+-"`` (default).
        softmax: score class probabilities (default) or the raw target.
        lnorm: local relevance normalisation (default True).
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (``batch_size``, ``progress``, ...).

    Example:
        >>> import torch, torchvision
        >>> from camlib import PolyCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> layers = [model.layer3[-1], model.layer4[-1]]
        >>> with PolyCAM(model, layers, variant="+", batch_size=256, progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape
        (1, 64, 64)
    """

    capabilities = Capabilities(
        gradients=False, extra_forwards=True, default_batch_size=32, eigen_smooth=False, per_layer=False
    )

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        variant: str = "+-",
        softmax: bool = True,
        lnorm: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} (PCAM+, PCAM-, PCAM+/-), got {variant!r}")
        for name, value in (("softmax", softmax), ("lnorm", lnorm)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.variant = variant
        self.softmax = softmax
        self.lnorm = lnorm

    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """One map: the layers' maps combined from the coarsest to the finest (:func:`poly_combine`)."""
        targets = list(capture.targets)
        transform = (lambda out: class_probabilities(out, self.model_scores)) if self.softmax else None
        scored = self.model if transform is None else (lambda inputs: transform(self.model(inputs)))
        baseline = score_outputs(capture.outputs if transform is None else transform(capture.outputs), targets)
        maps = [self._layer_weighted_map(capture, i, scored, targets, baseline) for i in range(len(capture.layers))]
        order = sorted(range(len(maps)), key=lambda i: -math.prod(maps[i].shape[1:]))  # finest first
        return [poly_combine([maps[i] for i in order], self.lnorm)]

    def _layer_weighted_map(
        self, capture: Capture, index: int, scored: Callable, targets: list, baseline: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``index``'s map ``ReLU(sum_k w_k A^k)``, ``[B, *s]``, with the variant's channel weights."""
        x, activations = capture.input, capture.activations[index]
        batch, channels = activations.shape[:2]
        maps, image, inverse = distinct_channel_maps(activations)
        count, size = maps.shape[0], tuple(x.shape[2:])
        kinds = {"+": (False,), "-": (True,), "+-": (False, True)}[self.variant]  # True: the inverted mask
        image_of = image.tolist()

        def make_inputs(start: int, stop: int) -> torch.Tensor:
            parts = []
            for k, inverted in enumerate(kinds):
                lo, hi = max(start, k * count) - k * count, min(stop, (k + 1) * count) - k * count
                if lo < hi:
                    masks = poly_cam_masks(maps[lo:hi], size).to(x.dtype)
                    parts.append(x[image[lo:hi]] * (1 - masks if inverted else masks)[:, None])
            return torch.cat(parts)

        def targets_for(start: int, stop: int) -> list:
            return [targets[image_of[i % count]] for i in range(start, stop)]

        scores = batched_target_scores(
            scored,
            count * len(kinds),
            make_inputs,
            targets_for,
            self.batch_size,
            self.progress,
            desc="PolyCAM",
        ).to(activations.device)
        per_channel = [s[inverse].reshape(batch, channels) for s in scores.reshape(len(kinds), count)]
        baseline = baseline.to(activations.device)[:, None]
        if self.variant == "+":
            weights = per_channel[0]
        elif self.variant == "-":
            weights = torch.relu(baseline - per_channel[0])
        else:
            weights = torch.relu(per_channel[0] + baseline - per_channel[1])
        return torch.relu((broadcast_weights(weights, activations) * activations).nansum(dim=1))
