"""The Python code blocks of Markdown files, found and run the way a reader would run them.

Used by ``test_readme.py`` and ``test_docs.py``. A block is a fenced block
whose info string is ``python`` (```` ```python ````), possibly indented (inside
a list or a tab). Blocks of other languages (``bash``, ``text``, ``diff``)
are not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence

import torch

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int  # 1-based line of the first line of code
    language: str
    source: str

    def compiled(self):
        """The block compiled so that tracebacks name the Markdown file and its line numbers."""
        padded = "\n" * (self.line - 1) + self.source
        return compile(padded, str(self.path), "exec")


def code_blocks(path: Path) -> List[Block]:
    """Every fenced code block of a Markdown file, in order."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        language = match.group("info").strip().split(" ")[0].lower()
        close = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: List[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{i + 1}: code block is never closed")
        source = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(Path(path), i + 2, language, source))
        i = j + 1
    return blocks


def python_blocks(path: Path) -> List[Block]:
    """The ``python`` blocks of a Markdown file, in order."""
    return [block for block in code_blocks(path) if block.language == "python"]


@contextlib.contextmanager
def in_directory(directory: Path) -> Iterator[None]:
    """Run with ``directory`` as the working directory (files a block writes land there)."""
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def run_blocks(blocks: Sequence[Block], workdir: Path, *, shared: bool = True) -> None:
    """Run blocks in order, in ``workdir``, seeded as a fresh Python session would be.

    Args:
        blocks: The blocks, usually those of one page.
        workdir: The working directory while they run.
        shared: One namespace for all blocks (a page read top to bottom), or
            a fresh namespace per block.
    """
    namespace: dict = {"__name__": "__main__"}
    torch.manual_seed(0)
    with in_directory(workdir):
        for block in blocks:
            if not shared:
                namespace = {"__name__": "__main__"}
            exec(block.compiled(), namespace)
