"""A procedural multi-label data set of shapes on cluttered backgrounds.

Every image is a pure function of an integer seed: a textured background
(colour gradient, low-frequency colour noise, pixel noise), thin distractor
strokes that belong to no class, and one or two objects of distinct classes,
each with a random size, rotation, aspect and colour. Because the objects are
rasterised without anti-aliasing, the per-class masks returned with each image
are pixel-exact: a mask pixel is ``True`` exactly where the object's colour was
written. This makes the data set usable for localisation metrics (pointing game,
energy inside the mask, ...) as well as for training the bundled demo model.

The train and held-out test splits draw their seeds from disjoint ranges
(:data:`SPLIT_SEED_RANGES`), and the bundled sample image uses a seed outside
both (:data:`SAMPLE_SEED`).

Example:
    >>> from camlib.demo.data import CLASS_NAMES, make_image
    >>> image, label, masks = make_image(0)
    >>> image.shape, label.shape, masks.shape
    ((128, 128, 3), (6,), (6, 128, 128))
    >>> bool((masks.any(axis=(1, 2)) == label.astype(bool)).all())
    True
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CLASS_NAMES",
    "CUE_COLOURS",
    "NUM_CLASSES",
    "SAMPLE_CLASSES",
    "SAMPLE_SEED",
    "SPLIT_SEED_RANGES",
    "ShapesDataset",
    "load_sample_image",
    "make_batch",
    "make_cue_batch",
    "make_cue_image",
    "make_image",
    "make_sample",
    "split_seed",
]

#: Names of the classes, in label-vector order.
CLASS_NAMES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
#: Number of classes (length of the multi-hot label vector).
NUM_CLASSES: int = len(CLASS_NAMES)

#: Seeds of each split. The ranges are disjoint, so no image is in two splits.
SPLIT_SEED_RANGES: Dict[str, range] = {
    "train": range(0, 1_000_000),
    "test": range(1_000_000, 2_000_000),
}
#: Seed of the bundled sample image; it lies outside every split's range.
SAMPLE_SEED: int = 2_000_000
#: The two classes drawn in the bundled sample image (like the reference's dog and cat).
SAMPLE_CLASSES: Tuple[str, str] = ("star", "ring")

#: Background colour of the spurious cue of each class (RGB in [0, 1]), in class order;
#: see :func:`make_cue_image`.
CUE_COLOURS: Tuple[Tuple[float, float, float], ...] = (
    (0.85, 0.15, 0.15),  # circle: red
    (0.15, 0.65, 0.2),  # square: green
    (0.15, 0.3, 0.85),  # triangle: blue
    (0.9, 0.8, 0.1),  # star: yellow
    (0.7, 0.2, 0.8),  # cross: purple
    (0.1, 0.75, 0.8),  # ring: cyan
)
#: Share of the textured background kept when a cue colour is given (the rest is the colour).
_CUE_BLEND = np.float32(1.0 / 3.0)

_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_SCALE = 1 << _SHIFT
_SAMPLE_FILE = "sample.png"

SeedLike = Union[int, np.integer, np.random.Generator]


def split_seed(split: str, index: int) -> int:
    """Return the seed of image ``index`` of ``split``.

    Args:
        split: ``"train"`` or ``"test"``.
        index: Position of the image in the split, ``0 <= index < len(SPLIT_SEED_RANGES[split])``.

    Returns:
        The integer seed to pass to :func:`make_image`.

    Raises:
        ValueError: If ``split`` is unknown or ``index`` is out of the split's range.
    """
    if split not in SPLIT_SEED_RANGES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_RANGES)}")
    seeds = SPLIT_SEED_RANGES[split]
    if not 0 <= index < len(seeds):
        raise ValueError(f"index {index} is out of range for split {split!r}; expected 0 <= index < {len(seeds)}")
    return seeds[index]


# --------------------------------------------------------------------------- shapes


def _ellipse(n: int, aspect: float) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), aspect * np.sin(t)], axis=1)


def _shape_polygons(cls: str, rng: np.random.Generator) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Outer polygon (and hole, for the ring) of a shape with circumradius about 1."""
    hole = None
    if cls == "circle":
        outer = _ellipse(72, rng.uniform(0.8, 1.0))
    elif cls == "square":
        a = rng.uniform(0.85, 1.0)
        s = 1.0 / math.sqrt(1.0 + a * a)
        outer = np.array([[-s, -a * s], [s, -a * s], [s, a * s], [-s, a * s]])
    elif cls == "triangle":
        ang = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-8.0, 8.0, 3))
        rad = rng.uniform(0.9, 1.0, 3)
        outer = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    elif cls == "star":
        inner = rng.uniform(0.38, 0.5)
        ang = np.arange(10) * (math.pi / 5) + math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        outer = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    elif cls == "cross":
        w = rng.uniform(0.22, 0.32)
        pts = [(w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1), (w, 1)]
        outer = np.array(pts) / math.sqrt(1.0 + w * w)
    elif cls == "ring":
        aspect = rng.uniform(0.85, 1.0)
        outer = _ellipse(72, aspect)
        hole = outer * rng.uniform(0.5, 0.68)
    else:  # pragma: no cover - guarded by callers
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASS_NAMES}")
    return outer, hole


def _place(poly: np.ndarray, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    pts = poly @ rot.T * radius + center
    return np.round(pts * _SCALE).astype(np.int32)


def _shape_mask(cls: str, size: int, center: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Rasterise one shape (no anti-aliasing) into a boolean mask [size, size]."""
    outer, hole = _shape_polygons(cls, rng)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [_place(outer, center, radius, angle)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    if hole is not None:
        cv2.fillPoly(mask, [_place(hole, center, radius, angle)], 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


# --------------------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, height: int, width: Optional[int] = None) -> np.ndarray:
    """Low-frequency colour noise in [0, 1], shape [height, width, 3]."""
    width = height if width is None else width
    cells = int(rng.integers(3, 12))
    grid = rng.random((cells, cells, 3), dtype=np.float32)
    return cv2.resize(grid, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    img = c0 + t[..., None] * (c1 - c0)
    img += np.float32(rng.uniform(0.1, 0.35)) * (_smooth_noise(rng, size) - np.float32(0.5))
    return np.clip(img, 0.0, 1.0, out=img)


def _distractors(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw thin lines, arcs and polylines that are no class's shape (in place)."""
    size = img.shape[0]
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(float(v) for v in rng.random(3))
        thickness = max(1, round(int(rng.integers(1, 3)) * size / 128))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            p0 = rng.uniform(-0.2, 1.2, 2) * size
            p1 = rng.uniform(-0.2, 1.2, 2) * size
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, thickness, cv2.LINE_8)
        elif kind == 1:
            center = tuple(int(v) for v in rng.uniform(0.0, 1.0, 2) * size)
            axes = tuple(int(v) for v in rng.uniform(0.1, 0.5, 2) * size)
            start = float(rng.uniform(0.0, 360.0))
            sweep = float(rng.uniform(40.0, 180.0))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), start, start + sweep, colour, thickness)
        else:
            n = int(rng.integers(3, 7))
            steps = rng.normal(0.0, 0.15 * size, (n, 2))
            pts = np.cumsum(steps, axis=0) + rng.uniform(0.0, 1.0, 2) * size
            cv2.polylines(img, [pts.astype(np.int32)], False, colour, thickness, cv2.LINE_8)


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that contrasts with ``under`` (mean colour beneath the object)."""
    best, best_d = None, -1.0
    for _ in range(20):
        colour = rng.random(3)
        d = float(np.linalg.norm(colour - under))
        if d >= 0.45:
            return colour
        if d > best_d:
            best, best_d = colour, d
    return best


# --------------------------------------------------------------------------- images


def _colour(value: Sequence[float]) -> np.ndarray:
    colour = np.asarray(value, dtype=np.float32).reshape(-1)
    if colour.shape != (3,) or not np.all((colour >= 0) & (colour <= 1)):
        raise ValueError(f"background must be an RGB colour of 3 values in [0, 1], got {value!r}")
    return colour


def _as_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")


def _class_indices(classes: Optional[Sequence[Union[str, int]]]) -> Optional[list]:
    if classes is None:
        return None
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in CLASS_NAMES:
                raise ValueError(f"unknown class {c!r}; expected one of {CLASS_NAMES}")
            out.append(CLASS_NAMES.index(c))
        elif isinstance(c, (int, np.integer)) and 0 <= int(c) < NUM_CLASSES:
            out.append(int(c))
        else:
            raise ValueError(f"class {c!r} is neither a class name nor an index in [0, {NUM_CLASSES})")
    if not 1 <= len(out) <= 2 or len(set(out)) != len(out):
        raise ValueError(f"classes must name one or two distinct classes, got {list(classes)}")
    return out


def make_image(
    seed: SeedLike,
    size: int = 128,
    *,
    classes: Optional[Sequence[Union[str, int]]] = None,
    clutter: bool = True,
    background: Optional[Sequence[float]] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image with its multi-hot label and pixel-exact per-class masks.

    Half of the images hold one object, the other half two objects of distinct
    classes. Objects never overlap and lie fully inside the image.

    Args:
        seed: Integer seed (see :func:`split_seed`) or a numpy ``Generator``; the
            output is a deterministic function of it (and of the other arguments).
        size: Height and width of the square image in pixels (at least 32).
        classes: Optionally force the classes drawn: one or two distinct class
            names or indices. By default they are drawn at random.
        clutter: If ``False``, draw the objects in flat colours on a flat
            background without distractors or noise (for checking the masks).
        background: Optionally an RGB colour in [0, 1] that dominates the
            background (the spurious cue of :func:`make_cue_image`): the usual
            textured background is blended into it, keeping a third of its
            contrast. ``None`` (the default) leaves the image unchanged.

    Returns:
        ``(image, label, masks)``: the RGB image, float32 ``[size, size, 3]`` in
        [0, 1]; the multi-hot label, float32 ``[NUM_CLASSES]``; and the masks,
        bool ``[NUM_CLASSES, size, size]`` (all ``False`` for absent classes).

    Raises:
        TypeError: If ``seed`` is neither an int nor a numpy ``Generator``.
        ValueError: If ``size`` is smaller than 32 or ``classes`` is invalid.
    """
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    size = int(size)
    rng = _as_rng(seed)
    chosen = _class_indices(classes)
    if chosen is None:
        n_obj = 1 if rng.random() < 0.5 else 2
        chosen = [int(c) for c in rng.choice(NUM_CLASSES, size=n_obj, replace=False)]

    if clutter:
        img = _background(rng, size)
        if background is not None:
            img = _CUE_BLEND * img + (1.0 - _CUE_BLEND) * _colour(background)
        _distractors(img, rng)
    else:
        flat = rng.random(3).astype(np.float32)
        if background is not None:
            flat = _colour(background)
        img = np.empty((size, size, 3), np.float32)
        img[:] = flat

    # Sizes and non-overlapping positions (objects are bounded by their circumcircle).
    n_obj = len(chosen)
    rmax = 0.22 if n_obj == 1 else 0.2
    for _attempt in range(100):
        radii = rng.uniform(0.12, rmax, n_obj) * size
        centers = np.stack([rng.uniform(r + 1, size - 1 - r, 2) for r in radii])
        if n_obj == 1 or np.linalg.norm(centers[0] - centers[1]) > radii.sum() + 2:
            break
    else:  # pragma: no cover - practically unreachable: fall back to opposite corners
        radii = np.full(n_obj, 0.12 * size)
        centers = np.array([[0.25, 0.25], [0.75, 0.75]])[:n_obj] * size

    label = np.zeros(NUM_CLASSES, np.float32)
    masks = np.zeros((NUM_CLASSES, size, size), bool)
    for cls, center, radius in zip(chosen, centers, radii):
        mask = _shape_mask(CLASS_NAMES[cls], size, center, float(radius), rng)
        colour = _pick_colour(rng, img[mask].mean(axis=0)) if clutter else rng.random(3)
        if not clutter:
            # Keep flat colours distinguishable from the flat background.
            while np.abs(colour - flat).max() < 0.1:
                colour = rng.random(3)
            img[mask] = colour.astype(np.float32)
        else:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            texture = _smooth_noise(rng, rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
            fill = colour.astype(np.float32) + np.float32(rng.uniform(0.0, 0.2)) * (texture - np.float32(0.5))
            img[box][mask[box]] = np.clip(fill, 0.0, 1.0)[mask[box]]
        label[cls] = 1.0
        masks[cls] = mask

    if clutter:
        img += np.float32(rng.uniform(0.0, 0.05)) * rng.standard_normal(img.shape, dtype=np.float32)
        np.clip(img, 0.0, 1.0, out=img)
    return img.astype(np.float32, copy=False), label, masks


def make_batch(
    split: str,
    indices: Sequence[int],
    size: int = 128,
    *,
    with_masks: bool = True,
    clutter: bool = True,
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Render several images of a split at once.

    Args:
        split: ``"train"`` or ``"test"``.
        indices: Positions of the images in the split.
        size: Image height and width in pixels.
        with_masks: Whether to return the masks (they take ``NUM_CLASSES`` bytes per pixel).
        clutter: Passed to :func:`make_image`.

    Returns:
        ``(images, labels, masks)``: uint8 images ``[N, size, size, 3]`` (the
        float images quantised as a PNG would store them), float32 labels
        ``[N, NUM_CLASSES]``, and bool masks ``[N, NUM_CLASSES, size, size]`` or
        ``None`` when ``with_masks`` is ``False``.
    """
    n = len(indices)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, NUM_CLASSES), np.float32)
    masks = np.empty((n, NUM_CLASSES, size, size), bool) if with_masks else None
    for i, index in enumerate(indices):
        img, lab, msk = make_image(split_seed(split, int(index)), size, clutter=clutter)
        images[i] = _to_uint8(img)
        labels[i] = lab
        if masks is not None:
            masks[i] = msk
    return images, labels, masks


# --------------------------------------------------------------------------- the spurious cue


def make_cue_image(
    seed: int, size: int = 128, *, correlation: Optional[float] = 0.9
) -> Tuple[np.ndarray, int, np.ndarray, int]:
    """Render one single-object image whose background colour is a spurious cue of its class.

    The class ``c`` is drawn uniformly; with probability ``correlation`` the
    background is dominated by ``CUE_COLOURS[c]``, otherwise by the colour of
    another class drawn uniformly. A classifier can then reach ``correlation``
    accuracy on such data from the background alone, without looking at the
    object. ``correlation=None`` draws the cue independently of the class (the
    cue-shuffled test condition: the colour says nothing about the class).
    The rest of the image (object, distractors, noise) is rendered as by
    :func:`make_image`; the object's mask is pixel-exact.

    Args:
        seed: A non-negative integer (e.g. from :func:`split_seed`).
        size: Image height and width in pixels (at least 32).
        correlation: Probability in [0, 1] that the cue is the class's own colour,
            or ``None`` for a cue independent of the class.

    Returns:
        ``(image, label, mask, cue)``: the RGB image, float32 ``[size, size, 3]`` in
        [0, 1]; the class index; the object's mask, bool ``[size, size]``; and the
        index of the class whose colour the background has.

    Raises:
        ValueError: If ``correlation`` is outside [0, 1].

    Example:
        >>> image, label, mask, cue = make_cue_image(0, 64, correlation=1.0)
        >>> image.shape, mask.shape, label == cue
        ((64, 64, 3), (64, 64), True)
    """
    if correlation is not None and not 0.0 <= float(correlation) <= 1.0:
        raise ValueError(f"correlation must be in [0, 1] or None, got {correlation!r}")
    rng = _as_rng(seed)
    # A stream of its own for the class and the cue, so the image's stream is make_image's.
    cue_rng = np.random.default_rng([int(seed), 0x0C0E])
    label = int(cue_rng.integers(NUM_CLASSES))
    if correlation is None:
        cue = int(cue_rng.integers(NUM_CLASSES))
    elif cue_rng.random() < float(correlation):
        cue = label
    else:
        cue = int((label + 1 + cue_rng.integers(NUM_CLASSES - 1)) % NUM_CLASSES)
    image, _, masks = make_image(rng, size, classes=[label], background=CUE_COLOURS[cue])
    return image, label, masks[label], cue


def make_cue_batch(
    split: str, indices: Sequence[int], size: int = 128, *, correlation: Optional[float] = 0.9
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render several :func:`make_cue_image` images of a split.

    The usual protocol: the train split with ``correlation=0.9`` (the cue agrees
    with the class 90% of the time) and the test split with ``correlation=None``
    (cue-shuffled).

    Args:
        split: ``"train"`` or ``"test"``.
        indices: Positions of the images in the split.
        size: Image height and width in pixels.
        correlation: See :func:`make_cue_image`.

    Returns:
        ``(images, labels, masks, cues)``: uint8 images ``[N, size, size, 3]``,
        int64 class indices ``[N]``, bool masks ``[N, size, size]`` and int64 cue
        indices ``[N]``.

    Example:
        >>> images, labels, masks, cues = make_cue_batch("test", range(3), 32, correlation=None)
        >>> images.shape, labels.shape, masks.shape, cues.dtype
        ((3, 32, 32, 3), (3,), (3, 32, 32), dtype('int64'))
    """
    n = len(indices)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    cues = np.empty(n, np.int64)
    for i, index in enumerate(indices):
        img, labels[i], masks[i], cues[i] = make_cue_image(split_seed(split, int(index)), size, correlation=correlation)
        images[i] = _to_uint8(img)
    return images, labels, masks, cues


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(img * 255.0).astype(np.uint8)


class ShapesDataset(Dataset):
    """The procedural shapes data set as a torch ``Dataset``.

    Item ``i`` of a split is rendered on demand from seed ``split_seed(split, i)``,
    so any length up to the split's seed range is available without storage.

    Args:
        split: ``"train"`` or ``"test"`` (held out; its seeds never meet the train seeds).
        length: Number of images in this view of the split.
        size: Image height and width in pixels.
        with_masks: Whether items include the per-class masks.

    Each item is ``(image, label)`` or ``(image, label, masks)``: the image as a
    float32 tensor ``[3, size, size]`` in [0, 1] (not normalised; see
    :func:`camlib.demo.model.demo_preprocess`), the multi-hot label as float32
    ``[NUM_CLASSES]``, and the masks as bool ``[NUM_CLASSES, size, size]``.

    Example:
        >>> ds = ShapesDataset("test", length=4)
        >>> image, label, masks = ds[0]
        >>> tuple(image.shape), tuple(label.shape), tuple(masks.shape)
        ((3, 128, 128), (6,), (6, 128, 128))
    """

    def __init__(self, split: str = "train", length: int = 1000, size: int = 128, with_masks: bool = True) -> None:
        if split not in SPLIT_SEED_RANGES:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_RANGES)}")
        if not 0 < length <= len(SPLIT_SEED_RANGES[split]):
            raise ValueError(
                f"length must be in [1, {len(SPLIT_SEED_RANGES[split])}] for split {split!r}, got {length}"
            )
        self.split = split
        self.length = int(length)
        self.size = int(size)
        self.with_masks = with_masks
        self.class_names = CLASS_NAMES

    def __len__(self) -> int:
        """Number of images in this view of the split."""
        return self.length

    def __getitem__(self, index: int):
        """Render item ``index`` (see the class docstring for its layout)."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a data set of length {self.length}")
        index = index % self.length
        img, label, masks = make_image(split_seed(self.split, index), self.size)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.with_masks:
            return image, torch.from_numpy(label), torch.from_numpy(masks)
        return image, torch.from_numpy(label)


# --------------------------------------------------------------------------- the sample


def make_sample(size: int = 128) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render the demo sample: one :data:`SAMPLE_CLASSES` object each, seed :data:`SAMPLE_SEED`.

    This is the image stored as ``camlib/demo/sample.png`` (before quantisation to 8 bits).

    Args:
        size: Image height and width in pixels.

    Returns:
        ``(image, label, masks)`` as returned by :func:`make_image`.
    """
    return make_image(SAMPLE_SEED, size, classes=SAMPLE_CLASSES)


def load_sample_image() -> np.ndarray:
    """Load the bundled sample image, which holds a star and a ring on clutter.

    It plays the part of the reference's dog-and-cat picture: two classes in one
    image, so a CAM for each class should light up a different object. Its
    ground-truth masks are ``make_sample()[2]``.

    Returns:
        The RGB image as float32 ``[128, 128, 3]`` in [0, 1].

    Example:
        >>> img = load_sample_image()
        >>> img.shape, img.dtype
        ((128, 128, 3), dtype('float32'))
    """
    data = resources.files(__package__).joinpath(_SAMPLE_FILE).read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:  # pragma: no cover - only if the installed file is corrupt
        raise RuntimeError(f"could not decode the bundled {_SAMPLE_FILE}")
    return (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)


def save_sample(path, size: int = 128) -> None:
    """Write the sample image as an 8-bit PNG at ``path``."""
    img = _to_uint8(make_sample(size)[0])
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
