"""The documentation: its code runs, the public API is documented, and the site is complete.

* Every ``python`` block of ``docs/**/*.md`` runs offline: the blocks of a page
  run in order, in one namespace, in a temporary directory, as a reader would
  run them (``docs/tutorials`` has its own tests).
* Every public class and function has a docstring, every public module is
  rendered in the API reference, and the CAM method classes document their
  paper, formula and an example.
* Every page is in the navigation, and the helpers the site is built with
  (``docs/hooks``) behave.

``mkdocs build --strict`` (run by ``.ci/run``) then fails on a broken link, a
missing page or a docstring mkdocstrings cannot render.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
import sys
from pathlib import Path

import pytest
from snippets import code_blocks, python_blocks, run_blocks

import camlib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Tested elsewhere (tests/test_tutorials*.py).
SKIP_DIRS = {"tutorials"}
PAGES = sorted(
    p for p in DOCS.rglob("*.md") if not (set(p.relative_to(DOCS).parts[:-1]) & SKIP_DIRS)
)
PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- code blocks


def test_docs_have_code():
    assert len(PAGES_WITH_CODE) >= 20, "docs pages with python blocks went missing"


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[str(p.relative_to(DOCS)) for p in PAGES_WITH_CODE])
def test_page_code_runs(page, tmp_path):
    run_blocks(python_blocks(page), tmp_path)


def test_every_fence_is_closed_and_labelled():
    for page in PAGES:
        for block in code_blocks(page):  # raises on an unclosed fence
            assert block.language, f"{page.relative_to(ROOT)}:{block.line - 1}: label the code block (python, bash, text, ...)"


# --------------------------------------------------------------------------- docstrings


def _public_modules() -> list:
    names = ["camlib"] + [
        info.name
        for info in pkgutil.walk_packages(camlib.__path__, "camlib.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


PUBLIC_MODULES = _public_modules()


def _documented_objects():
    """(qualified name, object) for every public class and function, and their public methods."""
    seen = set()
    for module in PUBLIC_MODULES:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            if not getattr(obj, "__module__", "").startswith("camlib"):
                continue
            seen.add(id(obj))
            yield f"{obj.__module__}.{obj.__qualname__}", obj, obj.__doc__
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_") and attr != "__call__":
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if isinstance(value, property):
                        value = value.fget
                    if inspect.isfunction(value):
                        # an override may inherit the documentation of the method it overrides
                        yield f"{obj.__module__}.{obj.__qualname__}.{attr}", value, inspect.getdoc(getattr(obj, attr))


def test_every_public_module_has_a_docstring():
    missing = [m.__name__ for m in PUBLIC_MODULES if not (m.__doc__ or "").strip()]
    assert not missing, f"modules without a docstring: {missing}"


def test_every_public_module_declares_all():
    missing = [m.__name__ for m in PUBLIC_MODULES if not hasattr(m, "__all__") and m.__name__ != "camlib.__main__"]
    assert not missing, f"public modules without __all__: {missing}"


def test_every_public_name_has_a_docstring():
    missing = sorted(name for name, _, doc in _documented_objects() if not (doc or "").strip())
    assert not missing, "public classes, functions and methods without a docstring:\n  " + "\n  ".join(missing)


def test_the_three_entry_modules_are_covered():
    # camlib, camlib.metrics and camlib.utils re-export the names users import most
    for module in (camlib, importlib.import_module("camlib.metrics"), importlib.import_module("camlib.utils")):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


#: Method classes without a paper of their own (variants introduced by pytorch-grad-cam, a baseline).
NO_PAPER = {"EigenGradCAM", "GradCAMElementWise", "RandomCAM"}


def _method_classes():
    bases = (camlib.BaseCAM, camlib.CAMWrapper)
    for name in camlib.__all__:
        obj = getattr(camlib, name)
        if inspect.isclass(obj) and obj not in bases and issubclass(obj, bases):
            yield name, obj


@pytest.mark.parametrize("name", [name for name, _ in _method_classes()])
def test_method_docstring_has_paper_formula_and_example(name):
    doc = getattr(camlib, name).__doc__
    assert "math::" in doc or ":math:" in doc, f"{name}: give the formula of its weights and map (.. math::)"
    assert ">>>" in doc, f"{name}: add a short doctest example"
    if name not in NO_PAPER:
        assert "http" in doc, f"{name}: cite the paper with a link"


# --------------------------------------------------------------------------- the site


def _nav_pages() -> set:
    """The pages named in the ``nav:`` section of mkdocs.yml (commented lines are not)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") + 1 :]
    lines = [line for line in nav.splitlines()[1:] if line.strip() and not line.lstrip().startswith("#")]
    section = []
    for line in lines:
        if not line.startswith((" ", "-")):
            break  # the next top-level key
        section.append(line)
    return set(re.findall(r"([\w./-]+\.md)\s*$", "\n".join(section), flags=re.M))


def test_every_page_is_in_the_navigation():
    nav = _nav_pages()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    pages |= {str(p.relative_to(DOCS).with_suffix(".md")) for p in (DOCS / "notebooks").glob("*.ipynb")}
    assert not sorted(pages - nav), f"pages missing from the nav of mkdocs.yml: {sorted(pages - nav)}"
    assert not sorted(nav - pages), f"nav entries without a page: {sorted(nav - pages)}"


def test_every_public_module_is_in_the_api_reference():
    rendered = set()
    for page in DOCS.rglob("*.md"):
        rendered.update(re.findall(r"^::: *([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M))
    skip = {"camlib", "camlib.utils", "camlib.feature_factorization", "camlib.__main__"}
    missing = []
    for module in PUBLIC_MODULES:
        name = module.__name__
        if name in skip or name in rendered:
            continue
        exported = [n for n in getattr(module, "__all__", []) if f"{name}.{n}" in rendered]
        if not exported:
            missing.append(name)
    assert not missing, f"public modules no docs page renders with ':::': {missing}"


def test_notebook_hook_renders_outputs():
    hook = _load(DOCS / "hooks" / "notebooks.py", "docs_notebook_hook")
    for path in sorted((DOCS / "notebooks").glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        markdown, assets = hook.notebook_to_markdown(notebook, f"notebooks/{path.stem}")
        images = sum(
            1
            for cell in notebook["cells"]
            for out in cell.get("outputs", [])
            if any(k.startswith("image/") for k in out.get("data", {}))
        )
        assert images and len(assets) == images, f"{path.name}: every image output becomes a file"
        for name in assets:
            assert f"({Path(name).relative_to('notebooks')})" in markdown
        assert markdown.count("```python") == sum(
            1 for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()
        )


def test_docstring_extension_rewrites_rst():
    extension = _load(DOCS / "hooks" / "griffe_rst.py", "docs_griffe_rst")
    text = (
        "Summary with :class:`~camlib.demo.DemoNet` and :func:`load_demo_model`.\n\n"
        "    .. math::\n        w = \\frac{1}{Z}\n\n"
        "Inline :math:`x^2`. A literal block::\n\n    code\n\nExample:\n    >>> 1 + 1\n    2\n"
    )
    out = extension.rst_to_markdown(text)
    assert "`DemoNet`" in out and "`load_demo_model`" in out and ":class:" not in out
    assert "$$\n    w = \\frac{1}{Z}\n    $$" in out
    assert "\\(x^2\\)" in out and "A literal block:\n" in out
    assert "Examples:" in out
    assert extension.rst_to_markdown(out) == out, "the rewrite must be idempotent"
