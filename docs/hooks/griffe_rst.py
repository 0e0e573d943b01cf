"""A griffe extension that lets camlib's docstrings render well in the API reference.

camlib's docstrings are Google style, read by ``help()`` and doctest as well as
by the site, and use a few reStructuredText constructs. This extension
rewrites them into the Markdown that mkdocstrings renders, when the site is
built (the source files are not changed):

* ``.. math::`` blocks become ``$$ ... $$`` blocks and ``:math:`x``` becomes
  ``\\(x\\)``, both typeset by MathJax (``pymdownx.arithmatex``);
* cross-reference roles such as ``:class:`~camlib.demo.DemoNet``` become
  inline code (``DemoNet``);
* a singular ``Example:`` heading becomes ``Examples:``, so that its doctest
  is shown as code;
* a literal-block marker ``::`` at the end of a line becomes ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_markdown(text: str) -> str:
    """Rewrite the reStructuredText constructs of one docstring (see the module docstring)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _MATH_DIRECTIVE.match(line)
        if directive:
            pad, inline = directive.groups()
            body = [inline] if inline else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
                body.append(lines[i].strip())
                i += 1
            while body and not body[-1]:
                body.pop()
            body = [b for b in body if b]
            if out and out[-1].strip():
                out.append("")
            out.extend([f"{pad}$$", *(f"{pad}{b}" for b in body), f"{pad}$$", ""])
            continue
        line = _EXAMPLE.sub(r"\1Examples:", line)
        if line.rstrip().endswith("::") and line.strip() != "::":
            line = line.rstrip()[:-1]
        line = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", line)
        line = _ROLE.sub(_role, line)
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Apply :func:`rst_to_markdown` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        obj.docstring.value = rst_to_markdown(obj.docstring.value)
