r"""Sobel "CAM": the edge map of the image, a model-free baseline for saliency metrics.

It looks only at the image: the mean of the absolute horizontal and vertical
Sobel derivatives of its grey levels,

.. math::
    S = \tfrac12\,\mathrm{sat}_{8}\big(|\partial_x I|\big) + \tfrac12\,\mathrm{sat}_{8}\big(|\partial_y I|\big)

(3 x 3 Sobel kernels, each magnitude rounded and saturated to [0, 255] before
the average, as ``cv2.convertScaleAbs`` and ``cv2.addWeighted`` do). Use it to
check that a CAM beats "highlight the edges" on a metric.
"""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np

__all__ = ["sobel_cam"]

_DTYPES = (np.uint8, np.uint16, np.float32)


def sobel_cam(img: np.ndarray) -> np.ndarray:
    """Edge magnitude of an RGB image.

    Args:
        img: ``[H, W, 3]`` RGB (or ``[H, W, 4]`` RGBA) image, ``uint8`` (0..255),
            ``uint16`` or ``float32``; ``float64`` is converted to ``float32``.

    Returns:
        ``np.uint8 [H, W]``: ``(|dI/dx| + |dI/dy|) / 2`` of the grey image,
        each term saturated to 0..255. A float image is not rescaled: for one
        in [0, 1] the values are tiny (pass ``np.uint8(255 * img)`` instead).

    Raises:
        TypeError: ``img`` is not a numpy array of a supported dtype.
        ValueError: ``img`` is not ``[H, W, 3]`` or ``[H, W, 4]``.

    Example:
        >>> import numpy as np
        >>> from camlib.sobel_cam import sobel_cam
        >>> img = np.zeros((5, 6, 3), np.uint8)
        >>> img[:, 3:] = 200
        >>> sobel_cam(img)[2]
        array([  0,   0, 128, 128,   0,   0], dtype=uint8)
    """
    image = _check_image(img)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grad_x = cv2.convertScaleAbs(cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3))
    grad_y = cv2.convertScaleAbs(cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3))
    return cv2.addWeighted(grad_x, 0.5, grad_y, 0.5, 0)


def _check_image(img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        hint = ""
        if type(img).__module__.startswith("torch"):
            hint = "; convert a [C, H, W] tensor with img.permute(1, 2, 0).cpu().numpy()"
        raise TypeError(f"sobel_cam expects an [H, W, 3] RGB numpy image, got {type(img).__name__}{hint}")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        hint = (
            " (a [C, H, W] array? use img.transpose(1, 2, 0))"
            if img.ndim == 3 and img.shape[0] in (3, 4)
            else ""
        )
        raise ValueError(
            f"sobel_cam expects an [H, W, 3] RGB (or [H, W, 4] RGBA) image, got shape {img.shape}{hint}"
        )
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    if img.dtype not in _DTYPES:
        raise TypeError(
            f"sobel_cam supports uint8, uint16 and float32 images, got {img.dtype}; convert it, "
            "e.g. img.astype(np.uint8) for 0..255 values"
        )
    if img.dtype == np.float32 and img.size and float(np.abs(img).max()) <= 1.0:
        warnings.warn(
            "sobel_cam got a float image with values in [0, 1]; its edge magnitudes are saturated to 0..255 "
            "without rescaling, so they are almost all 0 or 1. Pass np.uint8(255 * img) for a usable map.",
            stacklevel=3,
        )
    return img
