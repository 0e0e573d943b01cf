"""Progress bars: on by default for long methods, off by argument or environment variable."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Iterable, Optional

__all__ = ["PROGRESS_ENV", "TQDM_ENV", "progress_bar", "progress_enabled"]

#: Set this environment variable to 1 to silence every camlib progress bar.
PROGRESS_ENV = "CAMLIB_DISABLE_PROGRESS"
#: tqdm's own switch, honoured as well.
TQDM_ENV = "TQDM_DISABLE"


def progress_enabled(progress: Optional[bool]) -> bool:
    """Whether a progress bar should be shown: ``progress`` if given, else
    on unless ``CAMLIB_DISABLE_PROGRESS`` or tqdm's own ``TQDM_DISABLE`` is set to a true value."""
    if progress is not None:
        return bool(progress)
    return not any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in (PROGRESS_ENV, TQDM_ENV)
    )


def _in_notebook_with_widgets() -> bool:
    """A Jupyter kernel where ipywidgets can draw tqdm's notebook bar."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def progress_bar(iterable: Optional[Iterable] = None, *, progress: Optional[bool] = None, **kwargs: Any) -> Any:
    """A tqdm progress bar, shown when :func:`progress_enabled` says so.

    In a Jupyter kernel with ipywidgets the bar is a notebook widget; elsewhere,
    including kernels without ipywidgets (where ``tqdm.auto`` would warn on
    import), it is tqdm's text bar on stderr. ``kwargs`` go to ``tqdm``.

    Example:
        >>> with progress_bar(total=3, progress=False) as bar:
        ...     bar.update(3)
        >>> list(progress_bar(range(2), progress=False))
        [0, 1]
    """
    enabled = progress_enabled(progress)
    if enabled and _in_notebook_with_widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(iterable, disable=not enabled, **kwargs)
