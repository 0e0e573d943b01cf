"""Find and replace submodules of a model, without ``eval`` of strings."""

from __future__ import annotations

import difflib
import re
from typing import Callable, Iterable

import torch

__all__ = [
    "find_layer_predicate_recursive",
    "find_layer_types_recursive",
    "get_layer_by_path",
    "replace_all_layer_type_recursive",
    "replace_layer_recursive",
]


def replace_layer_recursive(model: torch.nn.Module, old_layer: torch.nn.Module, new_layer: torch.nn.Module) -> bool:
    """Replace the first occurrence of ``old_layer`` (by identity) with ``new_layer``.

    Returns:
        True if a replacement was made.
    """
    for name, layer in model._modules.items():
        if layer is old_layer:
            model._modules[name] = new_layer
            return True
        if layer is not None and replace_layer_recursive(layer, old_layer, new_layer):
            return True
    return False


def replace_all_layer_type_recursive(model: torch.nn.Module, old_layer_type: type, new_layer: torch.nn.Module) -> None:
    """Replace every submodule that is an instance of ``old_layer_type`` with ``new_layer``."""
    for name, layer in model._modules.items():
        if isinstance(layer, old_layer_type):
            model._modules[name] = new_layer
        if layer is not None:
            replace_all_layer_type_recursive(layer, old_layer_type, new_layer)


def find_layer_types_recursive(model: torch.nn.Module, layer_types: Iterable[type]) -> list[torch.nn.Module]:
    """All submodules whose exact type is in ``layer_types``, in definition order."""
    layer_types = tuple(layer_types)
    return find_layer_predicate_recursive(model, lambda layer: type(layer) in layer_types)


def find_layer_predicate_recursive(
    model: torch.nn.Module, predicate: Callable[[torch.nn.Module], bool]
) -> list[torch.nn.Module]:
    """All submodules (not the model itself) for which ``predicate`` is true, depth first."""
    result = []
    for layer in model._modules.values():
        if layer is None:
            continue
        if predicate(layer):
            result.append(layer)
        result.extend(find_layer_predicate_recursive(layer, predicate))
    return result


_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[\s*(-?\d+)\s*\]|\.(\d+)")


def get_layer_by_path(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Resolve a layer path such as ``"layer4[-1]"``, ``"features.denseblock4"`` or
    ``"blocks.11.norm1"`` without ``eval``.

    Raises:
        ValueError: when the path does not name a submodule; the message lists
            the closest existing names.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"layer path must be a non-empty string, got {path!r}")
    module = model
    walked = ""
    pos = 0
    text = path.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot parse layer path {path!r} at {text[pos:]!r}; use e.g. 'layer4[-1]'")
        name, index, dotted_index = match.groups()
        pos = match.end()
        try:
            if name is not None:
                if name not in module._modules:
                    raise KeyError(name)
                module = module._modules[name]
                walked = f"{walked}.{name}" if walked else name
            else:
                idx = int(index if index is not None else dotted_index)
                children = list(module.children())
                if dotted_index is not None and str(idx) in module._modules:
                    module = module._modules[str(idx)]
                else:
                    module = children[idx]
                walked = f"{walked}[{idx}]"
        except (KeyError, IndexError):
            names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(path.replace("[", ".").replace("]", ""), names, n=5, cutoff=0.4)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(
                f"layer path {path!r} does not exist in {type(model).__name__} (failed after {walked or 'the model'!r})."
                f"{hint} List all names with [n for n, _ in model.named_modules()]."
            ) from None
        if module is None:
            raise ValueError(f"layer path {path!r} leads to an empty slot (None) in the model")
    return module
