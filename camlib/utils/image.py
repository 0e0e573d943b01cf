"""Image helpers: normalising and resizing CAMs, and drawing them over images.

The scaling helpers accept either numpy arrays (returning numpy, as
pytorch-grad-cam does) or torch tensors (returning tensors on the same device),
so the CAM pipeline can stay on the model's device until its very end.
"""

from __future__ import annotations

import numbers
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
    "at_least_float32",
    "create_labels_legend",
    "deprocess_image",
    "gaussian_blur",
    "linear_resize_matrix",
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


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 (and integer) tensors as float32; float32 and float64 as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


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
        return _minmax_resize(at_least_float32(cam), target_size)
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


def _border_indices(size: int, pad: int, border: str, device: torch.device) -> torch.Tensor:
    """Indices ``-pad .. size + pad - 1`` mapped into ``[0, size)``: edges repeated
    (``"replicate"``) or mirrored without repeating the edge (``"reflect"``, OpenCV's
    default ``BORDER_REFLECT_101``)."""
    index = torch.arange(-pad, size + pad, device=device)
    if border == "replicate" or size == 1:
        return index.clamp(0, size - 1)
    period = 2 * (size - 1)
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def gaussian_blur(
    x: torch.Tensor, sigma: float, kernel_size: int, *, dims: Optional[Sequence[int]] = None, border: str = "replicate"
) -> torch.Tensor:
    """Separable Gaussian blur over some dimensions of a tensor, on its device.

    Args:
        x: a tensor, e.g. images ``[B, C, *S]`` or maps ``[B, H, W]``.
        sigma: standard deviation in pixels.
        kernel_size: odd number of taps; the kernel is normalised to sum to 1.
        dims: the dimensions blurred (default: every dimension after the first two).
        border: ``"replicate"`` (repeat the edge pixels) or ``"reflect"``
            (mirror without repeating the edge, as ``cv2.GaussianBlur``).

    Returns:
        The blurred tensor, same shape, dtype and device.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 1, 5)
        >>> x[..., 2] = 1.0
        >>> gaussian_blur(x, sigma=1.0, kernel_size=3).squeeze()
        tensor([0.0000, 0.2741, 0.4519, 0.2741, 0.0000])
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a centred kernel), got {kernel_size}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    if border not in ("replicate", "reflect"):
        raise ValueError(f"border must be 'replicate' or 'reflect', got {border!r}")
    half = int(kernel_size) // 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - half
    kernel = torch.exp(-(offsets**2) / (2.0 * float(sigma) ** 2))
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    out = x
    for dim in range(2, x.ndim) if dims is None else dims:
        moved = out.movedim(dim, -1)
        padded = moved[..., _border_indices(moved.shape[-1], half, border, x.device)]
        out = (padded.unfold(-1, int(kernel_size), 1) @ kernel).movedim(-1, dim)
    return out


def linear_resize_matrix(in_size: int, out_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``[out, in]`` matrix of 1-D linear resizing with half-pixel centres.

    Row ``i`` samples the input at ``(i + 0.5) * in / out - 0.5`` (clamped at the
    borders), the sampling of ``cv2.resize(..., INTER_LINEAR)`` and of
    ``F.interpolate(..., mode="bilinear", align_corners=False)``; ``M @ x`` resizes
    the last-but-one dimension of ``x``, ``x @ M.T`` the last.
    """
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    low = src.floor().long().clamp_max(in_size - 1)
    high = (low + 1).clamp_max(in_size - 1)
    frac = src - low
    rows = torch.arange(out_size)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((rows, low), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.float().to(device)
