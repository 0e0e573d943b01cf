"""The notebooks in docs/notebooks run top to bottom, offline, and are committed with current outputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat, nbclient and ipykernel")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "notebooks" / "execute.py"
NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))
REQUIRED = {"quickstart", "choosing-layers", "transformers", "metrics"}
HINT = "run `python docs/notebooks/execute.py` and commit the notebooks"


def _load_script():
    spec = importlib.util.spec_from_file_location("execute_notebooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["execute_notebooks"] = module
    spec.loader.exec_module(module)
    return module


execute = _load_script()


def _rich_outputs(cell) -> list:
    """The kinds of what a code cell displays (streams and their text may vary between runs)."""
    kinds = []
    for output in cell.get("outputs", []):
        if output["output_type"] in ("display_data", "execute_result"):
            kinds.append(sorted(output["data"]))
        elif output["output_type"] == "error":
            kinds.append(["error"])
    return kinds


def test_the_tutorial_notebooks_exist():
    assert REQUIRED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_was_run_top_to_bottom(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name} was not run top to bottom in a fresh kernel; {HINT}"
    assert not any(["error"] in _rich_outputs(cell) for cell in code), f"{path.name} holds an error; {HINT}"
    images = [kind for cell in code for kind in _rich_outputs(cell) if any(k.startswith("image/") for k in kind)]
    assert images, f"{path.name} shows no picture inline"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_matches_its_outputs(path):
    # one torch thread per kernel: the models are small, and the suite runs in parallel
    fresh = execute.execute_notebook(path, threads=1)  # raises CellExecutionError on any error
    stored = nbformat.read(path, as_version=4)
    stored_code = [cell for cell in stored.cells if cell.cell_type == "code"]
    fresh_code = [cell for cell in fresh.cells if cell.cell_type == "code"]
    for index, (old, new) in enumerate(zip(stored_code, fresh_code)):
        assert _rich_outputs(old) == _rich_outputs(new), (
            f"{path.name}, code cell {index + 1}: its displayed outputs changed; {HINT}"
        )
