"""The tutorials under docs/tutorials run as scripts, offline, and write real (non-blank) images.

Each script runs in a subprocess from a temporary directory (so it imports the
installed camlib), with the network unreachable (proxies point at a closed port,
an empty torch hub cache, Hugging Face offline) and one thread per process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
SCRIPTS = sorted(p.name for p in TUTORIALS.glob("*.py") if not p.name.startswith("_"))
CLOSED_PORT = "http://127.0.0.1:9"
#: Modules a script needs beyond camlib's own dependencies.
NEEDS = {
    "huggingface.py": "transformers",
    "clip_similarity.py": "transformers",
    "timm_models.py": "timm",
}


def _offline_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        CAMLIB_DISABLE_PROGRESS="1",
        OMP_NUM_THREADS="1",
        TORCH_HOME=str(tmp_path / "torch_home"),
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        http_proxy=CLOSED_PORT,
        https_proxy=CLOSED_PORT,
        HTTP_PROXY=CLOSED_PORT,
        HTTPS_PROXY=CLOSED_PORT,
        no_proxy="",
        NO_PROXY="",
    )
    env.pop("PYTHONPATH", None)
    return env


def test_every_tutorial_is_listed_in_the_index():
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    assert len(SCRIPTS) >= 8
    for script in SCRIPTS:
        assert f"({script})" in index, f"{script} is not linked from docs/tutorials/index.md"
    for linked in re.findall(r"\(([\w-]+\.py)\)", index):
        assert linked in SCRIPTS, f"index.md links {linked}, which does not exist"


@pytest.mark.parametrize("script", SCRIPTS)
def test_tutorial_runs_and_writes_images(script, tmp_path):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script])
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / script), "--out", str(out)],
        cwd=tmp_path,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    images = sorted(out.glob("*.png"))
    assert len(images) >= 3, f"{script} wrote {len(images)} images"
    printed = {Path(line.split("wrote ", 1)[1]).name for line in result.stdout.splitlines() if "wrote " in line}
    assert printed == {p.name for p in images}
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) >= 32, path.name
        assert float(image.std()) > 2.0, f"{path.name} is blank"
    assert "Traceback" not in result.stderr
