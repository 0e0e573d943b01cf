"""The CAM classes under test, taken from ``camlib.__all__`` so new methods are tested automatically."""

from __future__ import annotations

import camlib

#: Methods that wrap another method instead of subclassing BaseCAM.
META_METHODS = {"FinerCAM", "RefineCAM"}
#: Methods that run many extra forward passes: tested with a larger batch_size.
PERTURBATION_METHODS = {"ScoreCAM", "AblationCAM"}
#: Methods whose map does not depend on a random draw.
RANDOM_METHODS = {"RandomCAM"}


def method_names() -> list[str]:
    names = []
    for name in camlib.__all__:
        obj = getattr(camlib, name)
        if not isinstance(obj, type) or obj is camlib.BaseCAM:
            continue
        if issubclass(obj, camlib.BaseCAM) or name in META_METHODS:
            names.append(name)
    return sorted(names)


def build(name: str, model, layers, **kwargs):
    cls = getattr(camlib, name)
    if name == "FullGrad":
        return cls(model, [], **kwargs)
    if name in PERTURBATION_METHODS:
        kwargs.setdefault("batch_size", 64)
    return cls(model, layers, **kwargs)
