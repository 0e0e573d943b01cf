"""The one registry of CAM methods: command-line name -> class and capability record.

Every front end reads it: :func:`camlib.models.make_cam`,
``usage_examples/cam.py``, ``camlib explain``, the docs gallery, the quality
benchmark and the test-suite. None of them tests a method's name or type:
what a method needs and supports is its :class:`~camlib.capabilities.Capabilities`
record, and a method registered here is picked up by all of them.

A method module registers its class where it defines it::

    @register_method("gradcam", title="Grad-CAM")
    class GradCAM(BaseCAM):
        ...

The package root imports every top-level module of camlib, so a new method is
one new file.

Example:
    >>> import torchvision
    >>> from camlib.registry import get_method, make_cam, method_names
    >>> "gradcam++" in method_names()
    True
    >>> get_method("GradCAM++").cls.__name__
    'GradCAMPlusPlus'
    >>> model = torchvision.models.resnet18(weights=None)
    >>> type(make_cam("scorecam", model, [model.layer4[-1]], batch_size=64)).__name__
    'ScoreCAM'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import torch

from camlib.capabilities import Capabilities

__all__ = [
    "MethodInfo",
    "get_method",
    "make_cam",
    "method_names",
    "methods",
    "register_method",
    "registered",
    "unregister_method",
]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    Attributes:
        name: the command-line name (lower case), e.g. ``"gradcam++"``.
        cls: the CAM class.
        title: the name people know it by, e.g. ``"Grad-CAM++"``.
        defaults: constructor arguments the front ends pass by default
            (e.g. ``base_method`` of a wrapper).
    """

    name: str
    cls: type
    title: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> Capabilities:
        """The class's capability record."""
        return self.cls.capabilities


_METHODS: Dict[str, MethodInfo] = {}


def _key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string such as 'gradcam', got {type(name).__name__}")
    return name.strip().lower()


def register_method(name: str, cls: Optional[type] = None, *, title: Optional[str] = None, **defaults: Any) -> Any:
    """Register a CAM class under a command-line name.

    Use it as a class decorator, ``@register_method("gradcam")``, or call it
    with the class, ``register_method("mycam", MyCAM)``.

    Args:
        name: the command-line name (case-insensitive).
        cls: the class (omit when decorating).
        title: display name (default: the class name).
        **defaults: constructor arguments the front ends pass by default.

    Returns:
        The class (so it works as a decorator).

    Raises:
        ValueError: if another class is registered under ``name``.
        TypeError: if the class has no ``capabilities`` record.
    """
    key = _key(name)

    def add(klass: T) -> T:
        if not isinstance(getattr(klass, "capabilities", None), Capabilities):
            raise TypeError(
                f"{klass!r} has no Capabilities record; declare `capabilities = Capabilities(...)` on the class"
            )
        existing = _METHODS.get(key)
        if existing is not None and existing.cls is not klass and existing.cls.__qualname__ != klass.__qualname__:
            raise ValueError(
                f"method name {key!r} is taken by {existing.cls.__module__}.{existing.cls.__qualname__}; "
                "choose another name or unregister_method() it first"
            )
        _METHODS[key] = MethodInfo(key, klass, title or klass.__name__, MappingProxyType(dict(defaults)))
        return klass

    return add if cls is None else add(cls)


def unregister_method(name: str) -> None:
    """Remove a registered name (missing names are ignored)."""
    _METHODS.pop(_key(name), None)


class registered:
    """Register a method for the duration of a ``with`` block (tests, notebooks)."""

    def __init__(self, name: str, cls: type, **kwargs: Any) -> None:
        self.name, self.cls, self.kwargs = name, cls, kwargs

    def __enter__(self) -> MethodInfo:
        register_method(self.name, self.cls, **self.kwargs)
        return get_method(self.name)

    def __exit__(self, *exc: Any) -> None:
        unregister_method(self.name)


def method_names() -> List[str]:
    """The registered command-line names, in registration order."""
    _load_all()
    return list(_METHODS)


def methods() -> List[MethodInfo]:
    """Every registered method, in registration order."""
    _load_all()
    return list(_METHODS.values())


def get_method(name: str) -> MethodInfo:
    """The registered method for a name (case-insensitive).

    Raises:
        ValueError: for an unknown name; the message suggests close names and lists them all.
    """
    _load_all()
    key = _key(name)
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Expected one of: {', '.join(_METHODS)}")
    return _METHODS[key]


def make_cam(
    method: str,
    model: torch.nn.Module,
    target_layers: Sequence[torch.nn.Module],
    *,
    reshape_transform: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    **kwargs: Any,
) -> Any:
    """Build the CAM object for a registered name.

    Args:
        method: a registered name (``"gradcam"``, ``"gradcam++"``, ``"scorecam"``, ...).
        model: the model to explain.
        target_layers: its target layers (a method that chooses its own
            layers, such as FullGrad, ignores them).
        reshape_transform: optional activation reshaping.
        batch_size: inputs per extra forward pass (methods that run them).
        progress: show progress bars (None: on unless ``CAMLIB_DISABLE_PROGRESS=1``).
        **kwargs: more constructor arguments, over the registered defaults.

    Returns:
        The CAM object; use it as a context manager or call it directly.
    """
    info = get_method(method)
    layers = [] if info.capabilities.own_layers else list(target_layers)
    options: Dict[str, Any] = {**info.defaults, **kwargs}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if progress is not None:
        options["progress"] = progress
    return info.cls(model, layers, reshape_transform, **options)


_LOADED = False


def _load_all() -> None:
    """Import the package root once, which imports (and so registers) every method module."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import camlib  # noqa: F401
