"""Finer-CAM: explain what sets a class apart from the classes the model confuses it with."""

from __future__ import annotations

import numbers
import operator
import warnings
from typing import Any, Callable, Iterable, List, Optional, Sequence

import numpy as np
import torch

from camlib.base_cam import to_numpy
from camlib.cam_wrapper import CAMWrapper, build_base_cam
from camlib.grad_cam import GradCAM
from camlib.registry import register_method
from camlib.utils.model_outputs import logits_of
from camlib.utils.model_targets import FinerWeightedTarget

__all__ = ["DEFAULT_COMPARISON_CATEGORIES", "FinerCAM", "FinerClassTarget", "finer_targets"]

#: Ranks (in order of similarity to the main class, 0 being the main class
#: itself) of the classes compared with by default: the three most similar.
DEFAULT_COMPARISON_CATEGORIES = (1, 2, 3)


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number (e.g. 1.0), got {type(alpha).__name__} {alpha!r}")
    return float(alpha)


def _check_index(name: str, value: object) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy integer, integer 0-d tensor
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def _comparison_ranks(comparison_categories: Optional[Sequence[int]], num_classes: int) -> list[int]:
    """The similarity ranks to compare with, restricted to those that exist."""
    if comparison_categories is None:
        return list(DEFAULT_COMPARISON_CATEGORIES[: max(num_classes - 1, 0)])
    if isinstance(comparison_categories, (str, bytes)) or not isinstance(comparison_categories, Iterable):
        raise TypeError(
            "comparison_categories must be a list of similarity ranks (1 = the most similar other class), "
            f"got {type(comparison_categories).__name__}"
        )
    ranks = [_check_index("each comparison category", c) for c in comparison_categories]
    kept = [r for r in ranks if -num_classes <= r < num_classes]
    if len(kept) != len(ranks):
        dropped = [r for r in ranks if r not in kept]
        warnings.warn(
            f"comparison_categories {dropped} ignored: the model has only {num_classes} classes, so the "
            f"similarity ranks run from 0 to {num_classes - 1}",
            UserWarning,
            stacklevel=3,
        )
    return kept


def finer_targets(
    outputs: torch.Tensor,
    alpha: float = 1,
    comparison_categories: Optional[Sequence[int]] = None,
    target_idx: Optional[int] = None,
) -> List[FinerWeightedTarget]:
    """Finer-CAM's targets for a batch of class scores.

    For each image the main class is ``target_idx`` (or the top-scoring class);
    the other classes are ranked by how close their score is to the main
    class's score, and those at the ranks in ``comparison_categories``
    (default 1, 2, 3: the three most similar) are the ones it is contrasted with.

    Args:
        outputs: ``[B, num_classes]`` scores.
        alpha: strength of the comparison (0 gives the plain class score).
        comparison_categories: similarity ranks to compare with; ranks beyond
            the number of classes are ignored with a warning.
        target_idx: class to explain in every image; None for each image's top class.

    Returns:
        one :class:`~camlib.utils.model_targets.FinerWeightedTarget` per image.
    """
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"FinerCAM ranks classes by the model's scores, but the model returned a {type(outputs).__name__}; "
            "pass targets explicitly (e.g. FinerWeightedTarget objects, one per image)"
        )
    if outputs.ndim != 2:
        raise ValueError(
            f"FinerCAM ranks classes in a [B, num_classes] output, but the model returned shape "
            f"{list(outputs.shape)}; pass targets explicitly"
        )
    alpha = _check_alpha(alpha)
    num_classes = outputs.shape[1]
    if num_classes < 2:
        raise ValueError(
            f"FinerCAM compares the explained class with other classes, but the model has {num_classes} "
            "output; use the base method directly"
        )
    ranks = _comparison_ranks(comparison_categories, num_classes)
    scores = outputs.detach().float()
    if target_idx is None:
        main = scores.argmax(dim=1)
    else:
        index = _check_index("target_idx", target_idx)
        if not -num_classes <= index < num_classes:
            raise ValueError(
                f"target_idx={index} is out of range for a model with {num_classes} classes; pass a class "
                f"index in 0..{num_classes - 1}, or None for each image's top class"
            )
        main = torch.full((scores.shape[0],), index % num_classes, dtype=torch.long, device=scores.device)
    distance = (scores - scores.gather(1, main[:, None])).abs()
    # The main class comes first even when another class has exactly its score.
    distance.scatter_(1, main[:, None], -1.0)
    order = distance.argsort(dim=1, stable=True).tolist()
    return [FinerWeightedTarget(row[0], [row[r] for r in ranks], alpha) for row in order]


@register_method("finercam", title="Finer-CAM")
class FinerCAM(CAMWrapper):
    r"""Finer-CAM: a base CAM method explaining a class against its look-alikes.

    Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for
    Visual Explanation", CVPR 2025. https://arxiv.org/abs/2501.11309

    The base method explains the score

    .. math::
        y = \frac{\sum_{k} p_k \,(s_{m} - \alpha\, s_k)}{\sum_k p_k}

    where :math:`s` are the logits, :math:`p = \mathrm{softmax}(s)`, :math:`m`
    is the main class (``target_idx`` or the top class) and :math:`k` runs over
    the classes whose logits are nearest to :math:`s_m` (the ranks in
    ``comparison_categories``, by default the three nearest).

    When ``targets`` is None these targets are built from the scores of the
    same forward pass that the base method runs (no extra pass; with
    ``aug_smooth``, from each augmented pass). When ``targets`` is given it is
    used as is. Cost and output: those of the base method.

    Args:
        model: the network (not modified).
        target_layers: layers passed to the base method.
        reshape_transform: passed to the base method.
        base_method: a :class:`~camlib.base_cam.BaseCAM` subclass (the class, not an instance).
        **kwargs: passed to ``base_method`` (e.g. ``output_adapter=``, ``batch_size=``).

    Example:
        >>> import torch, torchvision
        >>> from camlib import FinerCAM
        >>> model = torchvision.models.resnet18(weights=None)
        >>> with FinerCAM(model, target_layers=[model.layer4[-1]]) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), alpha=0.6)
        >>> maps.shape, maps.dtype
        ((2, 64, 64), dtype('float32'))
    """

    capabilities = GradCAM.capabilities.but(wraps_method=True, differentiable=False, top_class_default=False)

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: List[torch.nn.Module],
        reshape_transform: Optional[Callable] = None,
        base_method: type = GradCAM,
        **kwargs: Any,
    ) -> None:
        super().__init__(build_base_cam("FinerCAM", base_method, model, target_layers, reshape_transform, **kwargs))

    def class_target(self, category: int) -> Callable:
        """Finer-CAM's target for class ``category``: its score against its look-alikes,
        found from each image's own scores when the target is applied."""
        return FinerClassTarget(category)

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        per_layer: bool = False,
        alpha: float = 1,
        comparison_categories: Optional[Sequence[int]] = None,
        target_idx: Optional[int] = None,
    ) -> torch.Tensor:
        """The base method's maps of Finer-CAM's targets (see :meth:`forward` for the arguments)."""
        resolve = None
        if targets is not None:
            if comparison_categories is not None or target_idx is not None:
                warnings.warn(
                    "targets were given, so comparison_categories and target_idx are ignored "
                    "(they only shape the targets FinerCAM builds when targets=None)",
                    UserWarning,
                    stacklevel=4,
                )
        else:
            alpha = _check_alpha(alpha)
            if target_idx is not None:
                _check_index("target_idx", target_idx)

            def resolve(scores: torch.Tensor) -> List[FinerWeightedTarget]:
                return finer_targets(scores, alpha, comparison_categories, target_idx)

        # without targets, they come from the scores of the base method's own forward pass (each augmented pass's)
        return self.base_cam.compute(
            input_tensor,
            targets,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            per_layer=per_layer,
            default_targets=resolve,
        )

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Optional[Sequence[int]] = None,
        target_idx: Optional[int] = None,
        *,
        aug_smooth: bool = False,
        per_layer: bool = False,
    ) -> np.ndarray:
        """Compute the maps.

        Args:
            input_tensor: ``[B, C, H, W]`` (or ``[B, C, D, H, W]``) float tensor.
            targets: one callable per image; None builds Finer-CAM targets
                (see :func:`finer_targets`) and is the usual choice.
            eigen_smooth: passed to the base method.
            alpha: strength of the comparison with similar classes.
            comparison_categories: similarity ranks of the classes compared
                with (default ``(1, 2, 3)``).
            target_idx: the class to explain in every image (default: each
                image's top class).
            aug_smooth: average over test-time augmentations (keyword only).
            per_layer: one map per target layer (keyword only).

        Returns:
            the base method's maps: ``np.float32 [B, H, W]`` in [0, 1], or
            ``[B, L, H, W]`` with ``per_layer``.
        """
        return to_numpy(
            self.compute(
                input_tensor,
                targets,
                aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth,
                per_layer=per_layer,
                alpha=alpha,
                comparison_categories=comparison_categories,
                target_idx=target_idx,
            )
        )

    __call__ = forward


class FinerClassTarget:
    """Finer-CAM's target for one class, resolved against the image's own scores when applied:
    the class's score against the classes nearest to it (see :func:`finer_targets`).

    Args:
        category: the class to explain.
        alpha: strength of the comparison.
        comparison_categories: similarity ranks to compare with (default the three nearest).
    """

    def __init__(self, category: int, alpha: float = 1, comparison_categories: Optional[Sequence[int]] = None) -> None:
        self.category = _check_index("category", category)
        self.alpha = _check_alpha(alpha)
        self.comparison_categories = comparison_categories

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        scores = logits_of(model_output)
        row = scores.reshape(1, -1)
        target = finer_targets(row, self.alpha, self.comparison_categories, self.category)[0]
        return target(scores)

    def __repr__(self) -> str:
        return f"FinerClassTarget({self.category}, alpha={self.alpha})"
