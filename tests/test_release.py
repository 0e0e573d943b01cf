"""Release invariants that need no build: one version, a changelog entry for it, the demo files shipped.

The build itself (sdist and wheel, ``twine check``, the wheel alone in a fresh
environment) is ``.ci/check_release``, which ``.ci/run`` calls after the tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import camlib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_version_is_defined_once():
    project = PYPROJECT.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M), "pyproject.toml: version must be dynamic"
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml must not repeat the version"
    assert 'version = { attr = "camlib.__version__" }' in PYPROJECT
    definitions = [
        path.relative_to(ROOT)
        for path in (ROOT / "camlib").rglob("*.py")
        if re.search(r"^__version__\s*=", path.read_text(encoding="utf-8"), re.M)
    ]
    assert definitions == [Path("camlib/__init__.py")], definitions
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*(\.dev\d+)?", camlib.__version__), camlib.__version__


def test_changelog_records_the_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(camlib.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), (
        f"CHANGELOG.md has no dated section for {camlib.__version__}"
    )


def test_demo_files_exist_and_are_package_data():
    demo = ROOT / "camlib" / "demo"
    for pattern in ("*.pt", "*.json", "*.png"):
        assert list(demo.glob(pattern)), f"camlib/demo has no {pattern}"
        assert f'"demo/{pattern}"' in PYPROJECT, f"pyproject.toml package-data lacks demo/{pattern}"
    assert '"py.typed"' in PYPROJECT and (ROOT / "camlib" / "py.typed").is_file()


def test_ci_runs_the_docs_build_and_the_release_check():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "mkdocs build --strict" in run
    assert ".ci/check_release" in run
    assert os.access(ROOT / ".ci" / "check_release", os.X_OK), ".ci/check_release must be executable"


def test_sdist_manifest_keeps_the_changelog():
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    assert "include CHANGELOG.md" in manifest
