"""Confidence change when the image is multiplied by its CAM.

The input (after normalisation) is multiplied pixel-wise by the map, which
keeps the regions the map marks and darkens the rest. A faithful map should
keep the target's score: :class:`DropInConfidence` is the "Average Drop" and
:class:`IncreaseInConfidence` the "Increase in Confidence" of Grad-CAM++
(Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
Convolutional Networks", WACV 2018, https://arxiv.org/abs/1710.11063), before
averaging over a data set (and without Grad-CAM++'s division by the original
score). For the paper's definitions, in percent and on probabilities, use
:class:`~camlib.metrics.confidence.AverageDrop` and
:class:`~camlib.metrics.confidence.ConfidenceIncrease`.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

from camlib.metrics.perturbation_confidence import PerturbationConfidenceMetric

__all__ = [
    "CamMultImageConfidenceChange",
    "DropInConfidence",
    "IncreaseInConfidence",
    "multiply_tensor_with_cam",
]


def multiply_tensor_with_cam(input_tensor: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """``input_tensor * cam`` with the map broadcast over the channels.

    Works on one image (``[C, H, W]`` times ``[H, W]``) or a batch
    (``[N, C, *S]`` times ``[N, *S]``), on any device.
    """
    cam = torch.as_tensor(cam, device=input_tensor.device)
    batched = cam.ndim == input_tensor.ndim - 1 and not (input_tensor.ndim == 3 and cam.ndim == 2)
    if batched:
        cam = cam.unsqueeze(1)
    return input_tensor * cam


multiply_tensor_with_cam.accepts_batches = True  # type: ignore[attr-defined]


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """Score change when the input is multiplied by its map.

    ``t(model(x * cam)) - t(model(x))`` per image, ``np.float32 [B]``.

    Args:
        batch_size: perturbed images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> cams = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # keep the top row only
        >>> CamMultImageConfidenceChange(progress=False)(torch.ones(1, 1, 2, 2), cams, [ClassifierOutputTarget(0)], model)
        array([-7.], dtype=float32)
    """

    def __init__(self, *, batch_size: int = 32, progress: Optional[bool] = None) -> None:
        super().__init__(multiply_tensor_with_cam, batch_size=batch_size, progress=progress)


def _map_scores(result: Any, transform) -> Union[np.ndarray, tuple]:
    if isinstance(result, tuple):
        return (transform(result[0]), *result[1:])
    return transform(result)


class DropInConfidence(CamMultImageConfidenceChange):
    """How much the score drops when the input is multiplied by its map.

    ``max(0, t(model(x)) - t(model(x * cam)))`` per image, ``np.float32 [B]``:
    0 when the score does not drop. Lower is better.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Union[np.ndarray, tuple]:
        return _map_scores(super().__call__(*args, **kwargs), lambda scores: np.maximum(-scores, 0))


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """Whether the score rises when the input is multiplied by its map.

    ``1.0`` where ``t(model(x * cam)) > t(model(x))``, else ``0.0``,
    ``np.float32 [B]``. Its mean over a data set is the "Increase in
    Confidence"; higher is better.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Union[np.ndarray, tuple]:
        return _map_scores(super().__call__(*args, **kwargs), lambda scores: np.float32(scores > 0))
