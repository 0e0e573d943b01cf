"""Ground-truth object regions for the report: a folder of mask images, or a JSON file of boxes.

A mask folder mirrors the images' relative paths: the mask of ``val/a/001.jpg``
is ``MASKS/val/a/001.<any image extension>`` (or, failing that, a file of the
same name anywhere in the folder, if only one). Any non-zero pixel belongs to
the object. A boxes file is JSON, keyed by the images' relative paths (or
absolute paths, or file names)::

    {"val/a/001.jpg": [[x0, y0, x1, y1], ...], ...}
    [{"path": "val/a/001.jpg", "boxes": [[x0, y0, x1, y1]]}, ...]

in pixels of the original image (``x1``, ``y1`` exclusive); a box may also be
``{"bbox": [x0, y0, x1, y1], ...}``. The region is the union of the boxes.

Example:
    >>> import numpy as np
    >>> boxes_to_mask([[0, 0, 2, 1]], image_size=(4, 4), map_size=(2, 2)).astype(int).tolist()
    [[1, 0], [0, 0]]
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from camlib.metrics.pointing_game import boxes_to_masks
from camlib.report.runs import ReportError

__all__ = ["MaskSource", "boxes_to_mask"]

_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif", ".pgm", ".ppm", ".pbm")


def boxes_to_mask(boxes: Sequence[Sequence[float]], image_size: Optional[Sequence[int]], map_size: Sequence[int]) -> np.ndarray:
    """The union of ``boxes`` (image pixels, ``[x0, y0, x1, y1]``) as a bool mask of ``map_size`` (H, W).

    The boxes are scaled to the map, grown to whole map pixels, and rasterised
    by :func:`camlib.metrics.boxes_to_masks`.

    Args:
        boxes: The boxes, in pixels of an image of ``image_size``.
        image_size: The image's ``(H, W)``; None when the boxes are already in map pixels.
        map_size: The heatmap's ``(H, W)``.
    """
    height, width = int(map_size[0]), int(map_size[1])
    sy = height / float(image_size[0]) if image_size else 1.0
    sx = width / float(image_size[1]) if image_size else 1.0
    scaled = np.array([[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes], np.float64).reshape(-1, 4)
    if not len(scaled):
        return np.zeros((height, width), bool)
    # every map pixel a box touches belongs to it (a box thinner than a map pixel does not vanish)
    scaled[:, :2], scaled[:, 2:] = np.floor(scaled[:, :2]), np.ceil(scaled[:, 2:])
    return boxes_to_masks([scaled], (height, width))[0].numpy()


def _box(value: Any, where: str) -> List[float]:
    if isinstance(value, dict):
        value = next((value[k] for k in ("bbox", "box", "xyxy") if k in value), None)
    if not isinstance(value, (list, tuple)) or len(value) < 4:
        raise ReportError(f"{where}: a box must be [x0, y0, x1, y1] (or {{\"bbox\": [...]}}), got {value!r}")
    try:
        return [float(v) for v in value[:4]]
    except (TypeError, ValueError):
        raise ReportError(f"{where}: box {value!r} holds something other than numbers") from None


class MaskSource:
    """Where the report finds each image's object region.

    Args:
        path: A folder of mask images, or a ``.json`` file of boxes.

    Raises:
        ReportError: If ``path`` does not exist, or the boxes file is not valid.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.kind = "masks" if os.path.isdir(self.path) else "boxes"
        self._boxes: Dict[str, List[List[float]]] = {}
        self._by_stem: Dict[str, str] = {}
        self._by_name: Dict[str, Optional[str]] = {}
        if self.kind == "masks":
            for top, _, files in os.walk(self.path):
                for name in files:
                    if name.lower().endswith(_EXTENSIONS) and not name.startswith("."):
                        full = os.path.join(top, name)
                        rel = os.path.relpath(full, self.path).replace(os.sep, "/")
                        self._by_stem.setdefault(os.path.splitext(rel)[0], full)
                        stem = os.path.splitext(name)[0]
                        self._by_name[stem] = None if stem in self._by_name else full
            return
        if not os.path.isfile(self.path):
            raise ReportError(f"--masks {path!r} does not exist; pass a folder of mask images or a JSON file of boxes")
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise ReportError(f"--masks {path!r}: not a readable JSON file of boxes ({err})") from err
        entries: List[Tuple[str, Any]] = []
        if isinstance(data, dict):
            entries = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, list):
            for i, entry in enumerate(data):
                if not isinstance(entry, dict):
                    raise ReportError(f"{path}: item {i} must be {{\"path\": ..., \"boxes\": [...]}}")
                key = next((entry[k] for k in ("path", "image", "file", "file_name") if k in entry), None)
                if key is None:
                    raise ReportError(f"{path}: item {i} has no 'path'")
                boxes = entry.get("boxes", [entry["bbox"]] if "bbox" in entry else None)
                entries.append((str(key), boxes))
        else:
            raise ReportError(f"{path} must hold {{path: [[x0, y0, x1, y1], ...]}} or a list of {{path, boxes}}")
        for key, boxes in entries:
            if not isinstance(boxes, (list, tuple)):
                raise ReportError(f"{path}: boxes of {key!r} must be a list of [x0, y0, x1, y1]")
            if len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
                boxes = [boxes]  # a single box
            self._boxes[key.replace("\\", "/")] = [_box(b, f"{path}: {key!r}") for b in boxes]

    def __len__(self) -> int:
        return len(self._by_stem) if self.kind == "masks" else len(self._boxes)

    def find(self, rel: str, image: Optional[str] = None) -> Optional[str]:
        """The mask file or boxes key of an image (by relative path, absolute path or name), or None."""
        if self.kind == "masks":
            stem = os.path.splitext(rel)[0]
            return self._by_stem.get(stem) or self._by_name.get(os.path.basename(stem))
        for key in (rel, image, os.path.basename(rel)):
            if key and key in self._boxes:
                return key
        return None

    def region(self, key: str, image_size: Optional[Sequence[int]], map_size: Sequence[int]) -> np.ndarray:
        """The object region of ``key`` (from :meth:`find`) as a bool ``map_size`` mask.

        Raises:
            OSError: If a mask file cannot be read as an image.
        """
        if self.kind == "boxes":
            return boxes_to_mask(self._boxes[key], image_size, map_size)
        mask = cv2.imread(key, cv2.IMREAD_UNCHANGED)
        if mask is None or mask.size == 0:
            raise OSError(f"{key}: not an image OpenCV can read")
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        height, width = int(map_size[0]), int(map_size[1])
        if mask.shape != (height, width):
            mask = cv2.resize((mask > 0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return mask > 0
