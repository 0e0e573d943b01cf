r"""Deletion and insertion: the area under the score curve as pixels go or come in map order.

Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421

The pixels of each image are ranked by the map, highest first (ties in raster
order: the stable sort of the flattened map). With :math:`P` pixels and a step
of :math:`s` pixels there are :math:`T = \lceil P / s \rceil + 1` points
:math:`k_t = \min(t s, P)`, :math:`t = 0, \dots, T - 1`, at the fractions
:math:`f_t = k_t / P` from 0 to 1.

* **Deletion**: image :math:`t` is the input with its :math:`k_t` top-ranked
  pixels replaced by a *substrate* (all channels of a pixel at once; by default
  zeros, RISE's choice). A faithful map makes the score fall fast: lower is
  better.
* **Insertion**: image :math:`t` is the substrate (by default the input blurred
  by an 11-tap Gaussian of :math:`\sigma = 5`, RISE's choice) with the input's
  :math:`k_t` top-ranked pixels put back. A faithful map makes the score rise
  fast: higher is better.

With :math:`p_t` the target's score on image :math:`t` (a probability:
``score_fn="softmax"``, or ``"sigmoid"`` for a multi-label model), the metric
is the area under the curve by the trapezoidal rule over the fractions,

.. math::
    \mathrm{AUC} = \sum_{t=1}^{T-1} \frac{(f_t - f_{t-1})\,(p_{t-1} + p_t)}{2},

in [0, 1] for probabilities. torchcam's ``DeletionInsertionMetric`` uses the
same steps (``step_size = ceil(P / steps)``), order and rule.

All :math:`B \times T` perturbed images of a batch are built on the model's
device, chunk by chunk, and scored in one loop (with a progress bar).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, ClassVar, List, NamedTuple, Optional, Union

import numpy as np
import torch

from camlib.metrics._scoring import ScoreFn, resolve_score_fn, scoring_model
from camlib.metrics.perturbation_confidence import check_batch_size, check_metric_inputs, to_numpy
from camlib.utils import image
from camlib.utils.batched import batched_target_scores
from camlib.utils.model_state import eval_mode

__all__ = ["CurveResult", "Deletion", "Insertion", "PixelOrderCurve", "blur_substrate", "gaussian_blur", "pixel_ranks"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]
Substrate = Union[str, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]

#: RISE's blur for the insertion substrate: an 11-tap Gaussian of standard deviation 5.
RISE_BLUR_KERNEL_SIZE = 11
RISE_BLUR_SIGMA = 5.0
#: Steps of a curve when neither ``steps`` nor ``step_size`` is given.
DEFAULT_STEPS = 100


class CurveResult(NamedTuple):
    """What :class:`Deletion` and :class:`Insertion` return with ``return_curves=True``.

    Attributes:
        auc: ``np.float32 [B]``, the area under each image's curve.
        scores: ``np.float32 [B, T]``, the target's score at each step.
        fractions: ``np.float32 [T]``, the fraction of pixels deleted (or
            inserted) at each step, from 0 to 1.
    """

    auc: np.ndarray
    scores: np.ndarray
    fractions: np.ndarray


def gaussian_blur(
    x: torch.Tensor, sigma: float = RISE_BLUR_SIGMA, kernel_size: int = RISE_BLUR_KERNEL_SIZE
) -> torch.Tensor:
    """RISE's blur substrate: :func:`camlib.utils.image.gaussian_blur` of ``[B, C, *S]`` images
    over every spatial dimension, edges repeated, with RISE's defaults (sigma 5, 11 taps)."""
    return image.gaussian_blur(x, sigma, kernel_size)


def blur_substrate(
    sigma: float = RISE_BLUR_SIGMA, kernel_size: int = RISE_BLUR_KERNEL_SIZE
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A substrate function: the input blurred by :func:`gaussian_blur` with these settings."""
    gaussian_blur(torch.zeros(1, 1, 1), sigma, kernel_size)  # check the arguments now

    def blur(x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, sigma, kernel_size)

    blur.__qualname__ = f"blur_substrate(sigma={sigma}, kernel_size={kernel_size})"
    return blur


def pixel_ranks(cams: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel of each ``[B, *S]`` map, 0 for the highest: ``[B, prod(S)]`` int64.

    Ties are ranked in raster order (a stable sort), so the order is deterministic.

    Example:
        >>> import torch
        >>> pixel_ranks(torch.tensor([[[0.2, 0.9], [0.2, 0.5]]]))
        tensor([[2, 0, 3, 1]])
    """
    flat = cams.reshape(cams.shape[0], -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _check_substrate(substrate: Any) -> Substrate:
    if isinstance(substrate, str):
        if substrate not in ("zeros", "blur", "mean"):
            raise ValueError(
                f"substrate must be 'zeros', 'blur', 'mean', a number, a tensor or a callable, got {substrate!r}"
            )
        return substrate
    if isinstance(substrate, bool):
        raise TypeError("substrate must be 'zeros', 'blur', 'mean', a number, a tensor or a callable, got a bool")
    if isinstance(substrate, (numbers.Real, torch.Tensor)) or callable(substrate):
        return substrate
    raise TypeError(
        f"substrate must be 'zeros', 'blur', 'mean', a number, a tensor or a callable, got {type(substrate).__name__}"
    )


def _make_substrate(substrate: Substrate, x: torch.Tensor) -> torch.Tensor:
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(x)
        if substrate == "blur":
            return gaussian_blur(x)
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x)
    if isinstance(substrate, numbers.Real):
        return torch.full_like(x, float(substrate))
    if isinstance(substrate, torch.Tensor):
        value = substrate
    else:
        value = substrate(x)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"the substrate function returned {type(value).__name__}, not a tensor")
    try:
        return torch.broadcast_to(value.detach().to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(
            f"the substrate has shape {list(value.shape)}, which does not broadcast to the input's "
            f"{list(x.shape)}; give one image [C, *S], a batch [B, C, *S] or a scalar"
        ) from None


def _check_steps(steps: Any, step_size: Any) -> tuple[Optional[int], Optional[int]]:
    if steps is not None and step_size is not None:
        raise ValueError("give steps or step_size, not both")
    for name, value in (("steps", steps), ("step_size", step_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps is None and step_size is None:
        steps = DEFAULT_STEPS
    return steps, step_size


class PixelOrderCurve:
    """The area under the score curve as the map's top pixels go or come: the
    base of :class:`Deletion` and :class:`Insertion`, which set :attr:`deletes`
    and :attr:`default_substrate`.

    Args:
        steps: number of steps; each deletes (inserts) ``ceil(P / steps)``
            pixels of the ``P`` (default 100 when ``step_size`` is not given).
        step_size: pixels deleted (inserted) per step instead (RISE deletes one
            image row's worth, e.g. 224 at 224 x 224). Give ``steps`` or
            ``step_size``.
        substrate: what a deleted pixel becomes, or what the pixels are
            inserted into: ``"zeros"`` (0 in the model's input space, i.e. the
            mean colour for normalised inputs), ``"blur"`` (RISE's 11-tap
            Gaussian of sigma 5, :func:`gaussian_blur` of the input), ``"mean"``
            (each image's mean per channel), a number, a tensor that
            broadcasts to the batch, or a function ``input -> substrate``;
            None: :attr:`default_substrate`.
        score_fn: turns the model's output into scores: ``"softmax"`` (default),
            ``"sigmoid"`` (multi-label models), None (raw output) or a callable.
        batch_size: perturbed images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS`` is set).

    Called as ``metric(input_tensor, cams, targets, model, return_curves=False)``.

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
        >>> _ = torch.nn.init.ones_(model[1].weight)  # score = sum of the pixels
        >>> x = torch.tensor([[[[4.0, 3.0, 2.0, 1.0]]]])
        >>> targets = [ClassifierOutputTarget(0)]
        >>> deletion = Deletion(steps=4, score_fn=None, progress=False)
        >>> result = deletion(x, x[:, 0], targets, model, return_curves=True)
        >>> result.scores, result.auc  # 10, 6, 3, 1, 0 at 0, 1/4, ..., 1
        (array([[10.,  6.,  3.,  1.,  0.]], dtype=float32), array([3.75], dtype=float32))
        >>> insertion = Insertion(steps=4, substrate="zeros", score_fn=None, progress=False)
        >>> insertion(x, x[:, 0], targets, model)  # 0, 4, 7, 9, 10
        array([6.25], dtype=float32)
    """

    #: True: replace the top pixels by the substrate; False: put them back on it.
    deletes: ClassVar[bool] = True
    default_substrate: ClassVar[str] = "zeros"

    def __init__(
        self,
        steps: Optional[int] = None,
        *,
        step_size: Optional[int] = None,
        substrate: Optional[Substrate] = None,
        score_fn: ScoreFn = "softmax",
        batch_size: int = 64,
        progress: Optional[bool] = None,
    ) -> None:
        self.steps, self.step_size = _check_steps(steps, step_size)
        self.substrate = _check_substrate(self.default_substrate if substrate is None else substrate)
        resolve_score_fn(score_fn)
        self.score_fn = score_fn
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def counts(self, num_pixels: int) -> List[int]:
        """How many pixels are deleted (inserted) at each point of the curve."""
        step = self.step_size if self.step_size is not None else math.ceil(num_pixels / self.steps)
        return [*range(0, num_pixels, step), num_pixels]

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: ArrayOrTensor,
        targets: List[Callable],
        model: torch.nn.Module,
        return_curves: bool = False,
    ) -> Union[np.ndarray, CurveResult]:
        """Area under the curve per image.

        Args:
            input_tensor: ``[B, C, *S]`` batch, as given to the model.
            cams: ``[B, *S]`` maps (numpy or torch); only their order matters.
            targets: one callable per image, applied to ``score_fn(model(x))``.
            model: the classifier (run in eval mode, restored afterwards).
            return_curves: also return the curves (a :class:`CurveResult`).

        Returns:
            ``np.float32 [B]`` areas, or a :class:`CurveResult`.
        """
        x, cam_tensor, targets, device = check_metric_inputs(input_tensor, cams, targets, model)
        batch = x.shape[0]
        spatial = tuple(x.shape[2:])
        substrate = _make_substrate(self.substrate, x)
        ranks = pixel_ranks(cam_tensor)
        counts = self.counts(ranks.shape[1])
        points = len(counts)
        count_tensor = torch.tensor(counts, device=device)

        def make_inputs(start: int, stop: int) -> torch.Tensor:
            index = torch.arange(start, stop, device=device)
            image, point = index // points, index % points
            top = (ranks[image] < count_tensor[point][:, None]).view(-1, 1, *spatial)
            if self.deletes:
                return torch.where(top, substrate[image], x[image])
            return torch.where(top, x[image], substrate[image])

        def targets_for(start: int, stop: int) -> list:
            return [targets[index // points] for index in range(start, stop)]

        scored = scoring_model(model, resolve_score_fn(self.score_fn))
        with eval_mode(model):
            scores = batched_target_scores(
                scored, batch * points, make_inputs, targets_for, self.batch_size, self.progress, type(self).__name__
            ).reshape(batch, points)
        fractions = count_tensor.to(scores.device, torch.float64) / ranks.shape[1]
        auc = torch.trapezoid(scores.double(), fractions, dim=1)
        if return_curves:
            return CurveResult(to_numpy(auc), to_numpy(scores), to_numpy(fractions))
        return to_numpy(auc)

    def __repr__(self) -> str:
        size = f"step_size={self.step_size}" if self.step_size is not None else f"steps={self.steps}"
        return f"{type(self).__name__}({size}, substrate={self.substrate!r}, score_fn={self.score_fn!r})"


class Deletion(PixelOrderCurve):
    r"""Deletion AUC (RISE): the score as the map's top pixels are replaced, most relevant first.

    See :mod:`camlib.metrics.deletion_insertion` for the exact definition. In
    [0, 1] for probabilities; lower is better. The arguments and an example
    are :class:`PixelOrderCurve`'s; the substrate is ``"zeros"`` by default
    (RISE's choice for deletion).
    """

    deletes = True
    default_substrate = "zeros"


class Insertion(PixelOrderCurve):
    r"""Insertion AUC (RISE): the score as the map's top pixels are put back on a substrate.

    See :mod:`camlib.metrics.deletion_insertion` for the exact definition. In
    [0, 1] for probabilities; higher is better. The arguments and an example
    are :class:`PixelOrderCurve`'s; the substrate is ``"blur"`` by default
    (RISE's choice for insertion).
    """

    deletes = False
    default_substrate = "blur"

