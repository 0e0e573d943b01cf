r"""Localisation against ground truth: the pointing game and its energy-based variant.

These metrics need no model: they compare each map with the region (mask or
box) of the object its target class refers to.

* :class:`PointingGame`: Zhang, Bargal, Lin, Brandt, Shen and Sclaroff,
  "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018.
  https://arxiv.org/abs/1608.00507. A *hit* when the map's maximum lies on the
  object, up to a tolerance of ``tolerance`` pixels (15 in the paper); the
  accuracy is ``hits / (hits + misses)``.
* :class:`EnergyPointingGame`: Wang et al., "Score-CAM: Score-Weighted Visual
  Explanations for Convolutional Neural Networks", CVPR Workshops 2020.
  https://arxiv.org/abs/1910.01279. The share of the map's energy (its sum)
  that falls inside the object's region:

  .. math::
      \mathrm{Proportion} = \frac{\sum_{p \in \mathrm{region}} L_p}{\sum_{p} L_p}.

  The paper uses bounding boxes (:func:`boxes_to_masks`); a pixel-exact mask is
  stricter.

Both take maps ``[B, *S]`` and regions ``[B, *S]`` (numpy or torch; a nonzero
entry marks the region), work on the maps' device, and return one value per
image, ``np.float32 [B]``; the mean over a data set is the reported number.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence, Tuple, Union

import numpy as np
import torch

from camlib.metrics.perturbation_confidence import as_cam_tensor, to_numpy

__all__ = ["EnergyPointingGame", "PointingGame", "boxes_to_masks"]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def boxes_to_masks(boxes: Sequence[Any], size: Tuple[int, int]) -> torch.Tensor:
    """Rasterise boxes into masks, one mask per image (the union of its boxes).

    Args:
        boxes: one entry per image: a box ``(x1, y1, x2, y2)`` or a ``[K, 4]``
            array or tensor of boxes, in pixels. Pixel ``(row y, column x)``
            is inside when ``x1 <= x < x2`` and ``y1 <= y < y2`` after rounding
            the corners to the nearest integers, i.e. ``mask[y1:y2, x1:x2]``;
            corners are clipped to the image.
        size: ``(H, W)`` of the masks.

    Returns:
        bool tensor ``[B, H, W]`` on the CPU.

    Example:
        >>> boxes_to_masks([(1, 0, 3, 2)], (3, 4)).int()
        tensor([[[0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    if isinstance(size, (str, bytes)) or len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    height, width = (int(v) for v in size)
    if isinstance(boxes, (torch.Tensor, np.ndarray)) and boxes.ndim == 2:
        boxes = list(boxes)
    masks = []
    for index, item in enumerate(boxes):
        try:
            corners = np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float64)
        except (TypeError, ValueError):
            corners = np.zeros(0)
        if corners.size == 0 or corners.size % 4 or not np.isfinite(corners).all():
            raise ValueError(f"boxes[{index}] must be (x1, y1, x2, y2) or a [K, 4] array of finite numbers, got {item!r}")
        mask = torch.zeros(height, width, dtype=torch.bool)
        for x1, y1, x2, y2 in np.rint(corners.reshape(-1, 4)).astype(np.int64).tolist():
            if x2 < x1 or y2 < y1:
                raise ValueError(f"boxes[{index}] has x2 < x1 or y2 < y1: {(x1, y1, x2, y2)}; use (x1, y1, x2, y2)")
            mask[max(y1, 0) : max(min(y2, height), 0), max(x1, 0) : max(min(x2, width), 0)] = True
        masks.append(mask)
    if not masks:
        raise ValueError("boxes is empty; give one box (or list of boxes) per image")
    return torch.stack(masks)


def _check_maps_and_regions(cams: Any, masks: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    maps = as_cam_tensor(cams)
    if maps.ndim < 2:
        raise ValueError(f"cams must be a batch of maps [B, *spatial], got shape {list(maps.shape)}")
    if maps.shape[0] == 0 or maps[0].numel() == 0:
        raise ValueError(f"cams is empty: shape {list(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("cams contain NaN or Inf values")
    if isinstance(masks, np.ndarray):
        region = torch.from_numpy(np.ascontiguousarray(masks))
    elif isinstance(masks, torch.Tensor):
        region = masks.detach()
    else:
        raise TypeError(
            f"masks must be a numpy array or a torch tensor [B, *spatial] (e.g. from boxes_to_masks), "
            f"got {type(masks).__name__}"
        )
    if tuple(region.shape) != tuple(maps.shape):
        raise ValueError(
            f"masks must have the maps' shape {list(maps.shape)} (one region per map), got {list(region.shape)}"
        )
    region = (region != 0).to(maps.device)
    empty = torch.nonzero(~region.flatten(1).any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(
            f"the region of image(s) {empty[:10]} is empty; these metrics need the target's object in the image "
            "(leave out the images whose target class is absent)"
        )
    return maps, region


class PointingGame:
    """The pointing game (Zhang et al.): does the map's maximum fall on the object?

    The point is the first maximum of the map in raster order (``argmax`` of
    the flattened map), so the result is deterministic. It is a hit when it
    lies within ``tolerance`` pixels (Euclidean distance) of a region pixel,
    which is the same as lying inside the region dilated by a disc of radius
    ``tolerance``. A constant map points nowhere and counts as a miss.

    Args:
        tolerance: in pixels, >= 0. Zhang et al. use 15 on images of about
            224 pixels; scale it with the image size.

    Called as ``game(cams, masks)``; returns ``np.float32 [B]`` of 1 (hit)
    and 0 (miss). Their mean is the pointing-game accuracy; higher is better.

    Example:
        >>> import torch
        >>> cams = torch.zeros(2, 5, 5)
        >>> cams[0, 1, 1] = cams[1, 4, 4] = 1.0
        >>> masks = torch.zeros(2, 5, 5, dtype=torch.bool)
        >>> masks[:, 0:3, 0:3] = True
        >>> PointingGame(tolerance=0)(cams, masks), PointingGame(tolerance=2.9)(cams, masks)
        (array([1., 0.], dtype=float32), array([1., 1.], dtype=float32))
    """

    def __init__(self, tolerance: float = 15) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
            raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
        self.tolerance = float(tolerance)

    @staticmethod
    def points(cams: ArrayOrTensor) -> np.ndarray:
        """The point of each map: ``int64 [B, ndim]`` coordinates (row, column, ...) of its first maximum."""
        maps = as_cam_tensor(cams)
        flat = maps.reshape(maps.shape[0], -1).argmax(dim=1)
        coords = torch.stack(torch.unravel_index(flat, tuple(maps.shape[1:])), dim=1)
        return coords.cpu().numpy()

    def __call__(self, cams: ArrayOrTensor, masks: ArrayOrTensor) -> np.ndarray:
        """1 for a hit, 0 for a miss, per image: ``np.float32 [B]``."""
        maps, region = _check_maps_and_regions(cams, masks)
        spatial = tuple(maps.shape[1:])
        flat = maps.reshape(maps.shape[0], -1)
        point = torch.stack(torch.unravel_index(flat.argmax(dim=1), spatial), dim=1).to(torch.float64)  # [B, D]
        grid = torch.stack(
            torch.meshgrid(*[torch.arange(n, device=maps.device, dtype=torch.float64) for n in spatial], indexing="ij"),
            dim=-1,
        ).reshape(-1, len(spatial))  # [P, D]
        distance2 = ((grid[None] - point[:, None]) ** 2).sum(dim=-1)  # [B, P]
        near = distance2 <= self.tolerance**2 + 1e-9
        hit = (near & region.reshape(region.shape[0], -1)).any(dim=1)
        constant = flat.amax(dim=1) == flat.amin(dim=1)
        return to_numpy((hit & ~constant).float())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tolerance={self.tolerance:g})"


class EnergyPointingGame:
    """The energy-based pointing game (Score-CAM): the share of the map inside the region.

    Per image, ``sum(map * region) / sum(map)`` in [0, 1]; higher is better.
    A map that is 0 everywhere has no energy to place and scores 0. Maps must
    be non-negative (CAM methods return them in [0, 1]).

    Called as ``game(cams, masks)``; returns ``np.float32 [B]``. Pass
    ``boxes_to_masks(boxes, (H, W))`` as ``masks`` for the paper's
    bounding-box version.

    Example:
        >>> import torch
        >>> cams = torch.tensor([[[0.5, 0.25], [0.25, 0.0]]])
        >>> masks = torch.tensor([[[True, False], [False, False]]])
        >>> EnergyPointingGame()(cams, masks)
        array([0.5], dtype=float32)
    """

    def __call__(self, cams: ArrayOrTensor, masks: ArrayOrTensor) -> np.ndarray:
        """The share of each map's sum inside its region: ``np.float32 [B]``."""
        maps, region = _check_maps_and_regions(cams, masks)
        low = float(maps.min())
        if low < 0:
            raise ValueError(
                f"the energy pointing game needs non-negative maps, got a minimum of {low:.4g}; clip them at 0 "
                "or rescale them to [0, 1] with camlib.utils.image.scale_cam_image"
            )
        flat = maps.reshape(maps.shape[0], -1).double()
        inside = (flat * region.reshape(region.shape[0], -1)).sum(dim=1)
        total = flat.sum(dim=1)
        share = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))
        return to_numpy(share)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
