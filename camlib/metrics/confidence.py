r"""Average Drop and Increase in Confidence, as Grad-CAM++ defines them.

Chattopadhyay, Sarkar, Howlader and Balasubramanian, "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks", WACV 2018.
https://arxiv.org/abs/1710.11063

The input is multiplied by its explanation map (pixel-wise, broadcast over the
channels), which keeps what the map marks and dims the rest. With
:math:`Y_i^c` the score of class :math:`c` for image :math:`i` and
:math:`O_i^c` its score for the explanation-masked image,

.. math::
    \mathrm{Average\ Drop} = \frac{100}{N} \sum_{i=1}^{N}
        \frac{\max(0,\, Y_i^c - O_i^c)}{Y_i^c},
    \qquad
    \mathrm{Increase\ in\ Confidence} = \frac{100}{N} \sum_{i=1}^{N}
        \mathbb{1}\big[O_i^c > Y_i^c\big].

A faithful map keeps the evidence for the class: lower Average Drop and higher
Increase in Confidence are better. Both are percentages. The scores are
probabilities (``score_fn="softmax"``, or ``"sigmoid"`` for a multi-label
model), as the ratio needs non-negative scores on a fixed scale.

The metrics here return one value per image (``np.float32 [B]``); their mean
over a data set is the number the paper reports. torchcam's
``ClassificationMetric`` computes the same quantities (as fractions, not
percentages, and with ``1e-7`` added to :math:`Y`).

The reference's :class:`~camlib.metrics.cam_mult_image.DropInConfidence` and
:class:`~camlib.metrics.cam_mult_image.IncreaseInConfidence` are the raw
differences on the target's output, without the division by :math:`Y` or
the percentage; they are kept as they are for compatibility.

Note that the multiplication happens on the model's input: with normalised
inputs, a pixel multiplied by 0 becomes the normalisation's mean colour.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch

from camlib.metrics._scoring import ScoreFn, check_unit_maps, resolve_score_fn, scoring_model
from camlib.metrics.perturbation_confidence import check_batch_size, check_metric_inputs, to_numpy
from camlib.utils.batched import batched_target_scores
from camlib.utils.model_state import eval_mode

__all__ = ["AverageDrop", "ConfidenceIncrease", "explanation_map_scores"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def explanation_map_scores(
    input_tensor: torch.Tensor,
    cams: ArrayOrTensor,
    targets: List[Callable],
    model: torch.nn.Module,
    *,
    score_fn: ScoreFn = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
    desc: str = "explanation map",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The target's score on each image and on the image times its map.

    Args:
        input_tensor: ``[B, C, *S]`` batch, as given to the model.
        cams: ``[B, *S]`` maps in [0, 1].
        targets: one callable per image, applied to ``score_fn(model(x))``.
        model: the classifier (run in eval mode, restored afterwards).
        score_fn: ``"softmax"``, ``"sigmoid"``, None (raw output) or a callable.
        batch_size: images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).
        desc: the progress bar's label.

    Returns:
        ``(Y, O)``: float32 ``[B]`` tensors on the model's device.
    """
    x, cam_tensor, targets, _ = check_metric_inputs(input_tensor, cams, targets, model)
    cam_tensor = check_unit_maps(cam_tensor)
    batch_size = check_batch_size(batch_size)
    scored = scoring_model(model, resolve_score_fn(score_fn))
    batch = x.shape[0]
    spatial = (1,) * (x.ndim - 2)

    def make_inputs(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=x.device)
        image = index % batch
        weights = torch.where((index >= batch).view(-1, *spatial), cam_tensor[image], torch.ones_like(cam_tensor[image]))
        return x[image] * weights.unsqueeze(1)

    def targets_for(start: int, stop: int) -> list:
        return [targets[index % batch] for index in range(start, stop)]

    with eval_mode(model):
        scores = batched_target_scores(scored, 2 * batch, make_inputs, targets_for, batch_size, progress, desc)
    return scores[:batch], scores[batch:]


class _ExplanationMapMetric:
    def __init__(self, *, score_fn: ScoreFn = "softmax", batch_size: int = 32, progress: Optional[bool] = None) -> None:
        resolve_score_fn(score_fn)  # check early
        self.score_fn = score_fn
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def _scores(self, input_tensor, cams, targets, model) -> Tuple[torch.Tensor, torch.Tensor]:
        return explanation_map_scores(
            input_tensor,
            cams,
            targets,
            model,
            score_fn=self.score_fn,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=type(self).__name__,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score_fn={self.score_fn!r})"


class AverageDrop(_ExplanationMapMetric):
    r"""Average Drop (%) of Grad-CAM++: how much of the class score the map loses.

    Per image, :math:`100 \cdot \max(0, Y^c - O^c) / Y^c`, where :math:`Y^c`
    is the target's score on the image and :math:`O^c` on the image times its
    map (see :mod:`camlib.metrics.confidence`); the mean over a data set is the
    paper's Average Drop. In [0, 100]; lower is better. An image whose score
    :math:`Y^c` is 0 cannot drop and counts 0.

    Args:
        score_fn: turns the model's output into scores: ``"softmax"`` (default),
            ``"sigmoid"`` (multi-label models), None (raw output; the target
            must then give non-negative scores) or a callable.
        batch_size: images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).

    Called as ``metric(input_tensor, cams, targets, model)`` with maps in
    [0, 1]; returns ``np.float32 [B]``.

    Raises:
        ValueError: when a score :math:`Y^c` is negative (e.g. a raw logit):
            pick a ``score_fn`` that gives probabilities.

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> cams = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # keeps 1 + 2 of the score 10
        >>> AverageDrop(score_fn=None, progress=False)(torch.ones(1, 1, 2, 2), cams, [ClassifierOutputTarget(0)], model)
        array([70.], dtype=float32)
    """

    def __call__(
        self, input_tensor: torch.Tensor, cams: ArrayOrTensor, targets: List[Callable], model: torch.nn.Module
    ) -> np.ndarray:
        """Drop in percent per image: ``np.float32 [B]``."""
        original, masked = self._scores(input_tensor, cams, targets, model)
        negative = torch.nonzero(original < 0).flatten().tolist()
        if negative:
            raise ValueError(
                f"Average Drop divides by the target's score, which must be non-negative (a probability); "
                f"image(s) {negative[:5]} scored {original[negative[:5]].tolist()}. Use score_fn='softmax' "
                "(or 'sigmoid' for a multi-label model) with ClassifierOutputTarget, or a target that "
                "returns probabilities"
            )
        positive = original > 0
        ratio = torch.relu(original - masked) / torch.where(positive, original, torch.ones_like(original))
        return to_numpy(torch.where(positive, 100.0 * ratio, torch.zeros_like(ratio)))


class ConfidenceIncrease(_ExplanationMapMetric):
    r"""Increase in Confidence (%) of Grad-CAM++: does the map alone raise the score?

    Per image, :math:`100 \cdot \mathbb{1}[O^c > Y^c]` (0 or 100), where
    :math:`Y^c` is the target's score on the image and :math:`O^c` on the
    image times its map (see :mod:`camlib.metrics.confidence`); the mean over
    a data set is the percentage of images whose score rose, the paper's
    Increase in Confidence. Higher is better.

    Args:
        score_fn: turns the model's output into scores: ``"softmax"`` (default),
            ``"sigmoid"`` (multi-label models), None (raw output) or a callable.
        batch_size: images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).

    Called as ``metric(input_tensor, cams, targets, model)`` with maps in
    [0, 1]; returns ``np.float32 [B]`` of 0 and 100.

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 4.0]]))
        >>> cams = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
        >>> ConfidenceIncrease(score_fn=None, progress=False)(
        ...     torch.ones(2, 1, 2, 2), cams, [ClassifierOutputTarget(0)] * 2, model
        ... )
        array([100.,   0.], dtype=float32)
    """

    def __call__(
        self, input_tensor: torch.Tensor, cams: ArrayOrTensor, targets: List[Callable], model: torch.nn.Module
    ) -> np.ndarray:
        """100 where the score rose, else 0, per image: ``np.float32 [B]``."""
        original, masked = self._scores(input_tensor, cams, targets, model)
        return to_numpy(100.0 * (masked > original).float())
