"""Turning images into model inputs and maps back into pictures.

These helpers live at the numpy/OpenCV boundary of the library: they take the
float or uint8 arrays a user loads with OpenCV or PIL and return arrays ready to
save with ``cv2.imwrite`` or show in a notebook. They are re-exported from
:mod:`camlib.utils.image`, which is where pytorch-grad-cam users look for them.

No plotting library is needed: the default component colours of
:func:`show_factorization_on_image` are sampled from a ``gist_rainbow``
colour ramp computed here, and its legend is drawn with OpenCV.
"""

from __future__ import annotations

import warnings
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torchvision.transforms import functional as TF

__all__ = [
    "create_labels_legend",
    "deprocess_image",
    "gist_rainbow_colors",
    "preprocess_image",
    "show_cam_on_image",
    "show_factorization_on_image",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Anchor points (position, (r, g, b)) of the ``gist_rainbow`` ramp, as published
# with GIST and shipped by matplotlib. Colours between anchors are linear blends.
_GIST_RAINBOW_ANCHORS: Tuple[Tuple[float, Tuple[float, float, float]], ...] = (
    (0.000, (1.00, 0.00, 0.16)),
    (0.030, (1.00, 0.00, 0.00)),
    (0.215, (1.00, 1.00, 0.00)),
    (0.400, (0.00, 1.00, 0.00)),
    (0.586, (0.00, 1.00, 1.00)),
    (0.770, (0.00, 0.00, 1.00)),
    (0.954, (1.00, 0.00, 1.00)),
    (1.000, (1.00, 0.00, 0.75)),
)
# Colormaps are used through a table of this many evenly spaced entries; a value
# x in [0, 1] picks entry floor(x * size) (x == 1 picks the last one).
_RAMP_TABLE_SIZE = 256


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a numpy array, moving a tensor to the CPU first."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """Turn an ``[H, W, C]`` image into a normalised ``[1, C, H, W]`` model input.

    A uint8 image is scaled to [0, 1] first; a float image is used as it is
    (and keeps its dtype). Then each channel is normalised with
    ``(x - mean) / std``. The caller's image is not modified.

    Args:
        img: the image as a numpy array (``[H, W, C]`` or ``[H, W]``) or a PIL image.
        mean: per-channel mean to subtract.
        std: per-channel standard deviation to divide by.

    Returns:
        A tensor of shape ``[1, C, H, W]`` on the CPU.

    Example:
        >>> import numpy as np
        >>> preprocess_image(np.zeros((4, 5, 3), dtype=np.uint8)).shape
        torch.Size([1, 3, 4, 5])
    """
    if isinstance(img, torch.Tensor):
        raise TypeError(
            "preprocess_image expects an [H, W, C] numpy array or a PIL image, got a torch tensor; "
            "a tensor is probably already preprocessed, or convert it with tensor.cpu().numpy()"
        )
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(
                f"preprocess_image expects an [H, W, C] or [H, W] image, got an array of shape {img.shape}"
            )
        img = img.copy()
    elif not hasattr(img, "getbands"):  # PIL images; PIL is only needed if the user has one
        raise TypeError(f"preprocess_image expects a numpy array or a PIL image, got {type(img).__name__}")
    tensor = TF.to_tensor(img)
    if len(mean) != tensor.shape[0] or len(std) != tensor.shape[0]:
        raise ValueError(
            f"mean and std need one value per channel: the image has {tensor.shape[0]} channels, "
            f"got mean={tuple(mean)} and std={tuple(std)}"
        )
    return TF.normalize(tensor, mean=list(mean), std=list(std)).unsqueeze(0)


def deprocess_image(img: ArrayLike) -> np.ndarray:
    """Map an array of arbitrary range (e.g. a guided-backprop map) to a viewable uint8 image.

    The array is standardised (zero mean, unit standard deviation), scaled by
    0.1 and shifted to be centred on 0.5, clipped to [0, 1] and multiplied by 255.

    Args:
        img: any numpy array or tensor, typically ``[H, W, 3]``.

    Returns:
        A uint8 array of the same shape.

    Example:
        >>> import numpy as np
        >>> deprocess_image(np.array([-1.0, 0.0, 1.0]))
        array([ 96, 127, 158], dtype=uint8)
    """
    arr = _to_numpy(img, "img")
    centred = arr - np.mean(arr)
    standardised = centred / (np.std(centred) + 1e-5)
    return np.uint8(np.clip(standardised * 0.1 + 0.5, 0, 1) * 255)


def show_cam_on_image(
    img: np.ndarray,
    mask: ArrayLike,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend a CAM, coloured with an OpenCV colormap, over an image.

    The result is ``image_weight * img + (1 - image_weight) * heatmap``, divided
    by its maximum and converted to uint8.

    Args:
        img: float image of shape ``[H, W, 3]`` with values in [0, 1] (RGB or BGR).
        mask: the CAM, shape ``[H, W]`` (or ``[1, H, W]``), values in [0, 1]; a numpy array or a tensor.
            Values outside [0, 1] are clipped, with a warning.
        use_rgb: return an RGB heatmap (set it when ``img`` is RGB); OpenCV's BGR otherwise.
        colormap: an OpenCV colormap id, e.g. ``cv2.COLORMAP_JET``.
        image_weight: weight of the image in the blend, in [0, 1].

    Returns:
        A uint8 array of shape ``[H, W, 3]``.

    Raises:
        ValueError: if the image is not in [0, 1], ``image_weight`` is outside
            [0, 1], or the mask and image sizes differ.

    Example:
        >>> import numpy as np
        >>> show_cam_on_image(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), np.float32)).shape
        (4, 4, 3)
    """
    img = _to_numpy(img, "img")
    mask = _to_numpy(mask, "mask")
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in the range [0, 1], got {image_weight}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an [H, W, 3] colour image, got shape {img.shape}")
    if np.max(img) > 1:
        raise ValueError(
            f"img must be a float image with values in [0, 1], but its maximum is {np.max(img)}; "
            "convert a uint8 image with np.float32(img) / 255"
        )
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask has shape {mask.shape} but img is {img.shape[:2]} (height, width); pass one [H, W] map "
            f"per image (e.g. grayscale_cam[0]) or resize it with cv2.resize(mask, ({img.shape[1]}, {img.shape[0]}))"
        )
    low, high = float(np.min(mask)), float(np.max(mask))
    if low < 0 or high > 1:
        warnings.warn(
            f"mask values span [{low:.3g}, {high:.3g}], outside [0, 1]; they are clipped to [0, 1]",
            stacklevel=2,
        )
        mask = np.clip(mask, 0, 1)
    heatmap = cv2.applyColorMap(np.uint8(255 * mask), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = np.float32(heatmap) / 255
    blend = (1 - image_weight) * heatmap + image_weight * img
    peak = np.max(blend)
    if peak > 0:
        blend = blend / peak
    return np.uint8(255 * blend)


def create_labels_legend(
    concept_scores: ArrayLike,
    labels: Union[Mapping[int, str], Sequence[str]],
    top_k: int = 2,
) -> List[str]:
    """Describe each concept by its ``top_k`` best-scoring categories.

    Args:
        concept_scores: scores of shape ``[n_concepts, n_categories]``.
        labels: category names, indexed by category id (a dict such as a
            Hugging Face ``config.id2label``, or a list). Only the first three
            comma-separated synonyms of each name are kept.
        top_k: how many categories to list per concept.

    Returns:
        One string per concept with ``top_k`` lines ``"name:score"`` (score with
        two decimals), best first.

    Example:
        >>> import numpy as np
        >>> create_labels_legend(np.array([[0.1, 0.9]]), {0: "cat", 1: "dog"}, top_k=1)
        ['dog:0.90']
    """
    scores = _to_numpy(concept_scores, "concept_scores")
    if scores.ndim != 2:
        raise ValueError(f"concept_scores must have shape [n_concepts, n_categories], got {scores.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    best_first = np.argsort(scores, axis=1)[:, ::-1][:, :top_k]
    legend = []
    for concept, categories in enumerate(best_first):
        lines = []
        for category in categories:
            try:
                name = labels[int(category)]
            except (KeyError, IndexError) as err:
                raise ValueError(
                    f"labels has no name for category {int(category)}; concept_scores has "
                    f"{scores.shape[1]} categories, so labels needs an entry for each of them"
                ) from err
            short_name = ",".join(str(name).split(",")[:3])
            lines.append(f"{short_name}:{scores[concept, category]:.2f}")
        legend.append("\n".join(lines))
    return legend


def _gist_rainbow_table() -> np.ndarray:
    """The ``[256, 3]`` table of the ramp, sampled at ``i / 255``.

    Interpolation is done in the table's index units (anchor positions scaled
    by 255), so that the float values, and hence their uint8 truncations, agree
    with matplotlib's table to the last bit.
    """
    last = _RAMP_TABLE_SIZE - 1
    anchors = np.array([p for p, _ in _GIST_RAINBOW_ANCHORS]) * last
    anchor_rgb = np.array([rgb for _, rgb in _GIST_RAINBOW_ANCHORS])
    samples = last * np.linspace(0.0, 1.0, _RAMP_TABLE_SIZE)
    right = np.searchsorted(anchors, samples[1:-1])
    frac = (samples[1:-1] - anchors[right - 1]) / (anchors[right] - anchors[right - 1])
    inner = frac[:, None] * (anchor_rgb[right] - anchor_rgb[right - 1]) + anchor_rgb[right - 1]
    return np.clip(np.concatenate([anchor_rgb[:1], inner, anchor_rgb[-1:]]), 0.0, 1.0)


def gist_rainbow_colors(n: int) -> List[np.ndarray]:
    """Return ``n`` RGBA colours spread over the ``gist_rainbow`` ramp.

    Colour ``i`` is the ramp sampled at ``i / n``, through a 256-entry table,
    which reproduces ``matplotlib.cm.get_cmap("gist_rainbow")(i / n)``.

    Args:
        n: number of colours.

    Returns:
        A list of ``n`` float arrays ``[r, g, b, 1.0]`` with values in [0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of colours must be a positive integer, got {n!r}")
    table = _gist_rainbow_table()
    colors = []
    for i in range(n):
        entry = min(int(i * (1.0 / n) * _RAMP_TABLE_SIZE), _RAMP_TABLE_SIZE - 1)
        colors.append(np.append(table[entry], 1.0))
    return colors


def _legend_panel(
    height: int,
    width: int,
    colors_rgb: Sequence[Tuple[int, int, int]],
    labels: Sequence[str],
) -> np.ndarray:
    """Draw a white ``[height, width, 3]`` RGB panel listing a colour swatch and text per label."""
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    n = len(labels)
    font = cv2.FONT_HERSHEY_SIMPLEX
    entries = [str(label).split("\n") for label in labels]
    n_lines = sum(len(lines) for lines in entries)
    if n == 0 or n_lines == 0:
        return panel

    # Font size in pixels, growing with the image and shrinking with many concepts.
    wanted_px = 14 * height / 256 / max(1.0, n / 6) * 100 / 72
    unit_height = cv2.getTextSize("Ag", font, 1.0, 1)[0][1]
    margin = max(2, round(height * 0.02))
    swatch_len = max(6, round(width * 0.08))
    swatch_gap = max(2, round(width * 0.02))
    text_left = margin + swatch_len + swatch_gap

    # Vertical room per text line and per gap between entries, in units of the font's height.
    line_units, gap_units = 1.6, 0.5
    scale = wanted_px / unit_height
    # Shrink to fit every line vertically ...
    units_needed = unit_height * (line_units * n_lines + gap_units * (n - 1))
    scale = min(scale, (height - 2 * margin) / units_needed)
    # ... and the longest line horizontally.
    widest = max(cv2.getTextSize(line, font, 1.0, 1)[0][0] for lines in entries for line in lines)
    scale = min(scale, max(width - text_left - margin, 1) / max(widest, 1))
    scale = max(scale, 1e-3)  # a tiny panel gets unreadable text but keeps every swatch
    thickness = max(1, round(scale * 1.5))
    step = unit_height * scale * line_units
    swatch_thickness = max(1, min(round(5 * height / 256 * 100 / 72), round(step * 0.8)))

    y = float(margin)
    for color, lines in zip(colors_rgb, entries):
        top = y
        for line in lines:
            y += step
            baseline = round(y - step * 0.3)
            cv2.putText(panel, line, (text_left, baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        swatch_y = round((top + y) / 2)
        cv2.line(panel, (margin, swatch_y), (margin + swatch_len, swatch_y), color, swatch_thickness)
        y += unit_height * scale * gap_units
    cv2.rectangle(panel, (1, 1), (width - 2, min(height - 2, round(y))), (128, 128, 128), 1)
    return panel


def show_factorization_on_image(
    img: np.ndarray,
    explanations: ArrayLike,
    colors: Optional[Sequence[Sequence[float]]] = None,
    image_weight: float = 0.5,
    concept_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Paint each factorisation component in its own colour over an image.

    Every pixel takes the colour of the component whose heatmap is strongest
    there, with brightness (the V channel in HSV) set by that heatmap's value.
    The painted layer is blended with the image and, if ``concept_labels`` is
    given, a legend panel of the same size is appended on the right.
    ``explanations`` is not modified.

    Args:
        img: RGB float image of shape ``[H, W, 3]`` with values in [0, 1].
        explanations: component heatmaps of shape ``[n_components, H, W]``, values in [0, 1].
        colors: one RGB (or RGBA) colour per component with values in [0, 1];
            by default colours spread over the ``gist_rainbow`` ramp.
        image_weight: weight of the image in the blend, in [0, 1].
        concept_labels: one label per component (may contain newlines); adds a legend.

    Returns:
        A uint8 RGB array of shape ``[H, W, 3]``, or ``[H, 2 W, 3]`` with a legend.

    Example:
        >>> import numpy as np
        >>> maps = np.stack([np.eye(4), 1 - np.eye(4)])
        >>> show_factorization_on_image(np.zeros((4, 4, 3)), maps).shape
        (4, 4, 3)
    """
    img = _to_numpy(img, "img")
    maps = _to_numpy(explanations, "explanations")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an [H, W, 3] RGB image, got shape {img.shape}")
    if maps.ndim != 3 or maps.shape[1:] != img.shape[:2]:
        raise ValueError(
            f"explanations must have shape [n_components, {img.shape[0]}, {img.shape[1]}] to match img, "
            f"got {maps.shape}; resize the heatmaps to the image size first"
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in the range [0, 1], got {image_weight}")
    n_components = maps.shape[0]
    if n_components == 0:
        raise ValueError("explanations has no components (its first dimension is 0)")
    if colors is None:
        colors = gist_rainbow_colors(n_components)
    if len(colors) < n_components:
        raise ValueError(
            f"got {len(colors)} colors for {n_components} components; pass one colour per component"
        )
    if concept_labels is not None and len(concept_labels) != n_components:
        raise ValueError(
            f"got {len(concept_labels)} concept_labels for {n_components} components; pass one label per component"
        )

    # Hue and saturation of each component colour, as OpenCV's 8-bit HSV sees them.
    swatches = np.array([np.asarray(c, dtype=np.float64)[:3] for c in colors[:n_components]])
    if swatches.shape != (n_components, 3) or swatches.min() < 0 or swatches.max() > 1:
        raise ValueError(
            "colors must be RGB (or RGBA) triples with values in [0, 1], e.g. (1.0, 0.5, 0.0); "
            f"got {[tuple(c) for c in swatches.tolist()]}; divide 0-255 colours by 255"
        )
    swatches = np.uint8(swatches * 255).reshape(1, n_components, 3)
    swatch_hsv = cv2.cvtColor(swatches, cv2.COLOR_RGB2HSV)[0]

    winner = maps.argmax(axis=0)
    strength = np.take_along_axis(maps, winner[None], axis=0)[0]
    hsv = swatch_hsv[winner]
    hsv[..., 2] = np.uint8(np.clip(255 * strength, 0, 255))
    painted = np.float32(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)) / 255

    result = img * image_weight + painted * (1 - image_weight)
    result = np.uint8(np.clip(result, 0, 1) * 255)

    if concept_labels is not None:
        colors_rgb = [tuple(int(v) for v in swatches[0, i]) for i in range(n_components)]
        legend = _legend_panel(result.shape[0], result.shape[1], colors_rgb, concept_labels)
        result = np.hstack((result, legend))
    return result
