"""MkDocs hook: every ``docs/notebooks/*.ipynb`` becomes a page, with its stored outputs.

The notebooks are committed executed (``python docs/notebooks/execute.py``
runs them top to bottom and saves their outputs; ``tests/test_notebooks.py``
runs them in CI). When the site is built, this hook turns each one into a
Markdown page next to it (``quickstart.ipynb`` -> ``quickstart.md``):
Markdown cells as they are, code cells as Python blocks, and each output
below its cell: images as files (``quickstart_files/...``), text as text
blocks, stderr in a collapsed warning box. Nothing is executed at build time, nothing
is downloaded, and no dependency beyond MkDocs is needed. The notebook itself
is published next to its page, for download; links between notebooks
lead to their pages.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
from typing import Any, Dict, List, Tuple

from mkdocs.structure.files import File, Files

NOTEBOOK_DIR = "notebooks/"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SIBLING_NOTEBOOK = re.compile(r"\]\(([\w-]+)\.ipynb(#[\w-]*)?\)")
_IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _fence(text: str, lang: str = "text", indent: str = "") -> str:
    text = _ANSI.sub("", text).rstrip("\n")
    ticks = "```" if "```" not in text else "````"
    body = "\n".join(f"{indent}{line}" if line else "" for line in text.split("\n"))
    return f"{indent}{ticks}{lang}\n{body}\n{indent}{ticks}"


def _rich_output(data: Dict[str, Any], stem: str, key: str, assets: Dict[str, bytes]) -> str:
    for mime, ext in _IMAGE_TYPES.items():
        if mime in data:
            name = f"{stem}_files/{key}.{ext}"
            assets[name] = base64.b64decode(_text(data[mime]))
            return f'<div class="nb-output nb-image" markdown>\n![output]({posixpath.basename(stem)}_files/{key}.{ext})\n</div>'
    if "image/svg+xml" in data:
        return f'<div class="nb-output nb-image">\n{_text(data["image/svg+xml"])}\n</div>'
    if "text/html" in data:
        return f'<div class="nb-output">\n{_text(data["text/html"])}\n</div>'
    if "text/markdown" in data:
        return _text(data["text/markdown"])
    if "text/plain" in data:
        return _fence(_text(data["text/plain"]))
    return ""


def _flush(stream: Dict[str, str], rendered: List[str]) -> None:
    """Render the pending stream text (stdout as text, stderr in a collapsed warning) and clear it."""
    for kind, text in stream.items():
        if kind == "stderr":
            rendered.append(f'??? warning "stderr"\n\n{_fence(text, indent="    ")}')
        else:
            rendered.append(_fence(text))
    stream.clear()


def notebook_to_markdown(notebook: Dict[str, Any], stem: str) -> Tuple[str, Dict[str, bytes]]:
    """Render a notebook (its JSON as a dict) as Markdown.

    Args:
        notebook: The parsed ``.ipynb`` file (nbformat 4).
        stem: Its path in the docs without the extension, e.g. ``notebooks/quickstart``.

    Returns:
        The page's Markdown and the image files it refers to, ``{path in the docs: bytes}``.
    """
    name = posixpath.basename(stem)
    parts: List[str] = []
    assets: Dict[str, bytes] = {}
    language = notebook.get("metadata", {}).get("kernelspec", {}).get("language", "python")
    for index, cell in enumerate(notebook.get("cells", [])):
        source = _text(cell.get("source", "")).rstrip()
        if cell.get("cell_type") == "markdown":
            # a link to a sibling notebook leads to its page on the site
            parts.append(_SIBLING_NOTEBOOK.sub(r"](\1.md\2)", source))
            if index == 0:
                parts.append(
                    f'!!! info "A notebook"\n    This page is the notebook [`{name}.ipynb`]({name}.ipynb), '
                    "with the outputs it produced when it was last run. It runs offline, top to bottom, "
                    "and the test suite executes it."
                )
            continue
        if cell.get("cell_type") != "code" or not source:
            continue
        parts.append(_fence(source, language))
        stream: Dict[str, str] = {}
        rendered: List[str] = []
        for out_index, output in enumerate(cell.get("outputs", [])):
            kind = output.get("output_type")
            if kind == "stream":
                stream_name = output.get("name", "stdout")
                if stream and stream_name not in stream:
                    _flush(stream, rendered)
                stream[stream_name] = stream.get(stream_name, "") + _text(output.get("text", ""))
                continue
            _flush(stream, rendered)
            if kind in ("display_data", "execute_result"):
                rendered.append(_rich_output(output.get("data", {}), stem, f"cell{index}_{out_index}", assets))
            elif kind == "error":
                rendered.append(_fence("\n".join(output.get("traceback", []))))
        _flush(stream, rendered)
        parts.extend(r for r in rendered if r)
    return "\n\n".join(parts) + "\n", assets


def on_files(files: Files, config: Any) -> Files:
    """Add a page (and its images) for every notebook under ``docs/notebooks``."""
    for file in list(files):
        src = file.src_uri
        if not (src.startswith(NOTEBOOK_DIR) and src.endswith(".ipynb")):
            continue
        stem = src[: -len(".ipynb")]
        with open(file.abs_src_path, encoding="utf-8") as handle:
            notebook = json.load(handle)
        markdown, assets = notebook_to_markdown(notebook, stem)
        files.append(File.generated(config, f"{stem}.md", content=markdown))
        for path, data in assets.items():
            files.append(File.generated(config, path, content=data))
    return files
