"""Checks at the boundary, written once: inputs, targets, target layers, the model's device.

Every front door of camlib (the CAM methods, the wrappers, the metrics, DFF)
checks what it is given with these functions, so the rules and the messages
are the same everywhere: a ``TypeError`` for a wrong type, a ``ValueError``
for a wrong value, each saying what was received and what to do.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "all_finite",
    "check_input_tensor",
    "check_target_layers",
    "check_targets",
    "model_device",
    "model_float_dtype",
]

_NO_DEVICE = object()


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every value of ``tensors`` is finite (no NaN, no Inf): one host sync.

    The usual case costs one float32 sum per tensor: a finite total means every
    value is finite (a NaN or Inf anywhere makes the sum NaN or Inf). Only a
    non-finite total, which finite values can also give by overflowing, runs the
    element-wise ``torch.isfinite`` check.
    """
    tensors = tuple(t for t in tensors if t.numel())
    if not tensors:
        return True
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors]
    total = sums[0] if len(sums) == 1 else torch.stack([s.to(sums[0].device) for s in sums]).sum()
    if math.isfinite(float(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def model_device(model: Any, default: Any = _NO_DEVICE) -> torch.device:
    """The device of the model's first parameter (or buffer).

    Args:
        model: an ``nn.Module`` (anything else has no device of its own).
        default: returned when the model has no parameters or buffers; without
            it, that case raises.

    Raises:
        ValueError: if the model has no parameters or buffers and no default is given.
    """
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_meta:
                raise ValueError(
                    f"the model ({type(model).__name__}) is on the meta device (its weights are not "
                    "materialised); load or initialise its weights first, e.g. model.to_empty(device='cpu') "
                    "then load_state_dict(...)"
                )
            return tensor.device
    if default is not _NO_DEVICE:
        return default if isinstance(default, torch.device) else torch.device(default)
    raise ValueError(
        f"the model ({type(model).__name__}) has no parameters or buffers, so its device cannot be "
        "determined and there is nothing to explain; pass the trained nn.Module itself"
    )


def model_float_dtype(model: Any) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter (or buffer); None if it has none."""
    if not isinstance(model, torch.nn.Module):
        return None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_input_tensor(
    input_tensor: Any,
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    ndims: Tuple[int, ...] = (4, 5),
    what: str = "",
) -> torch.Tensor:
    """Check an input batch and return a detached copy on ``device`` (and in ``dtype``).

    Args:
        input_tensor: the user's input.
        device: where the model is.
        dtype: the model's floating-point dtype (a float16 model gets float16 input); None keeps it.
        ndims: the accepted numbers of dimensions (4: ``[B, C, H, W]``, 5: ``[B, C, D, H, W]``).
        what: who needs this layout, for the message (e.g. ``"SESS"``).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong number of dimensions, an empty batch, NaN or Inf values.
    """
    if not isinstance(input_tensor, torch.Tensor):
        hint = (
            " (convert with torch.from_numpy or camlib.utils.image.preprocess_image)"
            if isinstance(input_tensor, np.ndarray)
            else ""
        )
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}{hint}")
    if input_tensor.ndim not in ndims:
        layouts = " or ".join({4: "4-D [B, C, H, W]", 5: "5-D [B, C, D, H, W]"}[n] for n in ndims)
        hint = "; add the batch dimension with input_tensor.unsqueeze(0)" if input_tensor.ndim == min(ndims) - 1 else ""
        who = f"{what} needs" if what else "input_tensor must be"
        raise ValueError(f"{who} {layouts}, got shape {list(input_tensor.shape)}{hint}")
    if not input_tensor.is_floating_point():
        raise TypeError(
            f"input_tensor must be a floating-point tensor, got {input_tensor.dtype}; convert it "
            "(e.g. x.float() / 255, then normalise as the model expects)"
        )
    if input_tensor.shape[0] == 0:
        raise ValueError("input_tensor has an empty batch (shape[0] == 0)")
    x = input_tensor.detach().to(device)
    if x.is_inference():
        x = x.clone()
    if not all_finite(x):
        raise ValueError("input_tensor contains NaN or Inf values; check the preprocessing")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_targets(
    targets: Any, batch: int, *, allow_none: bool = True, allow_none_entries: bool = False
) -> Optional[list]:
    """Check one target callable per image.

    Args:
        targets: a list (or tuple) of callables, or None.
        batch: images in the batch.
        allow_none: whether ``targets=None`` (each image's top class) is accepted.
        allow_none_entries: whether an entry may be None (that image's top class).

    Returns:
        The targets as a list, or None.
    """
    if targets is None:
        if allow_none:
            return None
        raise TypeError(
            "targets must be a list with one callable per image, e.g. [ClassifierOutputTarget(c) for c in "
            "classes], got None"
        )
    if callable(targets) and not isinstance(targets, (list, tuple)):
        raise TypeError("targets must be a list with one target per image, got a single target; wrap it: [target]")
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of callables (one per image) or None, got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(
            f"got {len(targets)} targets for a batch of {batch} images; pass exactly one target per "
            "image (e.g. [ClassifierOutputTarget(c) for c in classes]) or targets=None for each image's top class"
        )
    for target in targets:
        if target is None and allow_none_entries:
            continue
        if not callable(target):
            raise TypeError(
                f"each target must be callable (e.g. ClassifierOutputTarget(281)), got {type(target).__name__}"
            )
    return list(targets)


def check_target_layers(model: torch.nn.Module, target_layers: Any, allow_empty: bool = False) -> List[torch.nn.Module]:
    """Check that ``target_layers`` is a list of submodules of ``model``."""
    if isinstance(target_layers, torch.nn.Module):
        raise TypeError(
            f"target_layers must be a list of modules, got a single {type(target_layers).__name__}; "
            "wrap it in a list: target_layers=[layer]"
        )
    if not isinstance(target_layers, (list, tuple)):
        raise TypeError(f"target_layers must be a list of modules of the model, got {type(target_layers).__name__}")
    if not target_layers and not allow_empty:
        raise ValueError("target_layers is empty; pass at least one layer, e.g. [model.layer4[-1]] for a ResNet")
    own = {id(m) for m in model.modules()}
    for layer in target_layers:
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(
                f"every target layer must be a torch.nn.Module, got {type(layer).__name__} ({layer!r:.60}); "
                "pass modules such as model.layer4[-1], not names or tensors"
            )
        if id(layer) not in own:
            raise ValueError(
                f"target layer {repr(layer).splitlines()[0]} is not a submodule of the model; pass a module "
                "from model.named_modules() (a copy of the model has different modules)"
            )
    return list(target_layers)

