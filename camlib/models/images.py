"""Images for models: reading, resizing, the preprocessing a model expects, captioned grids.

Example:
    >>> import numpy as np
    >>> resize_image(np.zeros((8, 6, 3), np.float32), (4, 3)).shape
    (4, 3, 3)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from torch import nn

from camlib.models.builders import TIMM_PREFIX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "default_preprocessing",
    "image_grid",
    "load_image",
    "resize_image",
]

#: ImageNet per-channel mean (RGB), used by torchvision's pretrained classifiers.
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation (RGB).
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a model expects its input images.

    Attributes:
        image_size: ``(height, width)`` the image is resized to.
        mean: Per-channel (RGB) mean subtracted after scaling to [0, 1].
        std: Per-channel (RGB) standard deviation divided by.
    """

    image_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def default_preprocessing(name: str, model: Optional[nn.Module] = None) -> Preprocessing:
    """The image size and normalisation a model expects.

    Args:
        name: The model name given to :func:`build_model`.
        model: The model itself; used for timm models, whose pretrained
            configuration records their input size and normalisation.

    Returns:
        For ``"demo"``: 128x128 and :data:`camlib.demo.DEMO_MEAN`/``DEMO_STD``;
        for torchvision models: 224x224 (299x299 for Inception v3) and the
        ImageNet mean and std.

    Example:
        >>> default_preprocessing("resnet50").image_size
        (224, 224)
        >>> default_preprocessing("demo").image_size
        (128, 128)
    """
    if name == "demo":
        from camlib.demo import DEMO_MEAN, DEMO_STD

        return Preprocessing((128, 128), tuple(DEMO_MEAN), tuple(DEMO_STD))
    if name.startswith(TIMM_PREFIX) and model is not None:
        config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = config.get("input_size", (3, 224, 224))
        return Preprocessing(
            (int(size[-2]), int(size[-1])),
            tuple(config.get("mean", IMAGENET_MEAN)),
            tuple(config.get("std", IMAGENET_STD)),
        )
    side = 299 if name == "inception_v3" else 224
    return Preprocessing((side, side), IMAGENET_MEAN, IMAGENET_STD)


def _size_pair(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        pair = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)
    ):
        pair = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}")
    if min(pair) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return pair


def resize_image(rgb: np.ndarray, image_size: Union[int, Sequence[int], None]) -> np.ndarray:
    """Resize an ``[H, W, 3]`` image to ``image_size`` (an int for a square, or ``(height, width)``)."""
    if image_size is None:
        return rgb
    height, width = _size_pair(image_size)
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = height * width < rgb.shape[0] * rgb.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def load_image(
    path: Union[str, os.PathLike], image_size: Union[int, Sequence[int], None] = None
) -> np.ndarray:
    """Read an image file as RGB float32 in [0, 1], optionally resized.

    Read with OpenCV (grey images become three equal channels, an alpha
    channel is dropped, 16-bit images keep their precision), converted from
    BGR to RGB and scaled by the integer type's maximum. A float image (TIFF,
    EXR, ...) is taken as it is when its values lie in [0, 1], and divided by
    255 when they go above 1 (but not above 255).

    Args:
        path: The image file (PNG, JPEG, TIFF, BMP, ...).
        image_size: None to keep the size, an int for a square, or ``(height, width)``.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1].

    Raises:
        FileNotFoundError: If the file does not exist (or is a directory).
        ValueError: If it is empty, not a regular file (a FIFO, a device), OpenCV
            cannot decode it, or it is a float image with NaN, infinite,
            negative or above-255 values.

    Example:
        >>> import os, tempfile, numpy as np, cv2
        >>> path = os.path.join(tempfile.mkdtemp(), "red.png")
        >>> _ = cv2.imwrite(path, np.full((8, 6, 3), (0, 0, 255), np.uint8))  # BGR red
        >>> img = load_image(path, image_size=4)
        >>> img.shape, img.dtype, img[0, 0].tolist()
        ((4, 4, 3), dtype('float32'), [1.0, 0.0, 0.0])
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    _check_regular_file(path)
    data = np.fromfile(str(path), dtype=np.uint8)  # works with non-ASCII paths, unlike cv2.imread
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None:
        raise ValueError(
            f"{str(path)!r} is not an image OpenCV can read (expected PNG, JPEG, TIFF, BMP, ...)"
        )
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if np.issubdtype(rgb.dtype, np.integer):
        rgb = rgb.astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)
    else:
        rgb = _scale_float_image(rgb.astype(np.float32), path)
    return np.ascontiguousarray(resize_image(rgb, image_size), dtype=np.float32)


def _check_regular_file(path: Path) -> None:
    """Raise a clear error for a missing, empty or special file (a FIFO is never opened: it would block)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except OSError as err:
        raise ValueError(f"image {str(path)!r} cannot be read ({err.strerror or err})") from err
    if stat.S_ISDIR(info.st_mode):
        raise FileNotFoundError(f"image {str(path)!r} is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = "FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode) else "device"
        raise ValueError(f"image {str(path)!r} is a {kind}, not a regular file; pass image files")
    if info.st_size == 0:
        raise ValueError(f"image {str(path)!r} is empty (0 bytes)")


def _scale_float_image(rgb: np.ndarray, path: Path) -> np.ndarray:
    """A float image (TIFF, EXR, ...) in [0, 1]: kept; in [0, 255] (max above 1): divided by 255;
    anything else (NaN, infinities, negative values, values above 255) is refused."""
    if not np.isfinite(rgb).all():
        raise ValueError(f"{str(path)!r} holds NaN or infinite pixel values; fix or remove the image")
    low, high = float(rgb.min()), float(rgb.max())
    if low < -1e-3 or high > 255.0:
        raise ValueError(
            f"{str(path)!r} is a float image with values from {low:g} to {high:g}; camlib reads float images "
            "in [0, 1] or [0, 255]: rescale it (or save it as 8- or 16-bit)"
        )
    if high > 1.0:
        rgb = rgb / np.float32(255)
    return np.clip(rgb, 0.0, 1.0)


def image_grid(
    panels: Sequence[Sequence[np.ndarray]],
    *,
    row_labels: Optional[Sequence[str]] = None,
    column_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Lay uint8 images out in a grid, with optional captions.

    Column captions (e.g. the layers) go in a strip above the grid, one per
    column; row captions (e.g. the classes) in a strip above each row,
    spanning the grid's width. Text too long for its space is shortened from
    the left.

    Args:
        panels: Rows of ``[H, W, 3]`` uint8 images, all of the same size.
        row_labels: One caption per row, or None.
        column_labels: One caption per column, or None.

    Returns:
        A uint8 image ``columns * W`` wide (black text on white, channel
        order unchanged).

    Raises:
        ValueError: If the grid is empty, ragged, the images differ in size, or
            a caption list has the wrong length.

    Example:
        >>> import numpy as np
        >>> tile = np.zeros((32, 32, 3), np.uint8)
        >>> image_grid([[tile, tile, tile]]).shape
        (32, 96, 3)
    """
    rows = [list(row) for row in panels]
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("panels must be a non-empty list of rows of equal length")
    shape = rows[0][0].shape
    if any(p.ndim != 3 or p.shape != shape or p.dtype != np.uint8 for row in rows for p in row):
        raise ValueError(
            f"every panel must be a uint8 [H, W, 3] image of the same shape, the first is {shape}"
        )
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels has {len(row_labels)} entries for {len(rows)} rows")
    if column_labels is not None and len(column_labels) != len(rows[0]):
        raise ValueError(f"column_labels has {len(column_labels)} entries for {len(rows[0])} columns")
    width = shape[1]
    scale = max(0.3, min(0.6, width / 400))
    parts = []
    if column_labels is not None:
        parts.append(np.concatenate([_caption(label, width, scale) for label in column_labels], axis=1))
    for r, row in enumerate(rows):
        if row_labels is not None:
            parts.append(_caption(row_labels[r], width * len(row), scale))
        parts.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def _caption(text: str, width: int, scale: float) -> np.ndarray:
    """A white strip ``width`` pixels wide with ``text`` in black."""
    height = round(24 * scale / 0.5)
    strip = np.full((height, width, 3), 255, np.uint8)
    text = _fit_text(text, width - 4, scale)
    baseline = height - max(3, height // 4)
    cv2.putText(strip, text, (2, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _fit_text(text: str, width: int, scale: float) -> str:
    """Shorten ``text`` from the left, marking the cut with "..", until it fits ``width`` pixels."""

    def fits(candidate: str) -> bool:
        return cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width

    if fits(text):
        return text
    while len(text) > 1 and not fits(".." + text):
        text = text[1:]
    return ".." + text
