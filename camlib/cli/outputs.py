"""How ``camlib explain`` writes its files: atomically, deterministically, in a mirrored tree.

Every file is written under a temporary name (``.<name>.camlib-tmp-<pid>``, a
hidden file next to the final one) and moved into place with :func:`os.replace`,
so a file with its final name is always complete; a run killed mid-write leaves
at most a temporary file, which :func:`remove_temporaries` deletes when the next
run starts. Only names of that exact form, at the top of ``--out`` or under its
``heatmaps/`` and ``overlays/`` folders, are ever taken for temporaries.

Heatmaps are float16 ``.npy`` files, or ``.npz`` archives (one per shard) that
:func:`npz_bytes` writes with fixed timestamps, so that the same maps give the
same bytes in every run. Overlays are the CAM blended over the image by
:func:`camlib.utils.image.show_cam_on_image`, encoded as JPEG or PNG.

Example:
    >>> import numpy as np
    >>> a = npz_bytes({"x/1.png": np.zeros((2, 2), np.float16)})
    >>> a == npz_bytes({"x/1.png": np.zeros((2, 2), np.float16)})
    True
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from camlib.utils.image import show_cam_on_image

__all__ = [
    "HEATMAP_DIR",
    "OVERLAY_DIR",
    "OVERLAY_FORMATS",
    "TMP_PATTERN",
    "atomic_write",
    "encode_overlay",
    "npy_bytes",
    "npz_bytes",
    "overlay_names",
    "remove_temporaries",
    "resize_maps",
    "shard_name",
    "temporary_name",
]

#: Folder of the heatmaps under ``--out`` (mirroring the inputs' folders).
HEATMAP_DIR = "heatmaps"
#: Folder of the overlays under ``--out`` (mirroring the inputs' folders).
OVERLAY_DIR = "overlays"
#: Overlay formats and their file endings.
OVERLAY_FORMATS = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png"}
#: Names of temporary files: ``.<final name>.camlib-tmp-<pid>``.
TMP_PATTERN = re.compile(r"^\..+\.camlib-tmp-\d+$")

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def atomic_write(path: str, data: bytes, make_dirs: bool = True) -> int:
    """Write ``data`` to ``path`` through a temporary file and :func:`os.replace`.

    Args:
        path: The final file name.
        data: The bytes.
        make_dirs: Create the file's folder if needed (pass False when it is known to exist).

    Returns:
        The number of bytes written.

    Raises:
        OSError: If the file cannot be written; the temporary file is removed.
    """
    folder = os.path.dirname(path)
    if make_dirs and folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return len(data)


def temporary_name(path: str) -> str:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``.

    Example:
        >>> temporary_name("out/heatmaps/a.npy") == f"out/heatmaps/.a.npy.camlib-tmp-{os.getpid()}"
        True
    """
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.camlib-tmp-{os.getpid()}")


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` encoding of ``array`` (no pickles)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` archive of ``arrays``, byte-identical for identical input.

    :func:`numpy.savez` stamps each entry with the current time; this writer
    uses a fixed time, so the archive depends only on the names, order and
    values. ``numpy.load`` reads it as usual; names may contain ``/``.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, npy_bytes(array))
    return buffer.getvalue()


def shard_name(unit: int) -> str:
    """File name (under :data:`HEATMAP_DIR`) of the ``.npz`` shard of work unit ``unit``."""
    return f"shard-{unit:06d}.npz"


def overlay_names(stem: str, targets: Sequence[int], naming: str, extension: str) -> list:
    """Overlay paths (relative to ``--out``) of one image, one per explained class.

    ``naming`` ``"single"`` (one class per image): ``overlays/<stem><ext>``;
    ``"topk"``: ``<stem>_top1<ext>``, ``<stem>_top2<ext>``, ...; ``"class"``
    (label files giving several classes): ``<stem>_class<c><ext>``.

    Example:
        >>> overlay_names("cls/a", [3, 1], "topk", ".jpg")
        ['overlays/cls/a_top1.jpg', 'overlays/cls/a_top2.jpg']
    """
    if naming == "topk":
        suffixes = [f"_top{j + 1}" for j in range(len(targets))]
    elif naming == "class":
        suffixes = [f"_class{c}" for c in targets]
    else:
        suffixes = [""]
    return [f"{OVERLAY_DIR}/{stem}{suffix}{extension}" for suffix in suffixes]


def resize_maps(maps: np.ndarray, size: Optional[Sequence[int]]) -> np.ndarray:
    """Resize ``[K, H, W]`` maps to ``size`` = (height, width), bilinearly, kept in [0, 1]."""
    if size is None or tuple(maps.shape[1:]) == tuple(size):
        return maps
    height, width = int(size[0]), int(size[1])
    out = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
    return np.clip(out, 0.0, 1.0, out=out)


def encode_overlay(rgb: np.ndarray, heatmap: np.ndarray, extension: str, jpeg_quality: int = 95) -> bytes:
    """The CAM blended over the image (:func:`camlib.utils.image.show_cam_on_image`), encoded.

    Args:
        rgb: The image, uint8 ``[H, W, 3]`` RGB.
        heatmap: The map, float ``[H, W]`` in [0, 1].
        extension: ``".jpg"`` or ``".png"``.
        jpeg_quality: JPEG quality, 0 to 100.

    Returns:
        The encoded file's bytes.

    Example:
        >>> import numpy as np
        >>> data = encode_overlay(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.float32), ".png")
        >>> data[:4]
        b'\\x89PNG'
    """
    # blended in OpenCV's BGR order (the same pixels as use_rgb=True, without two colour conversions)
    bgr = rgb[..., ::-1].astype(np.float32) / np.float32(255)
    blended = show_cam_on_image(bgr, heatmap, use_rgb=False)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if extension == ".jpg" else []
    ok, encoded = cv2.imencode(extension, blended, params)
    if not ok:
        raise OSError(f"OpenCV could not encode an overlay as {extension}")
    return encoded.tobytes()


def remove_temporaries(folder: str) -> int:
    """Delete the temporary files (``.<name>.camlib-tmp-<pid>``) a killed run left in ``folder``
    (the ``--out`` folder: its top level, ``heatmaps/`` and ``overlays/``; nothing else is looked at).

    Returns:
        How many were deleted.
    """
    removed = 0
    if not os.path.isdir(folder):
        return 0
    places = [(folder, False), (os.path.join(folder, HEATMAP_DIR), True), (os.path.join(folder, OVERLAY_DIR), True)]
    for place, recursive in places:
        if not os.path.isdir(place):
            continue
        walk = os.walk(place) if recursive else [(place, [], os.listdir(place))]
        for top, _, files in walk:
            for name in files:
                path = os.path.join(top, name)
                if TMP_PATTERN.match(name) and os.path.isfile(path) and not os.path.islink(path):
                    try:
                        os.remove(path)
                        removed += 1
                    except FileNotFoundError:
                        pass
    return removed
