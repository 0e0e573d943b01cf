"""ROAD: RemOve And Debias, with noisy linear imputation.

Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022. https://arxiv.org/abs/2202.00449

Removing pixels by setting them to a constant leaks the removed shape to the
model. ROAD instead fills each removed pixel with the weighted mean of its
neighbours (a sparse linear system over the removed pixels, solved jointly)
plus a little Gaussian noise, then measures the change of the target's score.

The imputation solves, for every removed pixel :math:`p`,

.. math::
    \\Big(\\sum_{o:\\,p+o\\in\\Omega} w_o\\Big)\\, x_p
    - \\sum_{o:\\,p+o\\ \\mathrm{removed}} w_o\\, x_{p+o}
    = \\sum_{o:\\,p+o\\ \\mathrm{kept}} w_o\\, I_{p+o},

with offsets :math:`o` and weights :math:`w_o` from ``weighting`` and
:math:`\\Omega` the image. For symmetric weightings the matrix is a principal
submatrix of a weighted graph Laplacian (symmetric positive definite when some
pixel is kept). On an accelerator it is solved matrix-free, in double
precision on the image's device, for every image and channel of a chunk at
once, by conjugate gradients with a multigrid preconditioner (other weightings
use BiCGSTAB). On the CPU the systems of a chunk are factorised together by
SciPy's sparse LU, several times faster there; ``solver=`` chooses. See
:mod:`camlib.metrics._imputation`. Both agree with pytorch-grad-cam's
``spsolve`` to about 1e-6.

The noise is drawn per image, in the same order and with the same calls as
pytorch-grad-cam, from torch's global CPU generator unless a ``generator`` is
given, so after ``torch.manual_seed(s)`` both libraries add the same noise.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple

import numpy as np
import torch

from camlib.metrics._imputation import SOLVERS, linear_infill
from camlib.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    check_batch_size,
    check_percentiles,
    stacked_scores,
    to_numpy,
)

__all__ = [
    "NoisyLinearImputer",
    "ROADAverage",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "neighbors_weights",
]

Weighting = Sequence[Tuple[Tuple[int, int], float]]

#: The default weighting: ``((dy, dx), weight)`` for the 8 neighbours, 1/6 for
#: the 4 direct ones and 1/12 for the diagonal ones (they sum to 1).
neighbors_weights: Tuple[Tuple[Tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def _check_weighting(weighting: Any) -> Tuple[Tuple[Tuple[int, int], float], ...]:
    if isinstance(weighting, (str, bytes)) or not isinstance(weighting, Sequence) or len(weighting) == 0:
        raise TypeError(
            "weighting must be a non-empty list of ((dy, dx), weight) pairs, e.g. "
            f"[((0, 1), 0.25), ((0, -1), 0.25), ((1, 0), 0.25), ((-1, 0), 0.25)]; got {weighting!r:.80}"
        )
    checked = []
    for item in weighting:
        try:
            (dy, dx), weight = item
        except (TypeError, ValueError):
            raise TypeError(f"each weighting entry must be ((dy, dx), weight), got {item!r}") from None
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (dy, dx)):
            raise TypeError(f"weighting offsets must be integer pairs (dy, dx), got {(dy, dx)!r}")
        if (dy, dx) == (0, 0):
            raise ValueError("weighting contains the offset (0, 0); list only the neighbours of a pixel")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ValueError(
                f"weighting weights must be positive finite numbers, got {weight!r} for {(dy, dx)}"
            )
        checked.append(((int(dy), int(dx)), float(weight)))
    offsets = [offset for offset, _ in checked]
    if len(set(offsets)) != len(offsets):
        raise ValueError(f"weighting lists an offset twice: {offsets}; give each neighbour one weight")
    return tuple(checked)


class NoisyLinearImputer:
    """Fill removed pixels with the weighted mean of their neighbours, plus noise.

    Args:
        noise: standard deviation of the Gaussian noise added to the imputed
            pixels (0 for none).
        weighting: ``((dy, dx), weight)`` pairs: which neighbours a removed pixel
            is averaged from, and how much each counts (default
            :data:`neighbors_weights`). Weights must be positive; offsets are
            integer pixel steps (``dy`` down, ``dx`` right).
        generator: torch generator for the noise; None draws it from torch's
            global CPU generator (as pytorch-grad-cam does, so
            ``torch.manual_seed`` makes both draw the same noise).
        solver: how the linear system is solved: ``"auto"`` (SciPy's sparse
            LU for CPU images and symmetric weightings, else iterative),
            ``"direct"`` or ``"iterative"`` (torch, on the images' device).

    Calling it with an image ``[C, H, W]`` and a mask ``[H, W]`` (or batches
    ``[N, C, H, W]`` and ``[N, H, W]``; 1 keeps a pixel, 0 removes it) returns
    the imputed image(s), same shape, dtype and device.

    Example:
        >>> import torch
        >>> image = torch.tensor([[[0.0, 9.0, 4.0]]])  # one channel, one row
        >>> mask = torch.tensor([[1.0, 0.0, 1.0]])  # remove the middle pixel
        >>> NoisyLinearImputer(noise=0.0)(image, mask)
        tensor([[[0., 2., 4.]]])
    """

    accepts_batches: ClassVar[bool] = True

    def __init__(
        self,
        noise: float = 0.01,
        weighting: Optional[Weighting] = None,
        *,
        generator: Optional[torch.Generator] = None,
        solver: str = "auto",
    ) -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if (
            isinstance(noise, bool)
            or not isinstance(noise, numbers.Real)
            or not math.isfinite(noise)
            or noise < 0
        ):
            raise ValueError(f"noise must be a non-negative number (a standard deviation), got {noise!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.noise = float(noise)
        self.weighting = _check_weighting(neighbors_weights if weighting is None else weighting)
        self.generator = generator
        self.solver = solver

    def _noise_field(self, missing: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """Noise on the removed pixels, drawn image by image as pytorch-grad-cam does."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        counts = missing.flatten(1).sum(dim=1).tolist()
        # One contiguous [C, count] draw per image, as pytorch-grad-cam's
        # randn_like(res.t()) is, so that the same seed gives the same numbers.
        draws = [
            torch.empty((channels, count), device=device).normal_(generator=self.generator)
            for count in counts
        ]
        values = torch.cat([draw.reshape(-1) for draw in draws]).to(missing.device)
        field = torch.zeros(missing.shape[0], channels, *missing.shape[1:], device=missing.device)
        field.masked_scatter_(missing[:, None].expand_as(field), values)
        return field.to(dtype)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Impute the pixels where ``mask`` is 0 (below 0.5)."""
        if not isinstance(img, torch.Tensor) or not isinstance(mask, torch.Tensor):
            raise TypeError(
                f"img and mask must be torch tensors, got {type(img).__name__} and {type(mask).__name__}"
            )
        if not img.is_floating_point():
            raise TypeError(f"img must be a floating-point tensor, got {img.dtype}")
        single = img.ndim == 3
        images, masks = (img[None], mask[None]) if single else (img, mask)
        if images.ndim != 4 or tuple(masks.shape) != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                "NoisyLinearImputer expects an image [C, H, W] with a mask [H, W], or a batch "
                f"[N, C, H, W] with masks [N, H, W]; got img {list(img.shape)} and mask {list(mask.shape)}"
            )
        missing = masks.to(images.device).float() < 0.5
        if images.numel() > 0 and bool(missing.flatten(1).all(dim=1).any()):
            warnings.warn(
                "NoisyLinearImputer: every pixel of an image is removed (e.g. its map ties at the threshold "
                "everywhere), so there is nothing to interpolate from; those pixels are set to 0 plus noise",
                RuntimeWarning,
                stacklevel=2,
            )
        out = linear_infill(images, missing, self.weighting, self.solver)
        if self.noise > 0:
            out = out + self.noise * self._noise_field(missing, images.shape[1], images.dtype)
        return out[0] if single else out

    def __repr__(self) -> str:
        solver = "" if self.solver == "auto" else f", solver={self.solver!r}"
        return f"{type(self).__name__}(noise={self.noise}{solver})"


def _imputer_or_default(imputer: Optional[Callable]) -> Callable:
    if imputer is None:
        return NoisyLinearImputer()
    if not callable(imputer):
        raise TypeError(f"imputer must be a callable (image, mask) -> image, got {type(imputer).__name__}")
    return imputer


class ROADMostRelevantFirst(PerturbationConfidenceMetric):
    """ROAD, most relevant first (MoRF): impute the pixels at or above the map's percentile.

    ``percentile=80`` replaces the 20% most relevant pixels. The score change
    should be strongly negative for a faithful map; lower is better.

    Args:
        percentile: in [0, 100], or ``'auto'`` for Otsu's threshold.
        imputer: fills the removed pixels; default ``NoisyLinearImputer()``.
        batch_size: perturbed images per forward pass (and per batched solve).
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).

    Returns (when called): ``np.float32 [B]`` score changes.
    """

    def __init__(
        self,
        percentile: Any = 80,
        *,
        imputer: Optional[Callable] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        perturbation = RemoveMostRelevantFirst(percentile, _imputer_or_default(imputer))
        super().__init__(perturbation, batch_size=batch_size, progress=progress)


class ROADLeastRelevantFirst(PerturbationConfidenceMetric):
    """ROAD, least relevant first (LeRF): impute the least relevant pixels.

    ``percentile=20`` keeps the 20% most relevant pixels and replaces the
    rest. The score change should stay close to 0 for a faithful map; higher
    is better.

    Args:
        percentile: in [0, 100], or ``'auto'`` for Otsu's threshold.
        imputer: fills the removed pixels; default ``NoisyLinearImputer()``.
        batch_size: perturbed images per forward pass (and per batched solve).
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).
    """

    def __init__(
        self,
        percentile: Any = 20,
        *,
        imputer: Optional[Callable] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        perturbation = RemoveLeastRelevantFirst(percentile, _imputer_or_default(imputer))
        super().__init__(perturbation, batch_size=batch_size, progress=progress)


class ROADAverage(AveragerAcrossThresholds):
    """A ROAD metric (:attr:`percentile_metric`) averaged over percentiles (default
    10, ..., 90): the base of :class:`ROADMostRelevantFirstAverage` and
    :class:`ROADLeastRelevantFirstAverage`.

    Args:
        percentiles: the percentiles to average over.
        imputer: shared by every percentile; default a fresh
            ``NoisyLinearImputer()`` per percentile.
        batch_size: perturbed images per forward pass.
        progress: show a progress bar.
    """

    #: The metric of one percentile, built as ``percentile_metric(percentile,
    #: imputer=, batch_size=, progress=)``.
    percentile_metric: ClassVar[Callable[..., PerturbationConfidenceMetric]]

    def __init__(
        self,
        percentiles: Optional[Sequence[float]] = None,
        *,
        imputer: Optional[Callable] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        factory = functools.partial(
            type(self).percentile_metric, imputer=imputer, batch_size=batch_size, progress=progress
        )
        super().__init__(factory, percentiles, batch_size=batch_size, progress=progress)


class ROADMostRelevantFirstAverage(ROADAverage):
    """:class:`ROADMostRelevantFirst` averaged over percentiles (default 10, ..., 90);
    the arguments are :class:`ROADAverage`'s."""

    percentile_metric = ROADMostRelevantFirst


class ROADLeastRelevantFirstAverage(ROADAverage):
    """:class:`ROADLeastRelevantFirst` averaged over percentiles (default 10, ..., 90);
    the arguments are :class:`ROADAverage`'s."""

    percentile_metric = ROADLeastRelevantFirst


class ROADCombined:
    """ROAD combined: ``(LeRF - MoRF) / 2``, each averaged over the percentiles.

    Higher is better: a faithful map keeps the score when its least relevant
    pixels are replaced and loses it when its most relevant ones are.

    Args:
        percentiles: the percentiles to average over (default 10, ..., 90).
        imputer: shared by every percentile; default a fresh
            ``NoisyLinearImputer()`` per percentile.
        batch_size: perturbed images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).

    All ``2 x len(percentiles) x B`` perturbed images (LeRF first, as
    pytorch-grad-cam orders its noise draws) go through one chunked loop.

    Example:
        >>> import torch
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        >>> cams = torch.rand(2, 8, 8)
        >>> ROADCombined(percentiles=[20, 80], progress=False)(
        ...     torch.randn(2, 1, 8, 8), cams, [ClassifierOutputTarget(0)] * 2, model
        ... ).shape
        (2,)
    """

    def __init__(
        self,
        percentiles: Optional[Sequence[float]] = None,
        *,
        imputer: Optional[Callable] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        self.percentiles = list(check_percentiles(percentiles))
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress
        options = dict(imputer=imputer, batch_size=batch_size, progress=progress)
        self.morf_averager = ROADMostRelevantFirstAverage(self.percentiles, **options)
        self.lerf_averager = ROADLeastRelevantFirstAverage(self.percentiles, **options)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: Any,
        targets: List[Callable],
        model: torch.nn.Module,
    ) -> np.ndarray:
        """``(LeRF - MoRF) / 2`` per image: ``np.float32 [B]``."""
        lerf = self.lerf_averager.metrics()
        morf = self.morf_averager.metrics()
        scores = stacked_scores(
            lerf + morf,
            input_tensor,
            cams,
            targets,
            model,
            self.batch_size,
            self.progress,
            type(self).__name__,
        )
        return to_numpy((scores[: len(lerf)].mean(dim=0) - scores[len(lerf) :].mean(dim=0)) / 2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(percentiles={self.percentiles})"
