"""Ablation-CAM: a channel's weight is the drop of the target score when it is switched off.

Each channel of the target layer is ablated in turn (one copy of the layer's
output per channel) and the target score recomputed. Only the part of the model
after the target layer depends on the ablation, so whenever possible only that
part is run (:func:`split_after_layer`): the model is traced with ``torch.fx``
(the target layer kept as one call), and the nodes that compute the output from
the target layer's output are copied into a small graph module. For ResNet-50's
``layer4[-1]`` that is the pooling and the classifier, instead of the whole
network per channel. When that part also needs values computed before the
target layer without going through it (the input of the residual block a
``norm1`` or ``bn2`` sits in), those are computed once per image and chunk size
and passed along.

When the model cannot be traced (data-dependent Python branches, detectors), the
whole model is run on copies of the input and a forward hook replaces the target
layer's output with the ablated copies. Either way the copies are built chunk
by chunk, the scores stay on the device, and the user's model is never modified
(nothing is swapped into it; the hook is removed in ``finally``). A split is
only used after checking that it reproduces the model's output on the input.
The scoring loop is :func:`camlib.utils.tail_scoring.score_layer_copies`,
shared with ReciproCAM.

"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Iterator, List, Optional

import torch

from camlib.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from camlib.base_cam import BaseCAM, weighted_sum_map
from camlib.capabilities import Capabilities
from camlib.capture import Capture
from camlib.registry import register_method
from camlib.utils.batched import (
    check_finite_scores,
    score_outputs,
    warn_if_scores_equal,
)
from camlib.utils.fx_split import LayerSplit, split_after_layer
from camlib.utils.tail_scoring import concat_outputs, score_layer_copies

__all__ = ["AblationCAM", "LayerSplit", "split_after_layer"]  # the split lives in camlib.utils.fx_split


def _ablated_batch(layer: Any, raw: Any, index: int, channels: torch.Tensor) -> Any:
    """Copies of image ``index``'s output, copy i with channel ``channels[i]`` ablated."""
    if hasattr(layer, "ablated_batch"):
        return layer.ablated_batch(raw, index, channels)
    # An ablation layer written for pytorch-grad-cam's protocol.
    layer.indices = channels
    layer.set_next_batch(input_batch_index=index, activations=raw, num_channels_to_ablate=len(channels))
    return layer(None)


class _Plan:
    """The ablated copies of a call, image by image: slot i is image ``image[i]``
    with channel ``channel[i]`` ablated; image b's slots are ``spans[b]``."""

    def __init__(self, channels: List[torch.Tensor]) -> None:
        self.image: List[int] = [b for b, chosen in enumerate(channels) for _ in range(int(chosen.numel()))]
        self.channel = torch.cat(channels)
        self.size = len(self.image)
        self.spans: dict = {}
        position = 0
        for b, chosen in enumerate(channels):
            if chosen.numel():
                self.spans[b] = (position, position + int(chosen.numel()))
                position += int(chosen.numel())

    def segments(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(image, lo, hi)`` runs of one image within slots ``start..stop-1``."""
        position = start
        while position < stop:
            b = self.image[position]
            end = min(stop, self.spans[b][1])
            yield b, position, end
            position = end


# -- the method ------------------------------------------------------------------------------------
@register_method("ablationcam", title="Ablation-CAM")
class AblationCAM(BaseCAM):
    r"""Ablation-CAM.

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020.
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    .. math::
        w^c_k = \frac{y^c - y^c_k}{y^c}, \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    where :math:`y^c_k` is the target score with channel :math:`k` of the target
    layer ablated (see :class:`camlib.ablation_layer.AblationLayer`).

    Cost: one forward pass, then one pass per channel (per image) of only the
    part of the model after the target layer, ``batch_size`` channels at a time;
    models that cannot be split there (see :func:`split_after_layer`) run whole
    per channel, as in pytorch-grad-cam. ``ratio_channels_to_ablate < 1`` ablates fewer
    channels (the others get weight 0).
    Output: ``np.float32 [B, H, W]`` (``[B, D, H, W]`` for 5-D input) in [0, 1].

    Args:
        model: the network; not modified.
        target_layers: layers whose channels are ablated.
        reshape_transform: turns a layer's output into ``[B, C, *spatial]``.
        ablation_layer: how to ablate a channel of the layer's output; None
            picks :class:`~camlib.ablation_layer.AblationLayer` (channels on dim
            1) or, for token / channels-last outputs, :class:`~camlib.ablation_layer.AblationLayerVit`,
            or, for a dict of feature maps (a detector's FPN),
            :class:`~camlib.ablation_layer.AblationLayerFasterRCNN`.
        batch_size: ablated copies per forward pass.
        ratio_channels_to_ablate: in (0, 1]; see
            :meth:`~camlib.ablation_layer.AblationLayer.activations_to_be_ablated`.
        **kwargs: passed to :class:`~camlib.base_cam.BaseCAM` (e.g. ``progress=False``).

    Attributes:
        split_model: run only the part after the target layer when it can be
            split off (default True); False always runs the whole model.
        last_paths: for the last call, per target layer, how the ablated copies
            were scored: ``"split"``, ``"full"`` (whole model), or ``"none"`` (no
            channel to ablate).

    Example:
        >>> import torch, torchvision
        >>> from camlib import AblationCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with AblationCAM(model, target_layers=[model.layer4[-1]], progress=False) as cam:
        ...     maps = cam(torch.randn(1, 3, 64, 64))
        >>> maps.shape, cam.last_paths
        ((1, 64, 64), ['split'])
    """

    capabilities = Capabilities(gradients=False, extra_forwards=True, default_batch_size=32)
    split_model: ClassVar[bool] = True

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        ablation_layer: Optional[torch.nn.Module] = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, batch_size=batch_size, **kwargs)
        if ablation_layer is not None and not (
            callable(ablation_layer)
            and hasattr(ablation_layer, "set_next_batch")
            and hasattr(ablation_layer, "activations_to_be_ablated")
        ):
            raise TypeError(
                f"ablation_layer must be an AblationLayer (or implement set_next_batch, "
                f"activations_to_be_ablated and __call__), got {type(ablation_layer).__name__}"
            )
        if isinstance(ratio_channels_to_ablate, bool) or not isinstance(
            ratio_channels_to_ablate, (int, float)
        ):
            raise TypeError(
                f"ratio_channels_to_ablate must be a number in (0, 1], got {ratio_channels_to_ablate!r}"
            )
        if not 0.0 < ratio_channels_to_ablate <= 1.0:
            raise ValueError(
                f"ratio_channels_to_ablate must be in (0, 1] (1 ablates every channel), got {ratio_channels_to_ablate}"
            )
        self._default_layer = AblationLayer()
        self._vit_layer = AblationLayerVit()
        self._fpn_layer = AblationLayerFasterRCNN()
        self.ablation_layer = self._default_layer if ablation_layer is None else ablation_layer
        self.ratio_channels_to_ablate = float(ratio_channels_to_ablate)
        self.last_paths: list[str] = []

    # -- raw maps ------------------------------------------------------------------------------
    def layer_maps(self, capture: Capture, eigen_smooth: bool) -> List[torch.Tensor]:
        """Each layer's map from its ablation weights; records how each layer was scored in :attr:`last_paths`."""
        results = [self._layer_weights(capture, i) for i in range(len(capture.layers))]
        self.last_paths = [path for _, path in results]
        return [weighted_sum_map(w, a, eigen_smooth) for (w, _), a in zip(results, capture.activations)]

    def _layer_weights(self, capture: Capture, index: int) -> tuple[torch.Tensor, str]:
        """``(weights [B, C], path)`` of one layer: the normalised score drops, and how they were scored."""
        raw, activations = capture.raw_activations[index], capture.activations[index]
        target_layer, targets, x = capture.layers[index], list(capture.targets), capture.input
        batch, num_channels = activations.shape[:2]
        layer = self._layer_for(raw, num_channels)
        device = activations.device
        original = score_outputs(capture.outputs, targets).to(device)
        check_finite_scores(original, "the target score", "Ablation-CAM's relative drops (y - y_k) / y would be NaN")
        ablated_scores = original[:, None].repeat(1, num_channels)
        channels = [self._channels_to_ablate(layer, activations[b], num_channels) for b in range(batch)]
        if not any(c.numel() for c in channels):
            return self._normalised_drop(original, ablated_scores), "none"

        plan = _Plan(channels)

        def ablated(start: int, stop: int) -> Any:
            parts = []
            for b, lo, hi in plan.segments(start, stop):
                parts.append(_ablated_batch(layer, raw, b, plan.channel[lo:hi]))
            return concat_outputs(parts)

        scores, path = score_layer_copies(
            self.model, target_layer, x, raw, capture.outputs, plan.image, ablated, targets,
            batch_size=self.batch_size, progress=self.progress, desc="AblationCAM", split=self.split_model,
        )  # fmt: skip
        check_finite_scores(
            scores, "the target score of an ablated copy", "Ablation-CAM's weights would be NaN"
        )
        rows = torch.tensor(plan.image, device=device)
        ablated_scores[rows, plan.channel] = scores.to(device)
        image = torch.arange(batch, device=device).repeat_interleave(num_channels)
        warn_if_scores_equal(
            torch.cat([ablated_scores.reshape(-1), original]), torch.cat([image, torch.arange(batch, device=device)]),
            "AblationCAM", "ablated copies (and the unablated input)",
            "no channel changes the score: every weight is 0 and the map is blank",
        )  # fmt: skip
        return self._normalised_drop(original, ablated_scores), path

    # -- helpers ---------------------------------------------------------------------------------
    def _layer_for(self, raw: Any, num_channels: int) -> Any:
        """The ablation layer for this output; checks it ablates the CAM's channels."""
        layer = self.ablation_layer
        if layer is self._default_layer and isinstance(raw, torch.Tensor) and raw.ndim >= 3:
            if raw.shape[1] != num_channels and raw.shape[-1] == num_channels:
                layer = self._vit_layer  # tokens [B, N, C] or channels-last maps
        elif layer is self._default_layer and isinstance(raw, Mapping):
            layer = self._fpn_layer  # a dict of feature maps (a detector's FPN)
        if isinstance(layer, AblationLayer):
            found = layer.num_channels(raw)
            if found != num_channels:
                shape = list(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                raise ValueError(
                    f"{type(layer).__name__} sees {found} channels in the target layer's output ({shape}), "
                    f"but the activations have {num_channels} after reshape_transform; pass an ablation "
                    "layer matching the output's layout (AblationLayer: channels on dim 1, "
                    "AblationLayerVit: channels last, AblationLayerFasterRCNN: a dict of feature maps)"
                )
        return layer

    def _channels_to_ablate(self, layer: Any, activations: torch.Tensor, num_channels: int) -> torch.Tensor:
        chosen = layer.activations_to_be_ablated(activations, self.ratio_channels_to_ablate)
        if isinstance(chosen, torch.Tensor):
            chosen = chosen.to(device=activations.device, dtype=torch.long)
        else:
            chosen = torch.as_tensor([int(c) for c in chosen], dtype=torch.long, device=activations.device)
        chosen = chosen.reshape(-1)
        if self.ratio_channels_to_ablate < 1.0 or type(layer).activations_to_be_ablated is not (
            AblationLayer.activations_to_be_ablated
        ):
            chosen = torch.unique(chosen)
            if chosen.numel() and (int(chosen[0]) < 0 or int(chosen[-1]) >= num_channels):
                raise ValueError(
                    f"activations_to_be_ablated returned channel indices outside [0, {num_channels})"
                )
        return chosen

    @staticmethod
    def _normalised_drop(original: torch.Tensor, ablated_scores: torch.Tensor) -> torch.Tensor:
        """``(y - y_k) / y`` per image; an image whose score is exactly 0 gets the plain drop."""
        zero = original == 0
        if bool(zero.any()):
            warnings.warn(
                "the target score of an image is exactly 0, so Ablation-CAM's relative drop "
                "(y - y_k) / y is undefined; its map uses the plain drop y - y_k instead",
                stacklevel=5,
            )
        denominator = torch.where(zero, torch.ones_like(original), original)[:, None]
        return (original[:, None] - ablated_scores) / denominator
