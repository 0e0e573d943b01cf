"""Run the notebooks in docs/notebooks top to bottom and save them with their outputs.

    python docs/notebooks/execute.py                  # every notebook, in place
    python docs/notebooks/execute.py quickstart       # one of them
    python docs/notebooks/execute.py --check          # run, save nothing, fail on any error

The notebooks are committed executed, so that the documentation site shows
their outputs (``docs/hooks/notebooks.py`` renders them; nothing runs when the
site is built). Run this after changing a notebook or the code it shows.
``tests/test_notebooks.py`` runs them in CI with :func:`execute_notebook`.

Each notebook runs in a fresh ``python3`` kernel of the current environment,
in a temporary working directory, offline (it uses the bundled demo model and
torchvision models with random weights), with progress bars off and tqdm's
note about missing ipywidgets silenced.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import nbformat
from nbclient import NotebookClient

__all__ = ["NOTEBOOK_DIR", "TIMEOUT", "execute_notebook", "notebook_paths"]

NOTEBOOK_DIR = Path(__file__).resolve().parent
#: Seconds one cell may run.
TIMEOUT = 300


def notebook_paths(names: Optional[Sequence[str]] = None) -> List[Path]:
    """The notebooks, sorted; ``names`` (without ``.ipynb``) selects some."""
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if names:
        wanted = {name.removesuffix(".ipynb") for name in names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"no such notebook: {', '.join(sorted(unknown))}")
        paths = [p for p in paths if p.stem in wanted]
    return paths


@contextlib.contextmanager
def _environment(variables: Dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the kernel) and restore them afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute_notebook(path: Path, timeout: int = TIMEOUT, threads: Optional[int] = None) -> nbformat.NotebookNode:
    """Execute one notebook top to bottom and return it with its outputs.

    Args:
        path: The ``.ipynb`` file; it is not modified.
        timeout: Seconds one cell may run.
        threads: CPU threads of the kernel's torch (``OMP_NUM_THREADS``); None
            keeps torch's default. A test suite running in parallel passes 1.

    Raises:
        nbclient.exceptions.CellExecutionError: If a cell raises; the message
            holds the cell and the traceback.
    """
    notebook = nbformat.read(path, as_version=4)
    # tqdm warns in a kernel without ipywidgets when camlib imports tqdm.auto; that note is about
    # the environment, not about the code shown, so it is kept out of the stored outputs.
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
    variables = {"CAMLIB_DISABLE_PROGRESS": "1", "PYTHONWARNINGS": warnings}
    if threads is not None:
        variables["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as workdir, _environment(variables):
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        client.execute()
    return notebook


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--check", action="store_true", help="run without saving")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each kernel")
    args = parser.parse_args(argv)
    for path in notebook_paths(args.names):
        start = time.perf_counter()
        notebook = execute_notebook(path, threads=args.threads)
        if not args.check:
            nbformat.write(notebook, path)
        print(f"{path.name}: ran in {time.perf_counter() - start:.1f} s{'' if args.check else ', saved'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
