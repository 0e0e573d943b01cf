"""Reading images for ``camlib explain`` in DataLoader workers.

:class:`ImageDataset` decodes and resizes one image the way
``usage_examples/cam.py`` does (:func:`camlib.models.load_image`, then
:func:`camlib.utils.image.preprocess_image`); an image that cannot be read
does not raise, which would stop the DataLoader, but comes back as a failed
item carrying its error. :func:`collate` stacks the readable images of a
batch and keeps the failed ones aside.

Example:
    >>> import os, tempfile, numpy as np, cv2
    >>> folder = tempfile.mkdtemp()
    >>> good, bad = os.path.join(folder, "good.png"), os.path.join(folder, "bad.png")
    >>> _ = cv2.imwrite(good, np.zeros((20, 30, 3), np.uint8))
    >>> _ = open(bad, "wb").write(b"not an image")
    >>> dataset = ImageDataset([good, bad], (16, 16), (0.5,) * 3, (0.25,) * 3)
    >>> batch = collate([dataset[0], dataset[1]])
    >>> tuple(batch.x.shape), batch.positions, batch.images[0].orig_size, len(batch.failed)
    ((1, 3, 16, 16), [0], (20, 30), 1)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from camlib.models import load_image, resize_image
from camlib.utils.image import preprocess_image

__all__ = ["DecodedBatch", "DecodedImage", "ImageDataset", "collate", "source_stat", "worker_init"]


def source_stat(path: str) -> Optional[Dict[str, int]]:
    """``{"bytes": size, "mtime_ns": modification time}`` of a file, or None if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return {"bytes": int(info.st_size), "mtime_ns": int(info.st_mtime_ns)}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * np.float32(255)), 0, 255).astype(np.uint8)


@dataclass
class DecodedImage:
    """One image as a DataLoader worker read it.

    Attributes:
        position: Position in the run's input list.
        x: The normalised model input, float32 ``[3, H, W]`` (None if it could not be read).
        rgb: The image as uint8 RGB for overlays (at the input size, or its own size), or None.
        orig_size: ``(h, w)`` of the image file, or None.
        source: :func:`source_stat` of the file.
        decode_s: Seconds spent reading it.
        error: A one-line message if it could not be read, else None.
    """

    position: int
    x: Optional[torch.Tensor] = None
    rgb: Optional[np.ndarray] = None
    orig_size: Optional[Tuple[int, int]] = None
    source: Optional[Dict[str, int]] = None
    decode_s: float = 0.0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """Whether the image could be read."""
        return self.error is None


@dataclass
class DecodedBatch:
    """A batch from :func:`collate`: the readable images stacked, the failed ones aside.

    Attributes:
        x: ``[n, 3, H, W]`` of the readable images (None if there are none).
        images: The readable images, aligned with ``x``.
        failed: The images that could not be read.
    """

    x: Optional[torch.Tensor]
    images: List[DecodedImage]
    failed: List[DecodedImage]

    @property
    def positions(self) -> List[int]:
        """Positions of the readable images."""
        return [image.position for image in self.images]


class ImageDataset(Dataset):
    """Images by position in the run's input list, decoded, resized and normalised.

    Args:
        paths: The image files, in input order.
        image_size: ``(height, width)`` of the model input.
        mean: Per-channel (RGB) mean.
        std: Per-channel (RGB) standard deviation.
        keep_rgb: Also return the image (uint8 RGB) for overlays.
        original_size: Return that image at its original size rather than at
            ``image_size`` (outputs at the original size).

    Each item is a :class:`DecodedImage`; an image that cannot be read comes
    back with its error instead of raising (which would stop the DataLoader).
    """

    def __init__(
        self,
        paths: Sequence[str],
        image_size: Tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        keep_rgb: bool = False,
        original_size: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.keep_rgb = keep_rgb
        self.original_size = original_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> DecodedImage:
        start = time.perf_counter()
        path = self.paths[position]
        item = DecodedImage(position=position, source=source_stat(path))
        try:
            full = load_image(path)
            item.orig_size = (int(full.shape[0]), int(full.shape[1]))
            rgb = resize_image(full, self.image_size)
            item.x = preprocess_image(rgb, mean=self.mean, std=self.std)[0].contiguous()
            if self.keep_rgb:
                item.rgb = _to_uint8(full if self.original_size else rgb)
        except Exception as err:  # reported in the manifest; one bad file must not stop the run
            item = DecodedImage(position=position, source=item.source, error=_one_line(err))
        item.decode_s = time.perf_counter() - start
        return item


def collate(items: List[DecodedImage]) -> DecodedBatch:
    """Stack the readable images of a batch; keep the failed ones aside."""
    good = [item for item in items if item.ok]
    return DecodedBatch(
        x=torch.stack([item.x for item in good]) if good else None,
        images=good,
        failed=[item for item in items if not item.ok],
    )


def worker_init(_worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV thread per worker (the workers already run in parallel).

    With the ``fork`` start method the parent must have stopped OpenCV's thread
    pool before the workers were forked (``cv2.setNumThreads(1)``, as
    ``camlib explain`` does): a forked copy of a pool with threads hangs.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
