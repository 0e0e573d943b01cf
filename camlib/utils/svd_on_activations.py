"""Principal-component projections of activations (Eigen-CAM, eigen_smooth, KPCA-CAM).

All functions work on a whole batch at once, in torch, on the tensor's device.
They accept numpy arrays too (and then return numpy), like pytorch-grad-cam's.
Activations of any floating-point dtype are accepted: the decomposition runs in
float32 (float64 for the kernel matrix), with ``torch.autocast`` switched off,
so ``float16``/``bfloat16`` activations work (pytorch-grad-cam's numpy SVD
rejects float16) and the result is always float32.

The sign of a principal component is arbitrary; pytorch-grad-cam returns
whatever LAPACK gives. Here the sign is fixed so that the entry of largest
magnitude is positive (the salient region comes out positive, and the same
input always gives the same map).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "fix_sign",
    "get_2d_projection",
    "get_2d_projection_kernel",
    "get_2d_projection_with_sign_correction",
]

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

_KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def _as_tensor(batch: ArrayOrTensor) -> tuple[torch.Tensor, bool]:
    if isinstance(batch, torch.Tensor):
        return batch, False
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(batch)), True
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(batch).__name__}")


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off (an enclosing ``torch.autocast`` would run the matmuls in half precision)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _positions_by_channels(batch: torch.Tensor) -> torch.Tensor:
    """[B, C, *S] -> [B, N, C] with N = prod(S), NaN set to 0, centred per channel."""
    if batch.ndim < 3:
        raise ValueError(f"expected activations of shape [B, C, *spatial], got {tuple(batch.shape)}")
    x = torch.nan_to_num(batch.float(), nan=0.0, posinf=0.0, neginf=0.0)
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)
    peak = x.abs().amax(dim=(1, 2), keepdim=True)
    if bool((peak > 1e18).any()):  # the SVD fails on huge values; the projection only changes by a positive factor
        x = x / torch.where(peak > 1e18, peak, torch.ones_like(peak))
    return x - x.mean(dim=1, keepdim=True)


def fix_sign(projection: torch.Tensor) -> torch.Tensor:
    """Flip each row of ``projection`` ([B, N]) so its largest-magnitude entry is positive."""
    idx = projection.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(projection.gather(1, idx))
    return projection * torch.where(sign == 0, torch.ones_like(sign), sign)


def get_2d_projection(activation_batch: ArrayOrTensor) -> ArrayOrTensor:
    """Project every position's channel vector on the first principal component.

    For each image, the activations are arranged as a matrix ``X`` of
    ``positions x channels``, centred per channel, and projected on the first
    right singular vector: ``X v_1``.

    Args:
        activation_batch: ``[B, C, *S]`` activations.

    Returns:
        float32 ``[B, *S]`` projections, sign fixed (see module docstring).
    """
    batch, to_numpy = _as_tensor(activation_batch)
    x = _positions_by_channels(batch)
    if x.shape[1] == 1 or x.shape[2] == 0:
        projection = torch.zeros(x.shape[:2], device=x.device)
    else:
        with _full_precision(x.device):
            _, _, vh = torch.linalg.svd(x, full_matrices=False)
            projection = fix_sign((x @ vh[:, 0, :, None])[..., 0])
    projection = projection.reshape(batch.shape[0], *batch.shape[2:])
    return projection.numpy() if to_numpy else projection


def get_2d_projection_with_sign_correction(activation_batch: ArrayOrTensor) -> ArrayOrTensor:
    """First-principal-component projection with the salient side positive.

    Seg-Eigen-CAM's sign correction (flip when ``|min| > |max|``) is the rule
    :func:`get_2d_projection` always applies, so this is the same function.
    """
    return get_2d_projection(activation_batch)


def _kernel_matrix(x: torch.Tensor, kernel: str, gamma: Optional[float], degree: int, coef0: float):
    gamma = 1.0 / x.shape[-1] if gamma is None else gamma
    gram = x @ x.transpose(1, 2)
    if kernel == "linear":
        return gram
    if kernel == "poly":
        return (gamma * gram + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(gamma * gram + coef0)
    if kernel == "rbf":
        sq = gram.diagonal(dim1=1, dim2=2)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0)
        return torch.exp(-gamma * dist)
    if kernel == "cosine":
        norms = x.norm(dim=-1).clamp_min(1e-12)
        return gram / (norms[:, :, None] * norms[:, None, :])
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(_KERNELS)}")


def get_2d_projection_kernel(
    activation_batch: ArrayOrTensor,
    kernel: str = "sigmoid",
    gamma: Optional[float] = None,
    degree: int = 3,
    coef0: float = 1.0,
) -> ArrayOrTensor:
    """Project every position on the first kernel principal component (KPCA-CAM).

    Same result as scikit-learn's ``KernelPCA(n_components=1, kernel=...,
    gamma=...).fit_transform`` on the centred ``positions x channels`` matrix,
    computed for the whole batch in torch: the kernel matrix ``K`` is
    double-centred and the projection is ``sqrt(lambda_1) u_1``.

    Args:
        activation_batch: ``[B, C, *S]`` activations.
        kernel: one of ``linear``, ``poly``, ``rbf``, ``sigmoid``, ``cosine``.
        gamma: kernel coefficient; default ``1 / C``.
        degree: degree of the ``poly`` kernel.
        coef0: independent term of the ``poly`` and ``sigmoid`` kernels.

    Returns:
        float32 ``[B, *S]`` projections, sign fixed.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(_KERNELS)}")
    batch, to_numpy = _as_tensor(activation_batch)
    x = _positions_by_channels(batch).double()
    with _full_precision(x.device):
        k = _kernel_matrix(x, kernel, gamma, degree, coef0)
        k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
        k = (k + k.transpose(1, 2)) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(k)
    top = eigenvectors[..., -1] * eigenvalues[..., -1:].clamp_min(0).sqrt()
    projection = fix_sign(top).float().reshape(batch.shape[0], *batch.shape[2:])
    return projection.numpy() if to_numpy else projection
