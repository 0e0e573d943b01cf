"""Explaining one image: a CAM, guided backpropagation and guided Grad-CAM, as pictures.

This is what ``usage_examples/cam.py`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from camlib.guided_backprop import GuidedBackpropReLUModel, guided_grad_cam
from camlib.models.images import image_grid
from camlib.registry import get_method, make_cam
from camlib.utils.image import deprocess_image, show_cam_on_image
from camlib.utils.model_state import eval_mode

__all__ = ["Explanation", "explain"]


@dataclass
class Explanation:
    """What :func:`explain` computed for one image.

    Attributes:
        cam: The CAM blended over the image, uint8 RGB; a grid (rows: classes,
            columns: layers) when several classes or ``per_layer`` were asked for.
        gb: The guided-backpropagation map, uint8 RGB (one row per class).
        cam_gb: Guided Grad-CAM, uint8 RGB, laid out like ``cam``.
        grayscale_cams: The raw maps, float32 ``[classes, layers, H, W]`` in [0, 1]
            (one layer, the aggregate, without ``per_layer``).
        categories: The explained class indices, one per row.
        scores: The model's output for the image, float32 ``[num_outputs]``.
        layer_names: Caption of each column.
        class_labels: Caption of each row.
    """

    cam: np.ndarray
    gb: np.ndarray
    cam_gb: np.ndarray
    grayscale_cams: np.ndarray
    categories: List[int]
    scores: np.ndarray
    layer_names: List[str] = field(default_factory=list)
    class_labels: List[str] = field(default_factory=list)


def _check_categories(categories: Optional[Sequence[int]], num_outputs: int) -> Optional[List[int]]:
    if categories is None:
        return None
    if isinstance(categories, (int, np.integer)) and not isinstance(categories, bool):
        categories = [int(categories)]
    values = list(categories)
    if not values:
        raise ValueError("categories is empty; pass one or more class indices, or None for the top class")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"class indices must be ints, got {value!r}")
        if not 0 <= value < num_outputs:
            raise ValueError(
                f"class index {value} is out of range: the model has {num_outputs} outputs (0 to {num_outputs - 1})"
            )
    return [int(v) for v in values]


def explain(
    model: nn.Module,
    input_tensor: torch.Tensor,
    rgb_img: np.ndarray,
    method: str,
    target_layers: List[nn.Module],
    *,
    categories: Optional[Sequence[int]] = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    per_layer: bool = False,
    layer_names: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Explanation:
    """Explain one image: a CAM, guided backpropagation and guided Grad-CAM.

    This is what ``usage_examples/cam.py`` writes as ``{method}_cam.jpg``,
    ``{method}_gb.jpg`` and ``{method}_cam_gb.jpg``. The model is left as it
    was (every camlib method restores hooks, ReLUs and training flags).

    Args:
        model: A classifier returning ``[1, num_outputs]`` scores.
        input_tensor: The preprocessed image, ``[1, 3, H, W]``, on the model's device.
        rgb_img: The same image as float ``[H, W, 3]`` RGB in [0, 1], for the overlay.
        method: A registered method name (:func:`camlib.registry.method_names`).
        target_layers: The target layers.
        categories: Class indices to explain, one grid row each; None: the top class.
        aug_smooth: Average over test-time augmentations.
        eigen_smooth: Take the first principal component of the weighted activations.
        per_layer: One map per target layer, side by side (columns), instead of their mean.
        layer_names: Captions of the target layers (used with ``per_layer``).
        class_names: Names of the model's outputs, for row captions.
        reshape_transform: Passed to the CAM method.
        batch_size: Passed to the CAM method (see :func:`make_cam`).
        progress: Passed to the CAM method (see :func:`make_cam`).

    Returns:
        An :class:`Explanation`.

    Raises:
        TypeError: If the input is not a ``[1, C, H, W]`` tensor or a class
            index is not an int.
        ValueError: If a class index is out of range, or the image and input
            sizes differ.

    Example:
        >>> import numpy as np, torch, torchvision
        >>> model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
        >>> rgb = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
        >>> x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        >>> result = explain(model, x, rgb, "gradcam", [model.layer3[-1], model.layer4[-1]],
        ...                  categories=[0, 2], per_layer=True, progress=False)
        >>> result.grayscale_cams.shape, result.categories
        ((2, 2, 64, 64), [0, 2])
    """
    if not isinstance(input_tensor, torch.Tensor) or input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        shape = (
            tuple(input_tensor.shape)
            if isinstance(input_tensor, torch.Tensor)
            else type(input_tensor).__name__
        )
        raise TypeError(f"input_tensor must be one preprocessed image [1, C, H, W], got {shape}")
    if (
        not isinstance(rgb_img, np.ndarray)
        or rgb_img.ndim != 3
        or rgb_img.shape[:2] != tuple(input_tensor.shape[2:])
    ):
        shape = rgb_img.shape if isinstance(rgb_img, np.ndarray) else type(rgb_img).__name__
        raise ValueError(
            f"rgb_img must be the input image as [H, W, 3] with H, W = {tuple(input_tensor.shape[2:])}, got {shape}"
        )
    info = get_method(method)
    if per_layer and not info.capabilities.per_layer:
        raise ValueError(
            f"per_layer does not apply to {info.name}, which combines its layers itself; "
            "compare layers with another method (e.g. gradcam)"
        )
    rgb_img = np.clip(rgb_img.astype(np.float32), 0.0, 1.0)
    with torch.no_grad(), eval_mode(model):
        scores = model(input_tensor)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise TypeError(
            "explain needs a classifier returning [1, num_outputs] scores, got "
            f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}"
        )
    scores_np = scores[0].float().cpu().numpy()
    checked = _check_categories(categories, scores.shape[1])
    chosen = checked if checked is not None else [int(scores_np.argmax())]

    cam = make_cam(
        info.name,
        model,
        target_layers,
        reshape_transform=reshape_transform,
        batch_size=batch_size,
        progress=progress,
    )
    guided = GuidedBackpropReLUModel(model)
    maps, cam_rows, gb_rows, cam_gb_rows = [], [], [], []
    for category in chosen:
        grayscale = cam(
            input_tensor,
            [cam.class_target(category)],
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            per_layer=per_layer,
        )
        layers = grayscale[0] if per_layer else grayscale  # [L, H, W]
        maps.append(layers)
        gb = guided(input_tensor, target_category=category)  # [H, W, 3]
        cam_rows.append([show_cam_on_image(rgb_img, layer_map, use_rgb=True) for layer_map in layers])
        cam_gb_rows.append([deprocess_image(guided_grad_cam(layer_map, gb)) for layer_map in layers])
        gb_rows.append([deprocess_image(gb)])

    n_layers = maps[0].shape[0]
    names = list(layer_names) if layer_names is not None and len(layer_names) == n_layers else []
    labels = [
        f"{c} {class_names[c]}" if class_names is not None and c < len(class_names) else f"class {c}"
        for c in chosen
    ]
    row_labels = labels if len(chosen) > 1 else None
    column_labels = names if (per_layer and n_layers > 1 and names) else None
    return Explanation(
        cam=image_grid(cam_rows, row_labels=row_labels, column_labels=column_labels),
        gb=image_grid(gb_rows, row_labels=row_labels),
        cam_gb=image_grid(cam_gb_rows, row_labels=row_labels, column_labels=column_labels),
        grayscale_cams=np.stack(maps).astype(np.float32),
        categories=chosen,
        scores=scores_np,
        layer_names=names,
        class_labels=labels,
    )
