"""Classification models by name: torchvision, timm and the bundled demo model, with their weights.

:func:`build_model` builds an architecture by name with pretrained weights,
random weights or a local checkpoint (:func:`camlib.models.checkpoints.load_checkpoint`)
and an optional retrained head; :func:`resolve_device` checks a device name;
:func:`class_names` knows the class names of the bundled and torchvision models.

Everything is offline except ``weights="DEFAULT"`` for torchvision and timm
models, which downloads the weights once (into torch's hub cache) and raises a
:class:`RuntimeError` naming the alternatives when that fails.

Example:
    >>> model = build_model("resnet18", weights="none", num_classes=4)
    >>> model.fc.out_features, model.training
    (4, False)
"""

from __future__ import annotations

import difflib
import http.client
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
import torchvision
from torch import nn

from camlib.models.checkpoints import load_checkpoint

__all__ = ["TIMM_PREFIX", "build_model", "class_names", "model_names", "resolve_device", "torchvision_names"]

#: Prefix of timm model names (``"timm:<name>"``).
TIMM_PREFIX = "timm:"


def torchvision_names() -> List[str]:
    """torchvision's classification architectures (unsorted)."""
    return list(torchvision.models.list_models(module=torchvision.models))


def model_names() -> List[str]:
    """The names :func:`build_model` accepts, besides ``"timm:<name>"``.

    Returns:
        ``"demo"`` followed by torchvision's classification architectures, sorted.

    Example:
        >>> names = model_names()
        >>> names[0], "resnet50" in names, "swin_t" in names
        ('demo', True, True)
    """
    return ["demo", *sorted(torchvision_names())]


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """Check a device name and return it as a :class:`torch.device`.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (or a
            :class:`torch.device`); None means ``"cpu"``.

    Returns:
        The device.

    Raises:
        TypeError: If ``device`` is neither a string nor a device.
        ValueError: If the name is not a device, or the device is not available
            on this machine.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested, but CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r} requested, but this machine has {count} CUDA device(s): "
                f"use cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} requested, but MPS is not available here; use --device cpu")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; expected cpu, cuda, cuda:N or mps")
    return resolved


def _unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, model_names(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}.{hint} Use 'demo', a torchvision classification model "
        "(torchvision.models.list_models(module=torchvision.models), e.g. resnet50, densenet121, vit_b_16, "
        "swin_t) or 'timm:<name>' with timm installed."
    )


def _check_num_classes(num_classes: Optional[int]) -> Optional[int]:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes}")
    return int(num_classes)


def _weights_kind(weights: Union[str, os.PathLike, None]) -> str:
    """``"default"``, ``"none"`` or ``"path"``."""
    if weights is None:
        return "none"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be 'DEFAULT', 'none' or the path of a checkpoint, got {type(weights).__name__}"
        )
    text = os.fspath(weights)
    if isinstance(weights, str) and text.strip().lower() in ("default", "none"):
        return text.strip().lower()
    if not os.path.isfile(text):
        what = "is a directory" if os.path.isdir(text) else "does not exist"
        raise ValueError(
            f"weights must be 'DEFAULT' (pretrained), 'none' (random) or the path of a checkpoint file; "
            f"{text!r} is neither keyword and {what}"
        )
    return "path"


def build_model(
    name: str,
    weights: Union[str, os.PathLike, None] = "none",
    num_classes: Optional[int] = None,
    device: Union[str, torch.device, None] = "cpu",
    *,
    image_size: Optional[int] = None,
) -> nn.Module:
    """Build a classification model by name, with its weights, in eval mode.

    Args:
        name: ``"demo"`` (the bundled demo model), a torchvision classification
            architecture (``"resnet50"``, ``"densenet121"``, ``"vit_b_16"``,
            ``"swin_t"``, ... see :func:`model_names`) or ``"timm:<name>"``.
        weights: ``"DEFAULT"``: the pretrained weights (for ``"demo"``, the
            weights bundled with camlib, offline; for torchvision and timm, a
            download on first use); ``"none"`` (or None): random weights; or
            the path of a checkpoint, loaded with :func:`load_checkpoint`.
            (torchvision initialises a ViT's classifier to zeros, which makes
            every gradient zero: with ``"none"`` it gets small random weights.)
        num_classes: Outputs of a retrained head (e.g. 14 for a chest X-ray
            DenseNet121); None keeps the architecture's default. Not allowed
            with ``"DEFAULT"`` weights of a different class count.
        device: Where to put the model (see :func:`resolve_device`).
        image_size: Input size a torchvision ViT is built for, when its weights
            are not the pretrained ones (its position embeddings depend on it),
            or a timm ViT/Swin is built for; ignored by other architectures.

    Returns:
        The model, on ``device``, in eval mode.

    Raises:
        TypeError: If an argument has the wrong type, or the checkpoint does
            not hold a state_dict.
        ValueError: If the name, weights or ``num_classes`` are invalid, or the
            checkpoint does not match the architecture.
        RuntimeError: If ``"DEFAULT"`` weights cannot be downloaded (no internet).
        ImportError: If a ``"timm:"`` model is asked for and timm is not installed.

    Example:
        >>> model = build_model("resnet18", weights="none", num_classes=14)
        >>> model.fc.out_features, model.training
        (14, False)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name string, got {type(name).__name__}")
    num_classes = _check_num_classes(num_classes)
    kind = _weights_kind(weights)
    device = resolve_device(device)
    if name == "demo":
        model = _build_demo(kind, weights, num_classes)
    elif name.startswith(TIMM_PREFIX):
        model = _build_timm(name[len(TIMM_PREFIX) :], kind, weights, num_classes, image_size)
    elif name in torchvision_names():
        model = _build_torchvision(name, kind, weights, num_classes, image_size)
    else:
        raise _unknown_model_error(name)
    return model.to(device).eval()


def _build_demo(kind: str, weights: Any, num_classes: Optional[int]) -> nn.Module:
    from camlib.demo import NUM_CLASSES, DemoNet, load_demo_model

    if kind == "default":
        if num_classes not in (None, NUM_CLASSES):
            raise ValueError(
                f"the bundled demo weights have {NUM_CLASSES} classes, not {num_classes}; "
                "pass weights='none' or the path of your own checkpoint"
            )
        return load_demo_model()
    model = DemoNet(num_classes=num_classes or NUM_CLASSES)
    if kind == "path":
        load_checkpoint(model, weights)
    return model


def _offline_error(what: str, err: BaseException) -> RuntimeError:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return RuntimeError(
        f"could not download the pretrained weights of {what} ({type(err).__name__}: "
        f"{' '.join(str(err).split())}). --weights DEFAULT needs internet access once (the file is then "
        f"cached in {cache}); offline, pass --weights none (weights='none': random weights) or "
        "--weights PATH (a local checkpoint file)"
    )


def _build_torchvision(
    name: str, kind: str, weights: Any, num_classes: Optional[int], image_size: Optional[int]
) -> nn.Module:
    builder = torchvision.models.get_model_builder(name)
    kwargs: Dict[str, Any] = {}
    if kind == "default":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        categories = enum.meta.get("categories") or []
        if num_classes is not None and num_classes != len(categories):
            raise ValueError(
                f"the DEFAULT weights of {name} have {len(categories)} classes, not {num_classes}: "
                "--num-classes is for a retrained head, so pass its checkpoint with --weights PATH"
            )
        expected = enum.meta.get("min_size") if name.startswith("vit_") else None
        if image_size is not None and name.startswith("vit_") and expected and image_size != expected[0]:
            raise ValueError(
                f"the DEFAULT weights of {name} were trained at {expected[0]}x{expected[1]} pixels and "
                f"its position embeddings only fit that size, not {image_size}; use --image-size {expected[0]}"
            )
        try:
            return builder(weights=enum)
        except (OSError, http.client.HTTPException) as err:
            raise _offline_error(f"{name} ({enum.url})", err) from err
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith("vit_") and image_size is not None:
        kwargs["image_size"] = int(image_size)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True  # silences torchvision's FutureWarning about the default
    model = builder(weights=None, **kwargs)
    if kind == "path":
        load_checkpoint(model, weights)
    elif name.startswith("vit_"):
        _randomise_zero_head(model)
    return model


def _randomise_zero_head(model: nn.Module) -> None:
    """torchvision initialises a ViT's classifier to zeros, so every gradient (and
    every gradient-based map) of a randomly initialised ViT is zero; give it small
    random weights (seeded, without touching the global RNG) instead."""
    head = getattr(getattr(model, "heads", None), "head", None)
    if isinstance(head, nn.Linear) and not head.weight.any():
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)


def _build_timm(
    name: str, kind: str, weights: Any, num_classes: Optional[int], image_size: Optional[int]
) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"model 'timm:{name}' needs timm: pip install timm") from err
    kwargs: Dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if image_size is not None and re.match(r"(vit|deit|beit|eva|cait|swin)", name):
        # these timm models take their input size (and adapt pretrained position embeddings to it)
        kwargs["img_size"] = int(image_size)
    try:
        model = timm.create_model(name, pretrained=kind == "default", **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown timm model {name!r}.{hint} See timm.list_models().") from err
        raise
    except OSError as err:  # huggingface_hub and requests errors are OSErrors
        raise _offline_error(f"timm:{name}", err) from err
    if kind == "path":
        load_checkpoint(model, weights)
    return model


def class_names(name: str, num_outputs: Optional[int] = None) -> Optional[List[str]]:
    """Human-readable class names of a model's outputs, when they are known.

    Args:
        name: The model name given to :func:`build_model`.
        num_outputs: The model's number of outputs; names are returned only if
            they are as many (a retrained head has its own classes).

    Returns:
        The demo's class names, or ImageNet's for torchvision models (from the
        weights' metadata, no download), or None.

    Example:
        >>> class_names("demo")[:2]
        ['circle', 'square']
        >>> class_names("resnet50")[281]
        'tabby'
    """
    names: Optional[List[str]] = None
    if name == "demo":
        from camlib.demo import CLASS_NAMES

        names = list(CLASS_NAMES)
    elif name in torchvision_names():
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
        names = list(categories) if categories else None
    if names is not None and num_outputs is not None and len(names) != num_outputs:
        return None
    return names
