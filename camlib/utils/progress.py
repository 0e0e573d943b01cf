"""Progress bars: on by default for long methods, off by argument or environment variable."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["PROGRESS_ENV", "progress_enabled"]

#: Set this environment variable to 1 to silence every camlib progress bar.
PROGRESS_ENV = "CAMLIB_DISABLE_PROGRESS"


def progress_enabled(progress: Optional[bool]) -> bool:
    """Whether a progress bar should be shown: ``progress`` if given, else
    on unless ``CAMLIB_DISABLE_PROGRESS`` is set to a true value."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_ENV, "").strip().lower() not in ("1", "true", "yes", "on")
