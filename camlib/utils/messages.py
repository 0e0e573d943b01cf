"""Warnings that point at the user's line, however deep in camlib they are raised."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Type

__all__ = ["BlankMapWarning", "warn_user"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BlankMapWarning(UserWarning):
    """A method returned an all-zero map for some image because, by its definition, nothing in the
    image raises the target's score (methods whose capability record has ``gain_over_baseline``)."""


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside camlib (and outside torch's module call machinery)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        inside = filename.startswith(_PACKAGE_DIR + os.sep) or f"{os.sep}torch{os.sep}" in filename
        if not inside:
            return level
        frame, level = frame.f_back, level + 1
    return level


def warn_user(message: str, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the caller's code outside camlib."""
    warnings.warn(message, category, stacklevel=_user_stacklevel())
