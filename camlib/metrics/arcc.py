"""ARCC: a composite of ROAD, Coherency and Complexity.

* Complexity and Coherency: Poppi et al., "Revisiting The Evaluation of
  Class Activation Mapping for Explainability: A Novel Metric and
  Experimental Analysis", CVPR Workshops 2021. https://arxiv.org/abs/2104.10252
  (where they form ADCC together with Average Drop).
* ARCC, which replaces Average Drop with ROAD: Domeniconi et al., "How to
  Evaluate and Refine your CAM", 2026. https://arxiv.org/abs/2605.14641

The three scores are combined by their harmonic mean, so a map must do well
on all of them:

.. math::
    \\mathrm{ARCC} = 3 \\Big/ \\Big(\\frac{1}{\\mathrm{Coherency}} + \\frac{1}{1 - \\mathrm{Complexity}}
    + \\frac{1}{\\mathrm{clip}(2\\,\\mathrm{ROAD}, 0, 1)}\\Big)

(each denominator plus ``1e-8``). All three lie in [0, 1]; higher is better.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from camlib.metrics.perturbation_confidence import as_cam_tensor, check_metric_inputs, to_numpy
from camlib.metrics.road import ROADCombined

__all__ = ["ARCC", "Coherency", "Complexity", "batch_pearson_coherency"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

_EPS = 1e-8


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of two ``[N, ...]`` tensors, in double precision."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    count = a.shape[1]
    if count < 2:
        raise ValueError(f"the Pearson correlation needs at least 2 values per map, got {count}")
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    covariance = (a * b).sum(dim=1) / (count - 1)
    std_a = ((a * a).sum(dim=1) / (count - 1)).sqrt()
    std_b = ((b * b).sum(dim=1) / (count - 1)).sqrt()
    return covariance / (std_a * std_b + _EPS)


def batch_pearson_coherency(A: ArrayOrTensor, B: ArrayOrTensor) -> ArrayOrTensor:
    """Pearson correlation between ``A[i]`` and ``B[i]`` for each item of a batch.

    Uses sample standard deviations and adds ``1e-8`` to their product, so a
    constant map gives 0 instead of NaN.

    Args:
        A: ``[N, ...]`` maps (numpy or torch).
        B: ``[N, ...]`` maps with as many values per item as ``A``.

    Returns:
        ``[N]`` correlations in [-1, 1]: numpy (float32, or float64 if an input
        is float64) when both inputs are numpy, else a float tensor on
        ``A``'s device.
    """
    if A.shape[0] != B.shape[0] or int(np.prod(A.shape[1:])) != int(np.prod(B.shape[1:])):
        raise ValueError(
            f"A and B must hold the same number of maps of the same size, got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    if isinstance(A, np.ndarray) and isinstance(B, np.ndarray):
        dtype = np.result_type(A.dtype, B.dtype, np.float32)
        return (
            _pearson(torch.from_numpy(np.asarray(A, np.float64)), torch.from_numpy(np.asarray(B, np.float64)))
            .numpy()
            .astype(dtype)
        )
    a = as_cam_tensor(A, "A")
    b = as_cam_tensor(B, "B").to(a.device)
    return _pearson(a, b).float()


class Complexity:
    """Mean absolute value of each map: 0 for an empty map, 1 for a map of ones.

    Poppi et al. 2021 (https://arxiv.org/abs/2104.10252): a simpler (sparser)
    explanation is better, so lower is better.

    Calling it with ``[B, H, W]`` maps returns ``[B]`` scores (numpy float32 for
    numpy input, a tensor for tensor input).

    Example:
        >>> import numpy as np
        >>> Complexity()(np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32))
        array([0.5], dtype=float32)
    """

    def __call__(self, grayscale_cams: ArrayOrTensor) -> ArrayOrTensor:
        cams = as_cam_tensor(grayscale_cams, "grayscale_cams")
        if cams.ndim < 2 or cams[0].numel() == 0:
            raise ValueError(f"grayscale_cams must be [B, H, W] maps, got shape {list(cams.shape)}")
        scores = cams.reshape(cams.shape[0], -1).abs().mean(dim=1)
        return to_numpy(scores) if isinstance(grayscale_cams, np.ndarray) else scores


class Coherency:
    """How much a map agrees with the map of the image masked by it.

    Poppi et al. 2021 (https://arxiv.org/abs/2104.10252): the input is
    multiplied by its map, the CAM method is run again on that product, and
    the Pearson correlation ``rho`` of the two maps is mapped to
    ``(rho + 1) / 2`` in [0, 1]. Higher is better.

    Called as ``coherency(input_tensor, grayscale_cams, targets, model,
    base_method)``, where ``base_method`` is the CAM that produced the maps
    (``model`` is accepted for pytorch-grad-cam's signature; the CAM has its
    own). Returns ``np.float32 [B]``.
    """

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: ArrayOrTensor,
        targets: Optional[List[Callable]],
        model: torch.nn.Module,
        base_method: Callable,
    ) -> np.ndarray:
        if not callable(base_method):
            raise TypeError(
                f"base_method must be the CAM object that produced the maps (e.g. GradCAM(model, layers)), "
                f"got {type(base_method).__name__}"
            )
        x, cams, _, _ = check_metric_inputs(
            input_tensor, grayscale_cams, targets, model, allow_no_targets=True
        )
        masked = x * cams[:, None]
        masked_cams = as_cam_tensor(base_method(input_tensor=masked, targets=targets), "the CAM's output")
        if masked_cams.shape != cams.shape:
            raise ValueError(
                f"base_method returned maps of shape {list(masked_cams.shape)}, expected {list(cams.shape)}"
            )
        rho = _pearson(masked_cams.to(cams.device), cams)
        return to_numpy((rho + 1) / 2)


class ARCC:
    """ARCC: harmonic mean of Coherency, ``1 - Complexity`` and scaled ROAD.

    Domeniconi et al., "How to Evaluate and Refine your CAM", 2026
    (https://arxiv.org/abs/2605.14641), built on Coherency and Complexity from
    Poppi et al. 2021. ROAD (:class:`~camlib.metrics.road.ROADCombined`, in
    [-0.5, 0.5]) is doubled and clipped to [0, 1]. Higher is better.

    Args:
        base_method: the CAM that produced the maps (re-run by Coherency).
        road_percentiles: the percentiles ROAD averages over.
        imputer: ROAD's imputer (default ``NoisyLinearImputer()``).
        batch_size: perturbed images per forward pass in ROAD.
        progress: show ROAD's progress bar.

    Called as ``arcc(input_tensor, grayscale_cams, targets, model)``; returns
    ``np.float32 [B]``.
    """

    def __init__(
        self,
        base_method: Callable,
        road_percentiles: Optional[Sequence[float]] = (20, 40, 60, 80),
        *,
        imputer: Optional[Callable] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        if not callable(base_method):
            raise TypeError(f"base_method must be a CAM object, got {type(base_method).__name__}")
        self.complexity = Complexity()
        self.coherency = Coherency()
        self.road = ROADCombined(road_percentiles, imputer=imputer, batch_size=batch_size, progress=progress)
        self.base_method = base_method

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: ArrayOrTensor,
        targets: List[Callable],
        model: torch.nn.Module,
    ) -> np.ndarray:
        """ARCC per image: ``np.float32 [B]``."""
        complexity = self.complexity(as_cam_tensor(grayscale_cams)).double().cpu()
        coherency = torch.from_numpy(
            self.coherency(input_tensor, grayscale_cams, targets, model, self.base_method)
        )
        road = torch.from_numpy(self.road(input_tensor, grayscale_cams, targets, model)).double()
        road = (road * 2).clamp(0, 1)
        terms = 1 / (coherency.double() + _EPS) + 1 / ((1 - complexity) + _EPS) + 1 / (road + _EPS)
        return to_numpy(3 / terms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_method={self.base_method!r}, road_percentiles={self.road.percentiles})"
