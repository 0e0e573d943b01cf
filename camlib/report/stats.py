"""Numbers the report computes from the saved heatmaps (no model, no recomputation).

For a map :math:`M \\ge 0` of shape ``[H, W]`` with total energy
:math:`E = \\sum M`:

* **border share**: the share of :math:`E` in the image's border band, the
  outer ``border`` fraction of the height and width on each side (10% by
  default: 36% of the pixels, so a uniform map scores 0.36);
* with an object region :math:`R` (a mask or boxes): **energy inside**
  :math:`\\sum_R M / E` (:class:`camlib.metrics.EnergyPointingGame`), and the
  **pointing-game hit**: whether the map's maximum lies within ``tolerance``
  pixels of :math:`R` (:class:`camlib.metrics.PointingGame`);
* the **look-outside score**: ``1 - energy inside`` with a region, else the
  border share; high values are the cases to look at first.

Example:
    >>> import numpy as np
    >>> cam = np.zeros((10, 10), np.float32); cam[4:6, 4:6] = 1
    >>> region = np.zeros((10, 10), bool); region[3:7, 3:7] = True
    >>> s = map_stats(cam, region)
    >>> s["border"], s["inside"], s["hit"], s["outside"]
    (0.0, 1.0, True, 0.0)
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional

import cv2
import numpy as np

from camlib.metrics.pointing_game import EnergyPointingGame, PointingGame

__all__ = ["ClassMeans", "HeatmapReader", "map_stats", "npy_from_bytes", "preview"]


def map_stats(cam: np.ndarray, region: Optional[np.ndarray] = None, border: float = 0.1, tolerance: int = 0) -> Dict[str, Any]:
    """Border share, energy inside ``region``, pointing-game hit and look-outside score of one map.

    Args:
        cam: The map, ``[H, W]``, non-negative.
        region: The object, bool ``[H, W]``, or None.
        border: Width of the border band, as a fraction of the height and width.
        tolerance: Distance in map pixels within which the maximum still hits the region.

    Returns:
        ``{"border", "inside", "hit", "outside", "peak"}``: floats rounded to 4
        digits (``inside`` and ``hit`` None without a region; all None for a
        blank map), ``peak`` the maximum's ``[y, x]`` as fractions of the size.
    """
    cam = np.asarray(cam, dtype=np.float32)
    cam = np.where(np.isfinite(cam), np.maximum(cam, 0), 0)
    height, width = cam.shape
    total = float(cam.sum(dtype=np.float64))
    out: Dict[str, Any] = {"border": None, "inside": None, "hit": None, "outside": None, "peak": None}
    if total <= 0:
        return out
    by, bx = round(border * height), round(border * width)
    inner = float(cam[by:height - by, bx:width - bx].sum(dtype=np.float64)) if by * 2 < height and bx * 2 < width else 0.0
    out["border"] = round(1.0 - inner / total, 4)
    peak = int(np.argmax(cam))
    py, px = divmod(peak, width)
    out["peak"] = [round((py + 0.5) / height, 4), round((px + 0.5) / width, 4)]
    if region is not None:
        maps, regions = cam[None], np.asarray(region, bool)[None]
        out["inside"] = round(float(EnergyPointingGame()(maps, regions)[0]), 4)
        out["hit"] = bool(PointingGame(tolerance=tolerance)(maps, regions)[0] > 0)
        out["outside"] = round(1.0 - out["inside"], 4)
    else:
        out["outside"] = out["border"]
    return out


def preview(cam: np.ndarray, size: int) -> np.ndarray:
    """The map shrunk to ``size x size`` (area averaging), float32 in [0, 1]."""
    cam = np.asarray(cam, dtype=np.float32)
    small = cv2.resize(cam, (size, size), interpolation=cv2.INTER_AREA) if cam.shape != (size, size) else cam
    return np.clip(np.nan_to_num(small, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


_HEADER = re.compile(
    r"""^\{\s*'descr':\s*'([<>|=]?[fiu]\d+)',\s*'fortran_order':\s*False,\s*'shape':\s*\(([\d,\s]*)\),?\s*\}\s*$"""
)


def npy_from_bytes(data: bytes) -> np.ndarray:
    """The array of a ``.npy`` file's bytes (a fast path for plain numeric arrays; no pickles).

    Example:
        >>> import io
        >>> buffer = io.BytesIO(); np.save(buffer, np.eye(2, dtype=np.float16))
        >>> npy_from_bytes(buffer.getvalue()).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if data[:6] == b"\x93NUMPY" and len(data) > 10:
        major = data[6]
        size_bytes = 2 if major == 1 else 4
        length = int.from_bytes(data[8:8 + size_bytes], "little")
        start = 8 + size_bytes
        match = _HEADER.match(data[start:start + length].decode("latin1"))
        if match:
            shape = tuple(int(v) for v in match.group(2).replace(",", " ").split())
            dtype = np.dtype(match.group(1))
            count = int(np.prod(shape)) if shape else 1
            if len(data) - start - length == count * dtype.itemsize:
                return np.frombuffer(data, dtype, count=count, offset=start + length).reshape(shape)
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


class HeatmapReader:
    """Reads the heatmaps a manifest names: ``.npy`` files or keys of ``.npz`` shards.

    Shards are kept open a few at a time, so reading records in manifest order
    opens each shard once.

    Args:
        out_dir: The run folder the paths are relative to.
    """

    def __init__(self, out_dir: str, keep: int = 2) -> None:
        self.out_dir = out_dir
        self.keep = keep
        self._open: OrderedDict[str, Any] = OrderedDict()

    def read(self, heatmap: Any) -> np.ndarray:
        """The maps of a record's ``"heatmap"`` field as float32 ``[K, H, W]``.

        Raises:
            OSError: If the file is missing or unreadable; ValueError for a malformed entry.
        """
        if isinstance(heatmap, str):
            with open(os.path.join(self.out_dir, heatmap), "rb") as handle:
                array = npy_from_bytes(handle.read())
        elif isinstance(heatmap, Mapping) and isinstance(heatmap.get("file"), str) and isinstance(heatmap.get("key"), str):
            data, members, archive = self._archive(heatmap["file"])
            name = heatmap["key"] + ".npy"
            if name in members:
                start, length = members[name]
                array = npy_from_bytes(data[start:start + length])
            else:
                try:
                    array = npy_from_bytes(archive.read(name))
                except KeyError:
                    raise OSError(f"{heatmap['file']} has no map {heatmap['key']!r}") from None
        else:
            raise ValueError(f"heatmap entry {heatmap!r} is neither a path nor {{'file': ..., 'key': ...}}")
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"heatmap of shape {array.shape}: expected [H, W] or [K, H, W]")
        return array

    def _archive(self, file: str):
        if file in self._open:
            self._open.move_to_end(file)
            return self._open[file]
        try:
            with open(os.path.join(self.out_dir, file), "rb") as handle:
                data = handle.read()
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as err:
            raise OSError(f"{file}: {err}") from err
        # uncompressed members are sliced straight out of the file's bytes (camlib explain stores them so)
        members = {}
        for info in archive.infolist():
            at = info.header_offset
            if info.compress_type == zipfile.ZIP_STORED and data[at:at + 4] == b"PK\x03\x04":
                start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
                members[info.filename] = (start, info.file_size)
        entry = (data, members, archive)
        self._open[file] = entry
        while len(self._open) > self.keep:
            _, old = self._open.popitem(last=False)
            old[2].close()
        return entry

    def close(self) -> None:
        """Close the open shards."""
        while self._open:
            _, old = self._open.popitem()
            old[2].close()


class ClassMeans:
    """Running per-class mean of map previews.

    Example:
        >>> means = ClassMeans(2)
        >>> means.add(3, np.ones((2, 2), np.float32)); means.add(3, np.zeros((2, 2), np.float32))
        >>> means.mean(3).tolist(), means.count(3)
        ([[0.5, 0.5], [0.5, 0.5]], 2)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._sums: Dict[int, np.ndarray] = {}
        self._counts: Dict[int, int] = {}

    def add(self, cls: int, small: np.ndarray) -> None:
        """Add one ``size x size`` preview of class ``cls``."""
        if cls not in self._sums:
            self._sums[cls] = np.zeros((self.size, self.size), np.float64)
            self._counts[cls] = 0
        self._sums[cls] += small
        self._counts[cls] += 1

    def classes(self) -> list:
        """The classes seen, sorted."""
        return sorted(self._sums)

    def count(self, cls: int) -> int:
        """How many maps of ``cls`` were added."""
        return self._counts.get(cls, 0)

    def mean(self, cls: int) -> np.ndarray:
        """The mean preview of ``cls``, float32."""
        return (self._sums[cls] / max(1, self._counts[cls])).astype(np.float32)
