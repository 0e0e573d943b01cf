"""The CAM methods by command-line name, read from :mod:`camlib.registry`.

:data:`CAM_METHODS` is a read-only view of the registry (name -> class), so a
method registered with :func:`camlib.registry.register_method` appears in it
at once; :func:`make_cam` is :func:`camlib.registry.make_cam`.

Example:
    >>> CAM_METHODS["gradcam++"].__name__, "sess" in CAM_METHODS
    ('GradCAMPlusPlus', True)
"""

from __future__ import annotations

from typing import Iterator, Mapping

from camlib.registry import get_method, make_cam, method_names

__all__ = ["CAM_METHODS", "make_cam"]


class _RegisteredClasses(Mapping):
    """Registered name -> CAM class, read live from the registry (read-only)."""

    def __getitem__(self, name: str) -> type:
        if not isinstance(name, str) or name not in method_names():
            raise KeyError(name)
        return get_method(name).cls

    def __iter__(self) -> Iterator[str]:
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())

    def __repr__(self) -> str:
        return f"CAM_METHODS({{{', '.join(f'{n!r}: {c.__name__}' for n, c in self.items())}}})"


#: Registered method name -> CAM class (a read-only, live view of :mod:`camlib.registry`).
CAM_METHODS: Mapping[str, type] = _RegisteredClasses()
