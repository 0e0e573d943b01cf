"""Shared pieces of the metrics that re-score perturbed inputs: score functions, map checks.

A *score function* turns the model's raw output into the values the targets
read, e.g. probabilities. The metrics that compare a score with a fraction of
itself (Average Drop) or integrate it over a perturbation (deletion, insertion)
need scores on a fixed scale, so they take one:

* ``"softmax"`` (the default): a softmax over the classes, dimension 1 of the
  output, for single-label classifiers;
* ``"sigmoid"``: an element-wise sigmoid, for multi-label classifiers;
* ``None``: the raw output (then use a target that makes probabilities, e.g.
  :class:`~camlib.utils.model_targets.ClassifierOutputSoftmaxTarget`);
* any callable ``output -> output``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

__all__ = ["ScoreFn", "check_unit_maps", "resolve_score_fn", "scoring_model"]

ScoreFn = Union[str, Callable[[Any], Any], None]

#: Maps may exceed [0, 1] by this much (interpolation round-off) and are clipped.
UNIT_TOLERANCE = 1e-4


def _softmax(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        raise ValueError(
            "score_fn='softmax' needs a model output of shape [B, K, ...] (class scores along dimension 1); "
            f"got {type(output).__name__}{'' if not isinstance(output, torch.Tensor) else list(output.shape)}. "
            "Pass score_fn=None or a callable for other outputs"
        )
    return torch.softmax(output, dim=1)


def _sigmoid(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"score_fn='sigmoid' needs a tensor output, got {type(output).__name__}; pass a callable instead"
        )
    return torch.sigmoid(output)


_NAMED = {"softmax": _softmax, "sigmoid": _sigmoid}


def resolve_score_fn(score_fn: ScoreFn) -> Optional[Callable[[Any], Any]]:
    """The callable behind a ``score_fn`` argument (None for the raw output)."""
    if score_fn is None:
        return None
    if isinstance(score_fn, str):
        if score_fn not in _NAMED:
            raise ValueError(
                f"score_fn must be 'softmax', 'sigmoid', None or a callable, got {score_fn!r}"
            )
        return _NAMED[score_fn]
    if not callable(score_fn):
        raise TypeError(
            f"score_fn must be 'softmax', 'sigmoid', None or a callable, got {type(score_fn).__name__}"
        )
    return score_fn


def scoring_model(model: Callable, score_fn: Optional[Callable[[Any], Any]]) -> Callable:
    """``model`` followed by ``score_fn`` (``model`` itself when there is none)."""
    if score_fn is None:
        return model

    def scored(x: torch.Tensor) -> Any:
        return score_fn(model(x))

    return scored


def check_unit_maps(cams: torch.Tensor, name: str = "cams") -> torch.Tensor:
    """Maps in [0, 1] (round-off beyond it clipped), else a ValueError saying how to fix them."""
    low, high = float(cams.min()), float(cams.max())
    if low < -UNIT_TOLERANCE or high > 1 + UNIT_TOLERANCE:
        raise ValueError(
            f"{name} must lie in [0, 1] (as CAM methods return them), but the values range over "
            f"[{low:.4g}, {high:.4g}]; rescale them, e.g. with camlib.utils.image.scale_cam_image"
        )
    return cams.clamp(0.0, 1.0)
