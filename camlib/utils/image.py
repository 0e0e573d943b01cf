"""Image helpers: normalising and resizing CAMs, and drawing them over images.

The scaling helpers accept either numpy arrays (returning numpy, as
pytorch-grad-cam does) or torch tensors (returning tensors on the same device),
so the CAM pipeline can stay on the model's device until its very end.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from camlib.utils._display import (
    create_labels_legend,
    deprocess_image,
    preprocess_image,
    show_cam_on_image,
    show_factorization_on_image,
)

__all__ = [
    "create_labels_legend",
    "deprocess_image",
    "preprocess_image",
    "scale_accross_batch_and_channels",
    "scale_across_batch_and_channels",
    "scale_cam_image",
    "show_cam_on_image",
    "show_factorization_on_image",
]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

_EPS = 1e-7


def _minmax_resize(cam: torch.Tensor, target_size: Optional[Sequence[int]]) -> torch.Tensor:
    """Min-max normalise each map of ``cam`` ([N, *S]) to [0, 1], then resize it.

    ``target_size`` follows OpenCV's order: (width, height) for 2-D maps and
    (width, height, depth) for 3-D maps, i.e. the spatial sizes reversed.
    """
    n = cam.shape[0]
    spatial_ndim = cam.ndim - 1
    view = (n,) + (1,) * spatial_ndim
    if n == 0 or cam[0].numel() == 0:
        raise ValueError(f"cannot scale empty CAMs of shape {tuple(cam.shape)}")
    cam = cam - cam.reshape(n, -1).amin(dim=1).view(view)
    cam = cam / (_EPS + cam.reshape(n, -1).amax(dim=1).view(view))
    if target_size is None:
        return cam
    size = tuple(int(s) for s in reversed(tuple(target_size)))
    if len(size) != spatial_ndim:
        raise ValueError(
            f"target_size {tuple(target_size)} has {len(size)} dimensions but the CAMs "
            f"have {spatial_ndim} spatial dimensions (shape {tuple(cam.shape)})"
        )
    if size == tuple(cam.shape[1:]):
        return cam
    if spatial_ndim == 2:
        mode = "bilinear"
    elif spatial_ndim == 3:
        mode = "trilinear"
    elif spatial_ndim == 1:
        mode = "linear"
    else:
        raise ValueError(f"cannot resize CAMs with {spatial_ndim} spatial dimensions")
    return F.interpolate(cam[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def scale_cam_image(cam: ArrayOrTensor, target_size: Optional[Sequence[int]] = None) -> ArrayOrTensor:
    """Scale every map of a batch to [0, 1] and optionally resize it.

    Each map is shifted by its minimum and divided by its maximum (plus 1e-7),
    then resized with (bi/tri)linear interpolation, half-pixel centres (the same
    sampling as ``cv2.resize(..., INTER_LINEAR)``).

    Args:
        cam: maps of shape ``[N, H, W]`` or ``[N, D, H, W]``, numpy or torch.
        target_size: ``(width, height)`` or ``(width, height, depth)``, or None
            to keep the size.

    Returns:
        float32 maps of shape ``[N, *reversed(target_size)]``: a numpy array if
        ``cam`` was one, else a tensor on ``cam``'s device.
    """
    if isinstance(cam, torch.Tensor):
        return _minmax_resize(cam.float(), target_size)
    if isinstance(cam, (list, tuple)):
        cam = np.stack([np.asarray(c) for c in cam])
    if not isinstance(cam, np.ndarray):
        raise TypeError(f"scale_cam_image expects a numpy array or a torch tensor, got {type(cam).__name__}")
    result = _minmax_resize(torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32)), target_size)
    return result.numpy()


def scale_accross_batch_and_channels(tensor: ArrayOrTensor, target_size: Sequence[int]) -> ArrayOrTensor:
    """Scale each ``[b, c]`` map of a ``[B, C, *S]`` batch to [0, 1] and resize it.

    The name keeps pytorch-grad-cam's spelling; :func:`scale_across_batch_and_channels`
    is the same function.

    Returns:
        maps of shape ``[B, C, *reversed(target_size)]``, numpy or torch like the input.
    """
    batch_size, channels = tensor.shape[:2]
    flat = tensor.reshape(batch_size * channels, *tensor.shape[2:])
    scaled = scale_cam_image(flat, target_size)
    return scaled.reshape(batch_size, channels, *scaled.shape[1:])


scale_across_batch_and_channels = scale_accross_batch_and_channels
