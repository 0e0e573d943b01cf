"""A method registered in camlib.registry reaches every front end with no other change.

The throw-away method below is what a new method is: a tensor function and a
short class declaring its capabilities. Registered for the duration of a test
with ``camlib.registry.registered``, it is picked up by ``usage_examples/cam.py``,
``camlib explain``, ``camlib.models`` (``CAM_METHODS``, ``make_cam``,
``explain``), the docs gallery builder and the quality benchmark; unregistered,
it is gone from all of them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from camlib.base_cam import BaseCAM
from camlib.capabilities import Capabilities
from camlib.cli import main as camlib_main
from camlib.demo import load_demo_model, make_image
from camlib.models import CAM_METHODS, load_image, make_cam
from camlib.registry import method_names, registered
from camlib.utils.image import preprocess_image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def toy_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Channel weights: the mean positive part of gradient x activation, ``[B, C, *S] -> [B, C]``."""
    return (grads * activations).clamp(min=0).flatten(2).mean(dim=2)


class ToyCAM(BaseCAM):
    """A throw-away method for these tests (gradient x activation weights)."""

    capabilities = Capabilities(gradients=True)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return toy_weights(torch.as_tensor(activations), torch.as_tensor(grads))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toycam():
    with registered("toycam", ToyCAM) as info:
        yield info
    assert "toycam" not in method_names() and "toycam" not in CAM_METHODS


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_models_package_sees_it(toycam):
    assert CAM_METHODS["toycam"] is ToyCAM and "toycam" in list(CAM_METHODS)
    model = load_demo_model()
    cam = make_cam("toycam", model, [model.features[-1]], batch_size=4, progress=False)
    assert type(cam) is ToyCAM
    x = preprocess_image(make_image(0, SIZE)[0], (0.5,) * 3, (0.25,) * 3)
    maps = cam(x, [cam.class_target(2)])
    assert maps.shape == (1, SIZE, SIZE) and maps.max() > 0.99


def test_cam_py_runs_it(toycam, tmp_path, capsys):
    cam_py = _load(ROOT / "usage_examples" / "cam.py", "usage_example_cam_toycam")
    assert cam_py.main(["--method", "toycam", "--image-size", str(SIZE), "--output-dir", str(tmp_path)]) == 0, (
        capsys.readouterr().err
    )
    for suffix in ("cam", "gb", "cam_gb"):
        image = cv2.imread(str(tmp_path / f"toycam_{suffix}.jpg"))
        assert image is not None and image.shape[:2] == (SIZE, SIZE) and image.std() > 2


def test_camlib_explain_runs_it(toycam, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(3):
        rgb = make_image(seed, SIZE)[0]
        assert cv2.imwrite(str(data / f"{seed}.png"), np.uint8(np.rint(rgb[..., ::-1] * 255)))
    out = tmp_path / "out"
    argv = ["explain", str(data), "--out", str(out), "--method", "toycam", "--image-size", str(SIZE)]
    argv += ["--device", "cpu", "--num-workers", "0", "--no-progress", "-q", "--save", "heatmap"]
    assert camlib_main(argv) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3 and {r["method"] for r in records} == {"toycam"}
    model = load_demo_model()
    cam = ToyCAM(model, [model.features[-1]])
    for record in records:
        x = preprocess_image(load_image(record["image"], SIZE), mean=(0.5,) * 3, std=(0.25,) * 3)
        expected = cam(x, None)[0]
        np.testing.assert_allclose(np.load(out / record["heatmap"]).astype(np.float32), expected, atol=2e-3)


def test_gallery_and_quality_benchmark_list_it(toycam, tmp_path):
    gallery = _load(ROOT / "docs" / "make_gallery.py", "make_gallery_toycam")
    assert "toycam" in gallery.all_slugs()
    written = gallery.make_gallery(tmp_path, only=["toycam"])
    assert [p.name for p in written] == ["toycam.jpg"]
    picture = cv2.imread(str(written[0]))
    assert picture.shape[1] == 4 * 128 and picture.std() > 2  # ring, star, eigen_smooth, aug_smooth

    quality = _load(ROOT / "benchmarks" / "quality.py", "quality_toycam")
    samples = quality.load_samples(1, size=32)
    rows = quality.methods(samples, ["toycam"])
    assert [row.name for row in rows] == ["ToyCAM"]
    model = load_demo_model()
    maps, _ = quality.compute_maps(rows[0], model, [model.features[-1]], samples, batch_size=4)
    assert maps.shape == (len(samples), 32, 32) and maps.max() > 0.99
