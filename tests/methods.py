"""The CAM methods under test, taken from camlib's registry, so a registered method is tested automatically.

Each method is named by its class name (``"GradCAM"``), or by its registry name where two registered
classes share a class name (``"ablationcam-multilayer"``).
"""

from __future__ import annotations

import inspect

from camlib.capabilities import Capabilities
from camlib.registry import MethodInfo, make_cam, methods
from camlib.utils.messages import BlankMapWarning


def _entries() -> dict[str, MethodInfo]:
    infos = methods()
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.cls.__name__] = counts.get(info.cls.__name__, 0) + 1
    entries = {}
    for info in infos:
        first = next(i for i in infos if i.cls.__name__ == info.cls.__name__)
        key = info.cls.__name__ if counts[info.cls.__name__] == 1 or info is first else info.name
        entries[key] = info
    return entries


def method_names(*, attention: bool = False) -> list[str]:
    """The methods to test. Methods that explain a transformer's attention
    (``capabilities.needs_attention``) need global self-attention (ViT, DeiT) and refuse CNNs,
    detectors and 3-D models, so they are left out unless ``attention=True``;
    tests/test_attention_methods.py and the timm ViT suite test them."""
    return sorted(name for name, entry in _entries().items() if attention or not entry.capabilities.needs_attention)


def info(name: str) -> MethodInfo:
    return _entries()[name]


def capabilities(name: str) -> Capabilities:
    return info(name).capabilities


def _names_where(flag: str) -> set[str]:
    return {name for name, entry in _entries().items() if getattr(entry.capabilities, flag)}


#: Methods that wrap another method.
META_METHODS = _names_where("wraps_method")
#: Methods that explain attention maps: only for transformers with global self-attention.
ATTENTION_METHODS = _names_where("needs_attention")
#: Methods that run many extra forward passes: tested with a larger batch_size.
PERTURBATION_METHODS = _names_where("extra_forwards")
#: Methods whose map is a random draw.
RANDOM_METHODS = _names_where("stochastic")


def build(name: str, model, layers, **kwargs):
    entry = info(name)
    if entry.capabilities.extra_forwards:
        kwargs.setdefault("batch_size", 64)
        kwargs.setdefault("progress", False)
    if "num_samples" in inspect.signature(entry.cls.__init__).parameters:
        kwargs.setdefault("num_samples", 1)  # SSCAM, ISCAM, SmoothGradCAMpp: one sample keeps the suites fast
    if "iterations" in inspect.signature(entry.cls.__init__).parameters:
        kwargs.setdefault("iterations", 5)  # OptiCAM: a few optimisation steps keep the suites fast
    return make_cam(entry.name, model, layers, **kwargs)


def blank_explained(name: str, caught) -> bool:
    """Whether a blank map is a result rather than a failure: the method keeps only the target's
    score gains over a baseline (``capabilities.gain_over_baseline``) and said, with a
    ``BlankMapWarning`` among the ``caught`` warnings, that nothing in the image raised the score."""
    return capabilities(name).gain_over_baseline and any(issubclass(w.category, BlankMapWarning) for w in caught)
