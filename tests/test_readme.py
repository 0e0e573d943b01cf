"""The README's Python blocks run offline, as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from snippets import python_blocks, run_blocks

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = python_blocks(README)


def test_readme_has_a_quick_start():
    assert BLOCKS, "README.md has no python code block"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_block_runs(index, tmp_path):
    run_blocks([BLOCKS[index]], tmp_path, shared=False)


def test_every_registered_method_is_in_the_methods_table():
    from camlib.registry import methods

    text = README.read_text(encoding="utf-8")
    table = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    missing = [m.cls.__name__ for m in methods() if f"| `{m.cls.__name__}` |" not in table]
    assert not missing, f"README's methods table lacks {missing}"
