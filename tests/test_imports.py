"""No camlib module imports another module's underscore names: a shared helper is public within the package."""

from __future__ import annotations

import ast
from pathlib import Path

import camlib

PACKAGE = Path(camlib.__file__).parent


def _private_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "camlib":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {alias.name} from {node.module}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert _private_imports() == []


def test_the_check_can_fail(tmp_path, monkeypatch):
    fake = tmp_path / "camlib"
    fake.mkdir()
    (fake / "a.py").write_text("from camlib.b import _helper\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _private_imports() == ["camlib/a.py:1 imports _helper from camlib.b"]
