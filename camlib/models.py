"""Models, checkpoints, images and the explain pipeline behind ``usage_examples/cam.py``.

The command-line examples are thin front ends over this module, so that any
other front end (a notebook, a service, a ``camlib explain`` command) gets the
same behaviour:

* :func:`build_model` builds a torchvision classification architecture by name
  (``"resnet50"``, ``"densenet121"``, ``"vit_b_16"``, ``"swin_t"``, ...), a timm
  model (``"timm:deit_tiny_patch16_224"``, when timm is installed) or the
  bundled demo model (``"demo"``), with pretrained weights, random weights or a
  local checkpoint, and an optional retrained head (``num_classes``);
* :func:`load_checkpoint` loads a state_dict, or a training checkpoint holding
  one, with ``weights_only=True``, strips ``module.`` prefixes left by
  DataParallel/DDP, and says exactly which keys do not match;
* :func:`default_target_layers` knows a sensible target layer per architecture
  family; :func:`resolve_target_layers` resolves paths such as ``"layer4[-1]"``
  without ``eval``;
* :func:`make_cam` maps the command-line method names (``"gradcam"``,
  ``"gradcam++"``, ...) to CAM objects;
* :func:`load_image` and :func:`default_preprocessing` read and size an image
  the way the model expects;
* :func:`explain` runs a CAM, guided backpropagation and guided Grad-CAM for
  one image and returns the three pictures the command line writes.

Everything here is offline except ``weights="DEFAULT"`` for torchvision and
timm models, which downloads the weights once (into torch's hub cache) and
raises a :class:`RuntimeError` naming the alternatives when that fails.

Example:
    >>> from camlib.models import build_model, default_target_layers, explain, make_cam
    >>> model = build_model("resnet18", weights="none", num_classes=4)
    >>> [type(layer).__name__ for layer in default_target_layers(model, "resnet18")]
    ['BasicBlock']
    >>> make_cam("gradcam++", model, default_target_layers(model, "resnet18")).__class__.__name__
    'GradCAMPlusPlus'
"""

from __future__ import annotations

import difflib
import http.client
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from camlib.ablation_cam import AblationCAM
from camlib.base_cam import BaseCAM
from camlib.cam import CAM
from camlib.eigen_cam import EigenCAM
from camlib.eigen_grad_cam import EigenGradCAM
from camlib.fem import FEM
from camlib.finer_cam import FinerCAM
from camlib.fullgrad_cam import FullGrad
from camlib.grad_cam import GradCAM
from camlib.grad_cam_elementwise import GradCAMElementWise
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.guided_backprop import GuidedBackpropReLUModel, guided_grad_cam
from camlib.hirescam import HiResCAM
from camlib.kpca_cam import KPCA_CAM
from camlib.layer_cam import LayerCAM
from camlib.score_cam import ScoreCAM
from camlib.seg_eigen_cam import SegEigenCAM
from camlib.shapley_cam import ShapleyCAM
from camlib.utils.find_layers import get_layer_by_path
from camlib.utils.image import deprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.xgrad_cam import XGradCAM

__all__ = [
    "CAM_METHODS",
    "CHECKPOINT_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Explanation",
    "Preprocessing",
    "build_model",
    "candidate_target_layer_paths",
    "class_names",
    "default_preprocessing",
    "default_target_layer_paths",
    "default_target_layers",
    "explain",
    "image_grid",
    "load_checkpoint",
    "load_image",
    "make_cam",
    "model_names",
    "resize_image",
    "resolve_device",
    "resolve_target_layers",
]

#: ImageNet per-channel mean (RGB), used by torchvision's pretrained classifiers.
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation (RGB).
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Command-line method names (those of pytorch-grad-cam's ``cam.py``, plus ``"cam"``) -> CAM class.
#: ``"finercam"`` builds a :class:`~camlib.finer_cam.FinerCAM` over :class:`~camlib.grad_cam.GradCAM`.
CAM_METHODS: Mapping[str, type] = MappingProxyType(
    {
        "gradcam": GradCAM,
        "hirescam": HiResCAM,
        "gradcam++": GradCAMPlusPlus,
        "scorecam": ScoreCAM,
        "xgradcam": XGradCAM,
        "ablationcam": AblationCAM,
        "eigencam": EigenCAM,
        "eigengradcam": EigenGradCAM,
        "layercam": LayerCAM,
        "fullgrad": FullGrad,
        "gradcamelementwise": GradCAMElementWise,
        "kpcacam": KPCA_CAM,
        "fem": FEM,
        "shapleycam": ShapleyCAM,
        "finercam": FinerCAM,
        "segeigencam": SegEigenCAM,
        "cam": CAM,
    }
)

#: Keys under which training checkpoints commonly keep the model's state_dict, tried in this order.
CHECKPOINT_KEYS: Tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
)

_TIMM_PREFIX = "timm:"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile

# (name pattern, default target layer paths, layer paths worth comparing with per_layer=True).
_TORCHVISION_LAYERS: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    (
        r"(resnet|resnext|wide_resnet)\d",
        ("layer4[-1]",),
        ("layer2[-1]", "layer3[-1]", "layer4[-1]"),
    ),
    (r"vgg\d", ("features[-1]",), ()),
    (r"alexnet$", ("features[-1]",), ()),
    (
        r"densenet\d",
        ("features[-1]",),
        ("features.denseblock2", "features.denseblock3", "features[-1]"),
    ),
    (r"mobilenet_v[23]", ("features[-1]",), ()),
    (r"efficientnet_", ("features[-1]",), ("features[4]", "features[6]", "features[-1]")),
    (r"convnext_", ("features[-1]",), ("features[3]", "features[5]", "features[-1]")),
    (r"mnasnet", ("layers[-1]",), ()),
    (r"regnet_", ("trunk_output[-1]",), ("trunk_output[-3]", "trunk_output[-2]", "trunk_output[-1]")),
    (r"shufflenet_v2", ("conv5",), ("stage3", "stage4", "conv5")),
    (r"squeezenet", ("features[-1]",), ()),
    (r"googlenet$", ("inception5b",), ("inception4e", "inception5a", "inception5b")),
    (r"inception_v3$", ("Mixed_7c",), ("Mixed_6e", "Mixed_7b", "Mixed_7c")),
    # The last block's patch tokens never reach the class token, so their gradient
    # is zero there: take the block before it.
    (
        r"vit_",
        ("encoder.layers[-2].ln_1",),
        ("encoder.layers[-8].ln_1", "encoder.layers[-5].ln_1", "encoder.layers[-2].ln_1"),
    ),
    (
        r"swin_",
        ("features[-1][-1].norm1",),
        ("features[3][-1].norm1", "features[5][-1].norm1", "features[-1][-1].norm1"),
    ),
    (r"maxvit_", ("blocks[-1]",), ("blocks[-3]", "blocks[-2]", "blocks[-1]")),
)

_TIMM_LAYERS: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    (
        r"(vit|deit|beit|eva|cait)",
        ("blocks[-2].norm1",),
        ("blocks[-8].norm1", "blocks[-5].norm1", "blocks[-2].norm1"),
    ),
    (
        r"swin",
        ("layers[-1].blocks[-1].norm1",),
        ("layers[-3].blocks[-1].norm1", "layers[-2].blocks[-1].norm1", "layers[-1].blocks[-1].norm1"),
    ),
    (r"(resnet|resnext|wide_resnet|seresnet)", ("layer4[-1]",), ("layer2[-1]", "layer3[-1]", "layer4[-1]")),
    (r"convnext", ("stages[-1]",), ("stages[-3]", "stages[-2]", "stages[-1]")),
    (r"(maxvit|maxxvit|coatnet)", ("stages[-1]",), ("stages[-3]", "stages[-2]", "stages[-1]")),
    (r"regnet[xy]_", ("s4",), ("s2", "s3", "s4")),
    (r"(efficientnet|mobilenet|mixnet|tf_efficientnet)", ("bn2",), ()),
    (r"densenet", ("features[-1]",), ()),
)

_DEMO_LAYERS: Tuple[Tuple[str, ...], Tuple[str, ...]] = (
    ("features[-1]",),
    ("features[3]", "features[5]", "features[-1]"),
)


# --------------------------------------------------------------------------- names and devices


def _torchvision_names() -> List[str]:
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
    return ["demo", *sorted(_torchvision_names())]


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


# --------------------------------------------------------------------------- building models


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
    elif name.startswith(_TIMM_PREFIX):
        model = _build_timm(name[len(_TIMM_PREFIX) :], kind, weights, num_classes, image_size)
    elif name in _torchvision_names():
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
    elif name in _torchvision_names():
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
        names = list(categories) if categories else None
    if names is not None and num_outputs is not None and len(names) != num_outputs:
        return None
    return names


# --------------------------------------------------------------------------- checkpoints


def _read_checkpoint(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise TypeError(
                f"{path} holds a pickled {found.group(1)} object, which torch.load(weights_only=True) refuses "
                "because unpickling it could run arbitrary code. If it is a whole model saved with "
                "torch.save(model), and you trust the file, re-save its weights: "
                "torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pt')"
            ) from err
        raise ValueError(
            f"{path} is not a PyTorch checkpoint: torch.load could not read it ({_first_line(err)})"
        ) from err
    except Exception as err:  # torch.load raises KeyError, IndexError, RuntimeError... for non-checkpoints
        raise ValueError(
            f"{path} is not a PyTorch checkpoint: torch.load could not read it "
            f"({type(err).__name__}: {_first_line(err)}); expected a file written by torch.save(model.state_dict(), path)"
        ) from err


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _find_state_dict(
    obj: Any, depth: int = 0
) -> Optional[Tuple[Mapping[str, torch.Tensor], Tuple[str, ...]]]:
    """The state_dict in ``obj`` and the keys leading to it, or None."""
    if _is_state_dict(obj):
        return obj, ()
    if isinstance(obj, Mapping) and depth < 3:
        for key in CHECKPOINT_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key], depth + 1)
                if found is not None:
                    return found[0], (key, *found[1])
    return None


def _strip_wrapper_prefixes(key: str, model_keys: set) -> str:
    while key not in model_keys:
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key
    return key


def _align_keys(state: Mapping[str, torch.Tensor], model_keys: set) -> Dict[str, torch.Tensor]:
    """Strip DataParallel/DDP/torch.compile prefixes, and a wrapper's attribute name
    (``model.`` in a Lightning checkpoint) when every key has it and the model's keys do not."""
    aligned = {_strip_wrapper_prefixes(k, model_keys): v for k, v in state.items()}
    if not model_keys.intersection(aligned):
        heads = {k.split(".", 1)[0] for k in aligned}
        if len(heads) == 1 and all("." in k for k in aligned):
            stripped = {k.split(".", 1)[1]: v for k, v in aligned.items()}
            if model_keys.intersection(stripped):
                return stripped
    return aligned


def _last_linear_name(model: nn.Module) -> Optional[str]:
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return name


def _listing(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_checkpoint(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Load a checkpoint's weights into ``model``, safely and with clear errors.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``,
    which refuses pickled code. It may hold a plain state_dict or a training
    checkpoint dict that holds one under a common key (:data:`CHECKPOINT_KEYS`:
    ``state_dict``, ``model_state_dict``, ``model``, ``net``, ...; nested up to
    three levels). ``module.`` prefixes left by ``nn.DataParallel`` or DDP,
    ``_orig_mod.`` prefixes left by ``torch.compile``, and a wrapper's attribute
    name shared by every key (``model.`` in Lightning checkpoints) are stripped.
    Every parameter and buffer must then match by name and shape (old
    checkpoints without BatchNorm's ``num_batches_tracked`` are accepted).

    Args:
        model: The model to load into; its architecture must match the checkpoint.
        path: The checkpoint file.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        TypeError: If ``model`` is not a module, the file holds a pickled object
            (such as a whole model saved with ``torch.save(model)``) that
            ``weights_only=True`` refuses, or it holds no state_dict.
        ValueError: If the file is not a PyTorch checkpoint, or its keys or
            shapes do not match the model (the message lists the missing and
            unexpected keys, and suggests ``num_classes`` for a retrained head).
        FileNotFoundError: If ``path`` does not exist.

    Example:
        >>> import tempfile, os, torch
        >>> source = torch.nn.DataParallel(torch.nn.Linear(3, 2))
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
        >>> torch.save({"epoch": 3, "state_dict": source.state_dict()}, path)
        >>> model = load_checkpoint(torch.nn.Linear(3, 2), path)
        >>> bool(torch.equal(model.weight, source.module.weight))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}"
        )
    obj = _read_checkpoint(path)
    found = _find_state_dict(obj)
    if found is None:
        if isinstance(obj, Mapping):
            keys = [repr(k) for k in list(obj)[:10]]
            received = f"a dict with keys {', '.join(keys)}{', ...' if len(obj) > 10 else ''}"
        else:
            received = f"a {type(obj).__name__}"
        raise TypeError(
            f"{path} holds {received}, not a state_dict: expected a dict of tensors "
            f"(torch.save(model.state_dict(), path)) or a checkpoint dict holding one under one of "
            f"{', '.join(repr(k) for k in CHECKPOINT_KEYS)}"
        )
    state, _ = found
    model_state = model.state_dict()
    model_keys = set(model_state)
    aligned = _align_keys(state, model_keys)
    missing = [k for k in model_state if k not in aligned and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in aligned if k not in model_keys]
    mismatched = [
        k for k in aligned if k in model_keys and tuple(aligned[k].shape) != tuple(model_state[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(aligned[k].shape)} vs {tuple(model_state[k].shape)}" for k in mismatched]
            problems.append(f"shape mismatches (checkpoint vs model): {_listing(shapes, 4)}")
        hint = "Check that the model is the architecture the checkpoint was trained with."
        head = _last_linear_name(model)
        head_weight = f"{head}.weight" if head is not None else None
        if head_weight in mismatched and len(mismatched) <= 2:
            outputs = aligned[head_weight].shape[0]
            hint = (
                f"The checkpoint's classifier has {outputs} outputs: build the model with "
                f"num_classes={outputs} (--num-classes {outputs})."
            )
        raise ValueError(f"{path} does not match {type(model).__name__}: {'; '.join(problems)}. {hint}")
    model.load_state_dict(aligned, strict=False)
    return model


# --------------------------------------------------------------------------- target layers


def _layer_table(name: str) -> Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    if name == "demo":
        return _DEMO_LAYERS
    if name.startswith(_TIMM_PREFIX):
        table, key = _TIMM_LAYERS, name[len(_TIMM_PREFIX) :]
    else:
        table, key = _TORCHVISION_LAYERS, name
    for pattern, default, candidates in table:
        if re.match(pattern, key):
            return default, candidates or default
    return None


def default_target_layer_paths(name: str) -> List[str]:
    """Paths of the default target layers of an architecture, as strings.

    Args:
        name: A model name accepted by :func:`build_model`.

    Returns:
        The paths, e.g. ``["layer4[-1]"]`` for a ResNet, ``["encoder.layers[-2].ln_1"]``
        for a torchvision ViT (not the last block, whose patch tokens get no
        gradient), ``["features[-1][-1].norm1"]`` for a Swin.

    Raises:
        ValueError: If camlib knows no default for this architecture; the
            message asks for explicit target layers.

    Example:
        >>> default_target_layer_paths("densenet121"), default_target_layer_paths("swin_t")
        (['features[-1]'], ['features[-1][-1].norm1'])
    """
    table = _layer_table(name)
    if table is None:
        raise ValueError(
            f"no default target layer is known for {name!r}; pass one with --target-layer "
            "(a path such as 'layer4[-1]'; list them with [n for n, _ in model.named_modules()])"
        )
    return list(table[0])


def candidate_target_layer_paths(name: str) -> List[str]:
    """Layers worth comparing with ``per_layer=True``, from shallow to deep.

    For architectures with a clear stage structure these are the ends of the
    last few stages; otherwise just the default target layer.

    Args:
        name: A model name accepted by :func:`build_model`.

    Returns:
        Layer paths, the default target layer last.

    Raises:
        ValueError: If camlib knows no default for this architecture.

    Example:
        >>> candidate_target_layer_paths("resnet50")
        ['layer2[-1]', 'layer3[-1]', 'layer4[-1]']
    """
    table = _layer_table(name)
    if table is None:
        default_target_layer_paths(name)  # raises the explanatory ValueError
    return list(table[1])


def resolve_target_layers(model: nn.Module, paths: Sequence[str]) -> List[nn.Module]:
    """Resolve layer paths such as ``"layer4[-1]"`` or ``"features.denseblock4"``, without ``eval``.

    Args:
        model: The model holding the layers.
        paths: One or more paths (see :func:`camlib.utils.find_layers.get_layer_by_path`).

    Returns:
        The layers, in the order of ``paths``.

    Raises:
        TypeError: If ``paths`` is a single string or not a sequence.
        ValueError: If a path does not exist; the message lists close candidates.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None)
        >>> resolve_target_layers(model, ["layer4[-1]"])[0] is model.layer4[1]
        True
    """
    if isinstance(paths, str) or not isinstance(paths, Sequence):
        raise TypeError(f"paths must be a list of layer path strings, got {paths!r}")
    if not paths:
        raise ValueError("paths is empty; pass at least one layer path such as 'layer4[-1]'")
    layers = []
    for path in paths:
        try:
            layers.append(get_layer_by_path(model, path))
        except ValueError as err:
            if "Close matches" in str(err):
                raise
            top = [name for name, _ in model.named_children()]
            raise ValueError(f"{err} Top-level modules of {type(model).__name__}: {', '.join(top)}.") from err
    return layers


def default_target_layers(model: nn.Module, name: str) -> List[nn.Module]:
    """The default target layers of ``model``, built by :func:`build_model` from ``name``.

    Args:
        model: The model.
        name: Its architecture name (``"resnet50"``, ``"demo"``, ...).

    Returns:
        The layers (see :func:`default_target_layer_paths`); for ``"demo"``,
        :func:`camlib.demo.demo_target_layers`.

    Raises:
        ValueError: If no default is known, or the model does not have the
            layer (it is not the architecture ``name`` says).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.densenet121(weights=None)
        >>> default_target_layers(model, "densenet121")[0] is model.features.norm5
        True
    """
    if name == "demo":
        from camlib.demo import DemoNet, demo_target_layers

        if isinstance(model, DemoNet):
            return demo_target_layers(model)
    return resolve_target_layers(model, default_target_layer_paths(name))


# --------------------------------------------------------------------------- CAM methods


def make_cam(
    method: str,
    model: nn.Module,
    target_layers: List[nn.Module],
    *,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Union[BaseCAM, FinerCAM]:
    """Build the CAM object for a command-line method name.

    Args:
        method: A key of :data:`CAM_METHODS` (``"gradcam"``, ``"gradcam++"``,
            ``"scorecam"``, ..., ``"cam"``), case-insensitive.
        model: The model to explain.
        target_layers: Its target layers (``"fullgrad"`` ignores them and uses
            every layer with a bias).
        reshape_transform: Optional activation reshaping (tokens are laid out
            automatically when None).
        batch_size: Batch size of the masked forward passes of ScoreCAM and
            AblationCAM (None: each method's default).
        progress: Show progress bars (None: on unless ``CAMLIB_DISABLE_PROGRESS=1``).

    Returns:
        The CAM object; use it as a context manager or call it directly.

    Raises:
        ValueError: If ``method`` is not a known name; the message lists them.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None)
        >>> type(make_cam("finercam", model, [model.layer4[-1]])).__name__
        'FinerCAM'
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name string, got {type(method).__name__}")
    key = method.strip().lower()
    if key not in CAM_METHODS:
        close = difflib.get_close_matches(key, list(CAM_METHODS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {method!r}.{hint} Expected one of: {', '.join(CAM_METHODS)}")
    cls = CAM_METHODS[key]
    if cls is FinerCAM:
        return FinerCAM(model, target_layers, reshape_transform, base_method=GradCAM)
    if cls is FullGrad:
        return FullGrad(model, [], reshape_transform)
    kwargs: Dict[str, Any] = {}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if progress is not None:
        kwargs["progress"] = progress
    return cls(model, target_layers, reshape_transform, **kwargs)


# --------------------------------------------------------------------------- images


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
    if name.startswith(_TIMM_PREFIX) and model is not None:
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
    BGR to RGB and scaled by the integer type's maximum.

    Args:
        path: The image file (PNG, JPEG, TIFF, BMP, ...).
        image_size: None to keep the size, an int for a square, or ``(height, width)``.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1].

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If OpenCV cannot decode it.

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
    if not path.is_file():
        raise FileNotFoundError(
            f"image {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}"
        )
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
        rgb = np.clip(rgb.astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(resize_image(rgb, image_size), dtype=np.float32)


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


# --------------------------------------------------------------------------- the pipeline


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
        method: A key of :data:`CAM_METHODS`.
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
    if per_layer and isinstance(method, str) and method.strip().lower() == "fullgrad":
        raise ValueError(
            "per_layer does not apply to fullgrad, which always combines every layer with a bias; "
            "compare layers with another method (e.g. gradcam)"
        )
    rgb_img = np.clip(rgb_img.astype(np.float32), 0.0, 1.0)
    training = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            scores = model(input_tensor)
    finally:
        for module, flag in training:
            module.training = flag
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise TypeError(
            "explain needs a classifier returning [1, num_outputs] scores, got "
            f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}"
        )
    scores_np = scores[0].float().cpu().numpy()
    checked = _check_categories(categories, scores.shape[1])
    chosen = checked if checked is not None else [int(scores_np.argmax())]

    cam = make_cam(
        method,
        model,
        target_layers,
        reshape_transform=reshape_transform,
        batch_size=batch_size,
        progress=progress,
    )
    guided = GuidedBackpropReLUModel(model)
    maps, cam_rows, gb_rows, cam_gb_rows = [], [], [], []
    for category in chosen:
        if isinstance(cam, FinerCAM):
            grayscale = cam(
                input_tensor,
                None,
                eigen_smooth=eigen_smooth,
                target_idx=category,
                aug_smooth=aug_smooth,
                per_layer=per_layer,
            )
        else:
            grayscale = cam(
                input_tensor,
                [ClassifierOutputTarget(category)],
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
