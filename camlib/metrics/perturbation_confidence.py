"""Confidence-change metrics: perturb the input according to a CAM, re-score.

A metric here answers "how does the model's score for the target change when
the input is perturbed according to the explanation?" The perturbation is a
callable of ``(input_tensor, cam)``; :class:`PerturbationConfidenceMetric` runs
it and the model, and returns ``score(perturbed) - score(original)`` per image.

Everything runs batched on the model's device: the CAM thresholds (percentiles
computed as :func:`numpy.percentile` does, and Otsu's method as OpenCV does),
the masks, the perturbations and the forward passes, which go through the
shared chunked loop :func:`camlib.utils.batched.batched_target_scores`.

Perturbations and imputers that set ``accepts_batches = True`` are called once
per chunk with ``[N, C, *S]`` images and ``[N, *S]`` maps, on the device. Any
other callable is called once per image with ``[C, *S]`` and ``[*S]`` CPU
tensors, exactly as pytorch-grad-cam calls it, so custom perturbations keep
working.

"""

from __future__ import annotations

import numbers
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Union

import numpy as np
import torch

from camlib.utils.batched import batched_target_scores
from camlib.utils.model_state import eval_mode
from camlib.utils.validation import model_device

__all__ = [
    "AveragerAcrossThresholds",
    "PerturbationConfidenceMetric",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
]

#: The percentiles averaged over by default (pytorch-grad-cam's list).
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

#: OpenCV's FLT_EPSILON guard in its Otsu implementation.
_FLT_EPSILON = float(np.finfo(np.float32).eps)

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


# -- input checks -----------------------------------------------------------------


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def as_cam_tensor(cams: Any, name: str = "cams") -> torch.Tensor:
    """Maps as a float32 tensor: a numpy array or tensor, boolean masks as 0/1 (as in
    pytorch-grad-cam's tutorial, ``cams < np.percentile(cams, 75)``), or a list of per-image maps."""
    if isinstance(cams, (list, tuple)) and cams and all(isinstance(c, (np.ndarray, torch.Tensor)) for c in cams):
        return torch.stack([as_cam_tensor(c, name).cpu() for c in cams])
    if isinstance(cams, (np.ndarray, torch.Tensor)) and cams.dtype in (np.bool_, torch.bool):
        cams = cams.astype(np.float32) if isinstance(cams, np.ndarray) else cams.float()
    if isinstance(cams, np.ndarray):
        if not np.issubdtype(cams.dtype, np.number) or np.issubdtype(cams.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {cams.dtype}")
        return torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))
    if isinstance(cams, torch.Tensor):
        if cams.is_complex() or cams.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {cams.dtype}")
        return cams.detach().float()
    raise TypeError(
        f"{name} must be a numpy array or a torch tensor of shape [B, H, W] (what a CAM returns), "
        f"got {type(cams).__name__}"
    )


def check_metric_inputs(
    input_tensor: Any, cams: Any, targets: Any, model: Any, allow_no_targets: bool = False
) -> tuple[torch.Tensor, torch.Tensor, Optional[list], torch.device]:
    """Validate a metric call; return the input and maps on the model's device."""
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(
            f"input_tensor must be a torch.Tensor [B, C, H, W], got {type(input_tensor).__name__}"
        )
    if input_tensor.ndim < 3:
        raise ValueError(
            f"input_tensor must be a batch [B, C, H, W] (or [B, C, *spatial]), got shape {list(input_tensor.shape)}"
        )
    if not input_tensor.is_floating_point():
        raise TypeError(f"input_tensor must be a floating-point tensor, got {input_tensor.dtype}")
    batch = input_tensor.shape[0]
    if batch == 0:
        raise ValueError("input_tensor has an empty batch (shape[0] == 0)")
    cam_tensor = as_cam_tensor(cams)
    expected = (batch, *input_tensor.shape[2:])
    if tuple(cam_tensor.shape) != expected:
        raise ValueError(
            f"cams must have shape [B, *spatial] = {list(expected)} to match input_tensor of shape "
            f"{list(input_tensor.shape)}, got {list(cam_tensor.shape)}; pass the maps a CAM returned for "
            "this batch (one [H, W] map per image)"
        )
    if not callable(model):
        raise TypeError(f"model must be callable (a torch.nn.Module), got {type(model).__name__}")
    if targets is not None or not allow_no_targets:
        targets = _check_targets(targets, batch)
    device = model_device(model, default=input_tensor.device)
    x = input_tensor.detach().to(device)
    cam_tensor = cam_tensor.to(device)
    if not bool(torch.isfinite(cam_tensor).all()):
        raise ValueError("cams contain NaN or Inf values")
    return x, cam_tensor, targets, device


def _check_targets(targets: Any, batch: int) -> list:
    """One callable per image."""
    if targets is None or (callable(targets) and not isinstance(targets, (list, tuple))):
        raise TypeError(
            "targets must be a list with one callable per image, e.g. [ClassifierOutputTarget(c) for c in "
            f"classes], got {type(targets).__name__}"
        )
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of callables (one per image), got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(
            f"got {len(targets)} targets for a batch of {batch} images; pass one target per image"
        )
    for target in targets:
        if not callable(target):
            raise TypeError(
                f"each target must be callable (e.g. ClassifierOutputTarget(3)), got {type(target).__name__}"
            )
    return list(targets)


# -- thresholds -------------------------------------------------------------------


def _percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-row percentile of ``[N, M]`` values, linear interpolation as ``np.percentile``.

    The interpolation weight is computed in double precision and the lerp in
    the values' dtype, the way NumPy does it, so the thresholds (and hence which
    pixels fall below them) agree with NumPy's bit for bit.
    """
    count = values.shape[1]
    ordered = values.sort(dim=1).values
    position = (count - 1) * (float(percentile) / 100.0)
    below = min(int(np.floor(position)), count - 1)
    above = min(below + 1, count - 1)
    gamma = position - below
    lower, upper = ordered[:, below], ordered[:, above]
    diff = upper - lower
    if gamma >= 0.5:
        return upper - diff * (1.0 - gamma)
    return lower + diff * gamma


def _otsu_threshold(levels: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of each row of ``[N, M]`` integer levels in 0..255.

    Maximises the between-class variance over the 256 candidate thresholds
    (``cv2.THRESH_OTSU``'s criterion); a pixel is above the threshold when its
    level is strictly greater. Returns ``[N]`` int64 thresholds.
    """
    n, count = levels.shape
    hist = torch.zeros(n, 256, dtype=torch.float64, device=levels.device)
    hist.scatter_add_(1, levels.long(), torch.ones_like(levels, dtype=torch.float64))
    prob = hist / count
    grey = torch.arange(256, dtype=torch.float64, device=levels.device)
    q1 = prob.cumsum(dim=1)
    first_moment = (prob * grey).cumsum(dim=1)
    q2 = 1.0 - q1
    mu = first_moment[:, -1:]
    valid = (torch.minimum(q1, q2) >= _FLT_EPSILON) & (torch.maximum(q1, q2) <= 1.0 - _FLT_EPSILON)
    mu1 = first_moment / torch.where(valid, q1, torch.ones_like(q1))
    mu2 = (mu - first_moment) / torch.where(valid, q2, torch.ones_like(q2))
    sigma = torch.where(valid, q1 * q2 * (mu1 - mu2) ** 2, torch.zeros_like(q1))
    # The first maximum, and 0 when no split separates anything (a constant map).
    return sigma.argmax(dim=1)


def _keep_mask(cams: torch.Tensor, percentile: Union[float, str]) -> torch.Tensor:
    """``[N, *S]`` float mask: 1 keeps a pixel, 0 marks it for removal (the high values)."""
    flat = cams.reshape(cams.shape[0], -1)
    if percentile == "auto":
        low, high = float(flat.min()), float(flat.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"percentile='auto' thresholds maps scaled to [0, 1] (as CAM methods return them), but the "
                f"values range over [{low:.4g}, {high:.4g}]; rescale them, e.g. with "
                "camlib.utils.image.scale_cam_image"
            )
        levels = (flat * 255).to(torch.uint8)
        keep = levels.long() <= _otsu_threshold(levels)[:, None]
    else:
        keep = flat < _percentile(flat, percentile)[:, None]
    return keep.to(cams.dtype).reshape(cams.shape)


# -- running perturbations ----------------------------------------------------------


def _perturb(perturbation: Callable, images: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """Apply ``perturbation`` to a batch, batched if it accepts batches, else image by image."""
    if getattr(perturbation, "accepts_batches", False):
        out = perturbation(images, cams)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the perturbation {perturbation!r} returned {type(out).__name__}, not a tensor")
    else:
        outs = []
        for image, cam in zip(images, cams):
            # Copies, so a perturbation that writes in place cannot alter the caller's input.
            one = perturbation(image.to("cpu", copy=True), cam.to("cpu", copy=True))
            if not isinstance(one, torch.Tensor):
                raise TypeError(
                    f"the perturbation {perturbation!r} returned {type(one).__name__}; it must return the "
                    "perturbed image as a tensor of the input image's shape"
                )
            outs.append(one.to(images.device))
        out = torch.stack(outs) if outs else images[:0]
    if out.shape != images.shape:
        raise ValueError(
            f"the perturbation {perturbation!r} returned shape {list(out.shape)} for images of shape "
            f"{list(images.shape)}; it must keep the image's shape"
        )
    return out.to(images.dtype)


def _clean_scores(model: Callable, x: torch.Tensor, targets: list, batch_size: int) -> torch.Tensor:
    return batched_target_scores(
        model,
        x.shape[0],
        lambda start, stop: x[start:stop],
        lambda start, stop: targets[start:stop],
        batch_size,
        False,
    )


def _perturbed_scores(
    model: Callable,
    perturbations: Sequence[Callable],
    x: torch.Tensor,
    cams: torch.Tensor,
    targets: list,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
    keep_inputs: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Target scores of every ``(perturbation, image)`` pair: ``[K, B]``.

    The ``K * B`` perturbed inputs are built lazily, chunk by chunk, in order
    (perturbation-major, image-minor), so random perturbations draw their noise
    in the same order as one call per perturbation would.
    """
    batch = x.shape[0]
    kept: list[torch.Tensor] = []

    def make_inputs(start: int, stop: int) -> torch.Tensor:
        pieces = []
        index = start
        while index < stop:
            k, first = divmod(index, batch)
            last = min(batch, first + stop - index)
            pieces.append(_perturb(perturbations[k], x[first:last], cams[first:last]))
            index += last - first
        chunk = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if keep_inputs:
            kept.append(chunk)
        return chunk

    def targets_for(start: int, stop: int) -> list:
        return [targets[index % batch] for index in range(start, stop)]

    scores = batched_target_scores(
        model, len(perturbations) * batch, make_inputs, targets_for, batch_size, progress, desc
    )
    inputs = torch.cat(kept) if keep_inputs else None
    return scores.reshape(len(perturbations), batch), inputs


def to_numpy(scores: torch.Tensor) -> np.ndarray:
    return scores.detach().float().cpu().numpy().astype(np.float32, copy=False)


# -- public classes -------------------------------------------------------------------


class PerturbationConfidenceMetric:
    """Score change of the targets when the input is perturbed according to the CAMs.

    For each image ``x`` with map ``cam`` and target ``t``, the metric is
    ``t(model(perturbation(x, cam))) - t(model(x))`` (or the perturbed score
    alone with ``return_diff=False``).

    Args:
        perturbation: ``(image, cam) -> perturbed image``. With
            ``accepts_batches = True`` it gets ``[N, C, *S]`` images and
            ``[N, *S]`` maps on the model's device; otherwise it is called per
            image with ``[C, *S]`` and ``[*S]`` CPU tensors.
        batch_size: perturbed images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).

    The model runs in eval mode and without gradients during the call; every
    module's ``training`` flag is restored afterwards.

    Example:
        >>> import torch
        >>> from camlib.metrics.cam_mult_image import multiply_tensor_with_cam
        >>> from camlib.utils.model_targets import ClassifierOutputTarget
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.fill_(1.0)
        >>> metric = PerturbationConfidenceMetric(multiply_tensor_with_cam, progress=False)
        >>> metric(torch.ones(1, 1, 2, 2), torch.full((1, 2, 2), 0.25), [ClassifierOutputTarget(0)], model)
        array([-3.], dtype=float32)
    """

    def __init__(
        self, perturbation: Callable, *, batch_size: int = 32, progress: Optional[bool] = None
    ) -> None:
        if not callable(perturbation):
            raise TypeError(
                f"perturbation must be a callable (image, cam) -> perturbed image, got {type(perturbation).__name__}"
            )
        self.perturbation = perturbation
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: ArrayOrTensor,
        targets: List[Callable],
        model: torch.nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> Union[np.ndarray, tuple[np.ndarray, torch.Tensor]]:
        """Score the perturbed batch.

        Args:
            input_tensor: ``[B, C, H, W]`` batch, as given to the model.
            cams: ``[B, H, W]`` maps (numpy or torch), one per image.
            targets: one callable per image, e.g. ``ClassifierOutputTarget``.
            model: the classifier.
            return_visualization: also return the perturbed images.
            return_diff: return the change of the score (default) rather than
                the perturbed score.

        Returns:
            ``np.float32 [B]`` scores, and with ``return_visualization`` the
            perturbed images ``[B, C, H, W]`` on ``input_tensor``'s device.
        """
        x, cam_tensor, targets, _ = check_metric_inputs(input_tensor, cams, targets, model)
        with eval_mode(model):
            scores, perturbed = _perturbed_scores(
                model,
                [self.perturbation],
                x,
                cam_tensor,
                targets,
                self.batch_size,
                self.progress,
                type(self).__name__,
                keep_inputs=return_visualization,
            )
            result = scores[0]
            if return_diff:
                result = result - _clean_scores(model, x, targets, self.batch_size)
        if return_visualization:
            return to_numpy(result), perturbed.to(input_tensor.device)
        return to_numpy(result)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(perturbation={self.perturbation!r})"


def _check_percentile(percentile: Any) -> Union[float, str]:
    if isinstance(percentile, str):
        if percentile != "auto":
            raise ValueError(f"percentile must be a number in [0, 100] or 'auto', got {percentile!r}")
        return percentile
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise TypeError(f"percentile must be a number in [0, 100] or 'auto', got {type(percentile).__name__}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    return percentile


class RemoveMostRelevantFirst:
    """Remove (impute) the pixels where the map is highest, keep the rest.

    With a number ``p``, the pixels whose map value is at or above the map's
    ``p``-th percentile are removed (so ``100 - p`` percent of the image is
    replaced); with ``'auto'``, those above Otsu's threshold of the map scaled
    to 0..255 (the map must lie in [0, 1]). The ``imputer`` then fills them in.

    Args:
        percentile: in [0, 100], or ``'auto'``.
        imputer: ``(image, mask) -> image`` where ``mask`` is 1 on pixels to
            keep and 0 on pixels to replace (e.g. :class:`~camlib.metrics.road.NoisyLinearImputer`).
            With ``accepts_batches = True`` it gets ``[N, C, *S]`` images and
            ``[N, *S]`` masks on the device; otherwise one CPU image at a time.

    Calling it with an image ``[C, *S]`` and a map ``[*S]`` (or batches of
    them) returns the perturbed image(s).

    Both modes remove the most relevant pixels.
    """

    accepts_batches: ClassVar[bool] = True

    def __init__(self, percentile: Union[float, str], imputer: Callable) -> None:
        self.percentile = _check_percentile(percentile)
        if not callable(imputer):
            raise TypeError(
                f"imputer must be a callable (image, mask) -> image, got {type(imputer).__name__}"
            )
        self.imputer = imputer

    def _relevance(self, mask: torch.Tensor) -> torch.Tensor:
        """The values thresholded: high means remove first."""
        return mask

    def __call__(self, input_tensor: torch.Tensor, mask: ArrayOrTensor) -> torch.Tensor:
        """Perturb one image ``[C, H, W]`` with its map ``[H, W]``, or a batch ``[N, C, *S]`` with maps ``[N, *S]``."""
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
        cams = as_cam_tensor(mask, "mask").to(input_tensor.device)
        single = input_tensor.ndim == 3 and cams.ndim == 2
        images, cams = (input_tensor[None], cams[None]) if single else (input_tensor, cams)
        if images.ndim < 3 or tuple(cams.shape) != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"expected an image [C, H, W] with a map [H, W], or a batch [N, C, *S] with maps [N, *S]; "
                f"got input_tensor {list(input_tensor.shape)} and mask {list(cams.shape)}"
            )
        keep = _keep_mask(self._relevance(cams), self.percentile)
        if getattr(self.imputer, "accepts_batches", False):
            out = self.imputer(images, keep)
        else:
            out = torch.stack(
                [
                    self.imputer(image.to("cpu", copy=True), keep_one.cpu()).to(images.device)
                    for image, keep_one in zip(images, keep)
                ]
            )
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(percentile={self.percentile!r}, imputer={self.imputer!r})"


class RemoveLeastRelevantFirst(RemoveMostRelevantFirst):
    """Remove (impute) the pixels where the map is lowest, keep the rest.

    The same as :class:`RemoveMostRelevantFirst` applied to ``1 - map``: with
    a number ``p``, the pixels where ``1 - map`` is at or above its ``p``-th
    percentile are replaced; with ``'auto'``, those where ``1 - map`` is above
    Otsu's threshold.
    """

    def _relevance(self, mask: torch.Tensor) -> torch.Tensor:
        return 1 - mask


def check_percentiles(percentiles: Any) -> tuple:
    if percentiles is None:
        return DEFAULT_PERCENTILES
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Sequence):
        raise TypeError(
            f"percentiles must be a sequence of numbers in [0, 100], got {type(percentiles).__name__}"
        )
    if len(percentiles) == 0:
        raise ValueError("percentiles is empty; pass at least one percentile, e.g. [10, 20, ..., 90]")
    return tuple(_check_percentile(p) for p in percentiles)


class AveragerAcrossThresholds:
    """Mean of a thresholded metric over several percentiles.

    Args:
        imputer: a factory ``percentile -> metric``, e.g.
            :class:`~camlib.metrics.road.ROADMostRelevantFirst`; each metric is
            called as ``metric(input_tensor, cams, targets, model)``.
        percentiles: the percentiles to average over (default 10, 20, ..., 90).
        batch_size: perturbed images per forward pass.
        progress: show a progress bar (None: on unless ``CAMLIB_DISABLE_PROGRESS``
            is set).

    When every metric is a :class:`PerturbationConfidenceMetric`, the images
    perturbed at every percentile go through the model in one chunked loop and
    the unperturbed scores are computed once; any other metric is called in
    turn.
    """

    def __init__(
        self,
        imputer: Callable[[Any], Callable],
        percentiles: Optional[Sequence[float]] = None,
        *,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> None:
        if not callable(imputer):
            raise TypeError(f"imputer must be a factory percentile -> metric, got {type(imputer).__name__}")
        self.imputer = imputer
        self.percentiles = list(check_percentiles(percentiles))
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress

    def metrics(self) -> list:
        """The metric of each percentile, built by the factory (``imputer``)."""
        return [self.imputer(percentile) for percentile in self.percentiles]

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: ArrayOrTensor,
        targets: List[Callable],
        model: torch.nn.Module,
    ) -> np.ndarray:
        """Mean score change over the percentiles: ``np.float32 [B]``."""
        scores = stacked_scores(
            self.metrics(),
            input_tensor,
            cams,
            targets,
            model,
            self.batch_size,
            self.progress,
            type(self).__name__,
        )
        return to_numpy(scores.mean(dim=0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(imputer={self.imputer!r}, percentiles={self.percentiles})"


def stacked_scores(
    metrics: Sequence[Callable],
    input_tensor: torch.Tensor,
    cams: ArrayOrTensor,
    targets: List[Callable],
    model: torch.nn.Module,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
) -> torch.Tensor:
    """Score changes of each metric, ``[K, B]`` float32 on the model's device.

    Metrics that are :class:`PerturbationConfidenceMetric` instances whose
    ``__call__`` is not overridden (no post-processing of the scores) share
    one chunked loop over all their perturbed images and one pass over the
    unperturbed images; any other metric is called in turn.
    """
    x, cam_tensor, targets, device = check_metric_inputs(input_tensor, cams, targets, model)
    fusable = all(
        isinstance(m, PerturbationConfidenceMetric)
        and type(m).__call__ is PerturbationConfidenceMetric.__call__
        for m in metrics
    )
    if not fusable:
        rows = [
            torch.as_tensor(np.asarray(m(input_tensor, cams, targets, model)), dtype=torch.float32)
            for m in metrics
        ]
        return torch.stack(rows).to(device)
    with eval_mode(model):
        perturbed, _ = _perturbed_scores(
            model, [m.perturbation for m in metrics], x, cam_tensor, targets, batch_size, progress, desc
        )
        clean = _clean_scores(model, x, targets, batch_size)
    return perturbed - clean[None]
