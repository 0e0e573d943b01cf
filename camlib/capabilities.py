"""What a CAM method needs and supports, declared once per method class.

Every method class carries a :class:`Capabilities` record as its
``capabilities`` class attribute. The pipeline reads it to decide what to
capture (gradients, the input gradient, second derivatives) and how a call may
be made (``per_layer``, ``aug_smooth``, 3-D input, differentiable maps); the
front ends (``usage_examples/cam.py``, ``camlib explain``, the docs gallery,
the benchmarks, the tests) read it through :mod:`camlib.registry` instead of
testing a method's name or type.

Example:
    >>> from camlib import GradCAM, ScoreCAM
    >>> GradCAM.capabilities.gradients, ScoreCAM.capabilities.extra_forwards
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

__all__ = ["Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """The record of what a method needs and supports.

    Attributes:
        gradients: back-propagates the target score to the target layers.
        input_gradient: also needs the gradient with respect to the input.
        second_order: needs second derivatives (a Hessian-vector product), so
            the capturing passes keep the graph of the gradients and run
            attention with the math kernel, which has a double backward.
        own_layers: chooses its own layers (``target_layers`` is ignored and
            may be empty).
        extra_forwards: runs extra forward passes (perturbations); the
            ``batch_size`` argument sets how many inputs go through at once.
        default_batch_size: inputs per extra forward pass when ``batch_size``
            is not given (methods without extra passes ignore it).
        volumetric: supports 5-D input ``[B, C, D, H, W]`` (volumes, clips).
        aug_smooth: supports test-time augmentation smoothing.
        eigen_smooth: supports the principal-component variant.
        per_layer: can return one map per target layer.
        differentiable: can return maps that carry the autograd graph back to
            the model's parameters (:meth:`camlib.base_cam.BaseCAM.differentiable_maps`).
        class_specific: the map depends on the explained target (False for
            class-agnostic methods such as EigenCAM).
        stochastic: the map is random by design (a baseline such as RandomCAM).
        wraps_method: the class builds on another method given as
            ``base_method`` (FinerCAM, RefineCAM, SESS).
        needs_attention: explains a transformer's attention modules, so a
            model without them is refused.
        gain_over_baseline: the map keeps only the positive part of the
            target score's gains over a reference input (GroupCAM: the
            blurred input), so an image in which no region raises the
            target's score gets an all-zero map, with a
            :class:`~camlib.utils.messages.BlankMapWarning` that says so.
        classifier_weights: weights the target layer's channels by a row of
            the model's final ``nn.Linear``, so the model needs that classifier,
            the target layer must feed it (through global pooling), and each
            target is read for its ``category`` instead of being called (CAM).
        layer_fusion: how the maps of several target layers become one:
            ``"mean"`` (the mean of the per-layer maps, rescaled to [0, 1]) or
            ``"product"`` (RefineCAM).
        detectors: explains object detectors, whose outputs are lists of
            detections scored by targets such as ``FasterRCNNBoxScoreTarget``.
        min_positions: the fewest spatial positions a target layer needs for a
            map that is not blank by construction (FEM keeps positions beyond
            2 standard deviations, which no position reaches on fewer than 6).
        top_class_default: ``targets=None`` explains each image's top class
            (FinerCAM instead contrasts it with the most similar classes).
    """

    gradients: bool = True
    input_gradient: bool = False
    second_order: bool = False
    own_layers: bool = False
    extra_forwards: bool = False
    default_batch_size: int = 32
    volumetric: bool = True
    aug_smooth: bool = True
    eigen_smooth: bool = True
    per_layer: bool = True
    differentiable: bool = False
    class_specific: bool = True
    stochastic: bool = False
    wraps_method: bool = False
    needs_attention: bool = False
    gain_over_baseline: bool = False
    classifier_weights: bool = False
    layer_fusion: str = "mean"
    detectors: bool = True
    min_positions: int = 1
    top_class_default: bool = True

    @property
    def calls_targets(self) -> bool:
        """Whether the method calls the target objects (class-specific methods other than CAM)."""
        return self.class_specific and not self.classifier_weights

    def but(self, **changes: Any) -> Capabilities:
        """A copy with some fields changed (for a subclass that differs from its parent)."""
        return replace(self, **changes)

    def describe(self, default: Optional[Capabilities] = None) -> str:
        """The fields that differ from ``default`` (all-default record if None), as ``name=value``."""
        base = default if default is not None else Capabilities()
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)]
        return ", ".join(changed) if changed else "defaults"
