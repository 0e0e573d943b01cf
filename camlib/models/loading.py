"""The one model loader of the front ends: a model ready to explain, with its input settings.

``usage_examples/cam.py``, the other examples and ``camlib explain`` all load
their model with :func:`load_model`: by name (:func:`~camlib.models.builders.build_model`)
or as a model object, with its weights, head size and device, the input size
and normalisation it expects (:func:`~camlib.models.images.default_preprocessing`),
and its target layers (paths such as ``"layer4[-1]"``, the architecture's
default, or a few layers to compare with ``per_layer``). The model is checked
once on a zero image of the input size, which also gives its number of outputs.

Example:
    >>> loaded = load_model("resnet18", weights="none", num_classes=3, image_size=64)
    >>> loaded.layer_paths, loaded.image_size, loaded.num_outputs
    (['layer4[-1]'], (64, 64), 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from camlib.models.builders import build_model, class_names, resolve_device
from camlib.models.images import IMAGENET_MEAN, IMAGENET_STD, default_preprocessing
from camlib.models.layers import (
    candidate_target_layer_paths,
    default_target_layer_paths,
    resolve_target_layers,
)
from camlib.utils.model_state import eval_mode

__all__ = ["LoadedModel", "layer_path", "load_model", "rgb_triple", "size_pair"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain, and how its inputs are prepared.

    Attributes:
        net: The model, on its device (built models are in eval mode; a model
            object is left in the mode it was given in).
        name: The model's name, or ``module:<class>`` for a model object.
        target_layers: The target layers (modules of ``net``).
        layer_paths: Their paths, as given or found in ``net.named_modules()``.
        image_size: ``(height, width)`` of its input.
        mean: Normalisation mean (RGB).
        std: Normalisation std (RGB).
        num_outputs: Number of outputs (classes).
        class_names: Names of the outputs, when known.
        device: The device of its parameters.
    """

    net: nn.Module
    name: str
    target_layers: List[nn.Module]
    layer_paths: List[str]
    image_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_outputs: int
    class_names: Optional[List[str]]
    device: torch.device


def size_pair(image_size: Union[int, Sequence[int], None]) -> Optional[Tuple[int, int]]:
    """``N`` or ``(H, W)`` (or a one-element list) as ``(H, W)``; None stays None.

    Raises:
        ValueError: If it is not one or two positive ints.

    Example:
        >>> size_pair(64), size_pair([32, 48]), size_pair(None)
        ((64, 64), (32, 48), None)
    """
    if image_size is None:
        return None
    values = [image_size] if isinstance(image_size, (int, np.integer)) else list(image_size)
    if len(values) not in (1, 2) or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values
    ):
        raise ValueError(f"image size takes one or two positive ints (N, or H W), got {image_size!r}")
    return (int(values[0]), int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def rgb_triple(name: str, values: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    """Three numbers (a per-channel mean or std) as a tuple of floats; None stays None.

    Raises:
        ValueError: If there are not exactly three values (the message names ``name``).

    Example:
        >>> rgb_triple("mean", [0, 0.5, 1]), rgb_triple("std", None)
        ((0.0, 0.5, 1.0), None)
    """
    if values is None:
        return None
    result = tuple(float(v) for v in values)
    if len(result) != 3:
        raise ValueError(f"{name} takes three values (R G B), got {len(result)}")
    return result


def layer_path(net: nn.Module, layer: nn.Module) -> str:
    """The path of ``layer`` in ``net.named_modules()``.

    Raises:
        ValueError: If ``layer`` is not a submodule of ``net``.
    """
    for name, module in net.named_modules():
        if module is layer:
            return name
    raise ValueError(
        f"target layer {repr(layer).splitlines()[0]} is not a submodule of the model; "
        "pass a module from model.named_modules() or a path such as 'layer4[-1]'"
    )


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def load_model(
    model: Union[str, nn.Module],
    *,
    weights: Union[str, os.PathLike, None] = "DEFAULT",
    num_classes: Optional[int] = None,
    device: Union[str, torch.device, None] = "cpu",
    image_size: Union[int, Sequence[int], None] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    target_layers: Optional[Sequence[Union[str, nn.Module]]] = None,
    per_layer: bool = False,
) -> LoadedModel:
    """Load a model by name (or take a model object) and find everything needed to explain it.

    Args:
        model: A name for :func:`~camlib.models.builders.build_model`
            (``"demo"``, ``"resnet50"``, ``"timm:<name>"``, ...) or a model
            object (used as it is, on its own device; then ``image_size`` is
            required, ``mean``/``std`` default to ImageNet's and
            ``target_layers`` are required unless it is the demo model).
        weights: ``"DEFAULT"``, ``"none"`` or a checkpoint path (names only).
        num_classes: Outputs of a retrained head (names only).
        device: Where to build a named model.
        image_size: Input size, ``N`` or ``(H, W)``; default: the architecture's.
        mean: Normalisation mean (RGB); default: the architecture's.
        std: Normalisation std (RGB); default: the architecture's.
        target_layers: Layer paths such as ``"layer4[-1]"`` (or modules of a
            model object); default: the architecture's usual layer, or with
            ``per_layer`` a few layers from shallow to deep.
        per_layer: Default to several layers to compare (see
            :func:`~camlib.models.layers.candidate_target_layer_paths`).

    Returns:
        The :class:`LoadedModel`.

    Raises:
        ValueError: If the model fails on a zero image of the input size or
            does not return ``[batch, classes]`` scores, a model object comes
            without ``image_size``/``target_layers``, or a setting is invalid
            (and the errors of :func:`~camlib.models.builders.build_model` and
            :func:`~camlib.models.layers.resolve_target_layers`).
        TypeError: If ``model`` is neither a name nor a module.
    """
    size = size_pair(image_size)
    mean = rgb_triple("mean", mean)
    std = rgb_triple("std", std)
    if isinstance(model, str):
        vit_size = size[0] if size is not None and size[0] == size[1] else None
        net = build_model(model, weights, num_classes, resolve_device(device), image_size=vit_size)
        preprocessing = default_preprocessing(model, net)
        size = size or preprocessing.image_size
        mean = mean or tuple(preprocessing.mean)
        std = std or tuple(preprocessing.std)
        if target_layers:
            paths = [str(p) for p in target_layers]
        elif per_layer:
            paths = candidate_target_layer_paths(model)
        else:
            paths = default_target_layer_paths(model)
        layers = resolve_target_layers(net, paths)
        description = model
    elif isinstance(model, nn.Module):
        net = model
        if size is None:
            raise ValueError("image_size is needed with a model object (the input size it expects, e.g. 224)")
        mean = mean or IMAGENET_MEAN
        std = std or IMAGENET_STD
        if not target_layers:
            from camlib.demo import DemoNet

            if not isinstance(net, DemoNet):
                raise ValueError("target_layers is needed with a model object, e.g. ['layer4[-1]']")
            target_layers = ["features[-1]"]
        strings = [t for t in target_layers if isinstance(t, str)]
        resolved = iter(resolve_target_layers(net, strings) if strings else [])
        layers = [next(resolved) if isinstance(t, str) else t for t in target_layers]
        paths = [t if isinstance(t, str) else layer_path(net, t) for t in target_layers]
        description = f"module:{type(net).__qualname__}"
    else:
        raise TypeError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
    own_device = next((t.device for t in net.parameters()), torch.device("cpu"))
    with torch.no_grad(), eval_mode(net):
        try:
            scores = net(torch.zeros(1, 3, *size, device=own_device))
        except Exception as err:
            raise ValueError(
                f"the model fails on a {size[0]}x{size[1]} input ({_one_line(err)}); check the image size"
            ) from err
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"explaining needs a classifier returning [batch, classes] scores, got {shape}")
    num_outputs = int(scores.shape[1])
    names = class_names(model, num_outputs) if isinstance(model, str) else None
    return LoadedModel(
        net=net,
        name=description,
        target_layers=list(layers),
        layer_paths=list(paths),
        image_size=(int(size[0]), int(size[1])),
        mean=tuple(mean),
        std=tuple(std),
        num_outputs=num_outputs,
        class_names=names,
        device=own_device,
    )
