"""Gaussian noise for the smoothing methods (Smooth Grad-CAM++, SS-CAM).

Both methods average over ``num_samples`` noisy copies of a tensor (the input,
or each channel's mask), drawing ``N(0, std^2)`` noise from the default
random generator of the tensor's device, so ``torch.manual_seed`` makes a call
reproducible (and equal to torchcam's draws for the same seed).

Example:
    >>> import torch
    >>> from camlib.utils.noise import add_gaussian_noise, check_noise_settings
    >>> check_noise_settings(4, 0.3)
    (4, 0.3)
    >>> add_gaussian_noise(torch.zeros(2, 3), 0.0)
    tensor([[0., 0., 0.],
            [0., 0., 0.]])
"""

from __future__ import annotations

from typing import Any, Tuple

import torch

__all__ = ["add_gaussian_noise", "check_noise_settings"]


def check_noise_settings(num_samples: Any, std: Any) -> Tuple[int, float]:
    """Check a smoothing method's ``num_samples`` (a positive integer) and ``std``
    (a non-negative number); return them as ``(int, float)``.

    Raises:
        ValueError: for anything else, saying what was received.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(std, (int, float)) or isinstance(std, bool) or std < 0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")
    return num_samples, float(std)


def add_gaussian_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """``x + std * N(0, 1)``: one draw per element from the default generator of
    ``x``'s device, in ``x``'s dtype (a new tensor; ``x`` is not changed)."""
    return x + std * torch.randn(x.shape, device=x.device, dtype=x.dtype)
