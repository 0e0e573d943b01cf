"""Loading a checkpoint's weights into a model, safely and with clear errors.

Example:
    >>> import tempfile, os, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> torch.save({"model_state_dict": torch.nn.Linear(3, 2).state_dict()}, path)
    >>> load_checkpoint(torch.nn.Linear(3, 2), path).out_features
    2
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["CHECKPOINT_KEYS", "load_checkpoint"]

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

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


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
