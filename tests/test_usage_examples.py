"""The usage examples run offline, as scripts, and write valid non-blank images.

Scripts run in subprocesses (from a temporary directory, so they must import
the installed camlib) with the network made unreachable: proxies point at a
closed local port and torch's hub cache is empty. The many small variations of
``cam.py`` (every method, flags, errors) call its ``main(argv)`` in-process,
which is the same code without the cost of starting Python each time.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import cv2
import numpy as np
import pytest
import torch
import torchvision

from camlib.registry import methods

EXAMPLES = Path(__file__).resolve().parents[1] / "usage_examples"
CLOSED_PORT = "http://127.0.0.1:9"  # connection refused at once: no request leaves the machine


def offline_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        CAMLIB_DISABLE_PROGRESS="1",
        TORCH_HOME=str(tmp_path / "torch_home"),
        http_proxy=CLOSED_PORT,
        https_proxy=CLOSED_PORT,
        HTTP_PROXY=CLOSED_PORT,
        HTTPS_PROXY=CLOSED_PORT,
        no_proxy="",
        NO_PROXY="",
    )
    env.pop("PYTHONPATH", None)
    return env


def run_script(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=offline_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"usage_example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cam_script():
    return load_script("cam.py")


def read_image(path: Path) -> np.ndarray:
    """Decode an image the scripts wrote and check it is a real, non-blank picture."""
    assert path.is_file(), f"{path} was not written"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a decodable image"
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 16
    assert float(image.std()) > 2.0, f"{path} is blank (constant)"
    return image


def assert_three_images(out: Path, method: str, size: int) -> dict:
    images = {suffix: read_image(out / f"{method}_{suffix}.jpg") for suffix in ("cam", "gb", "cam_gb")}
    for image in images.values():
        assert image.shape[:2] == (size, size)
    return images


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr
    return lines[-1]


# --------------------------------------------------------------------------- scripts, in subprocesses


def test_cam_py_with_no_arguments_runs_offline_on_the_demo(tmp_path):
    start = time.perf_counter()
    result = run_script("cam.py", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    images = assert_three_images(tmp_path / "output", "gradcam", 128)
    assert elapsed < 30, f"the default run took {elapsed:.1f} s"
    assert "ring" in result.stdout  # the demo's top class on the bundled sample image
    # the CAM overlay is coloured (a heat map), the guided backprop map is mostly grey
    cam = images["cam"].astype(np.int32)
    assert np.abs(cam[..., 2] - cam[..., 0]).mean() > 20


def test_cam_py_exit_status_and_one_line_error_as_a_process(tmp_path):
    result = run_script(
        "cam.py", "--model", "resnet18", "--weights", "none", "--image-size", "64", "--target-layer", "layer5",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert line.startswith("cam.py: error:") and "Close matches" in line
    assert not (tmp_path / "output").exists()


# --------------------------------------------------------------------------- the other examples, in-process
# Starting Python and importing torch costs seconds of CPU per script, so the other
# examples run their main(argv) in this process: the same code, from the same files.


def test_vit_example_offline(tmp_path, capsys):
    vit = load_script("vit_example.py")
    code = vit.main(["--weights", "none", "--image-size", "64", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert read_image(tmp_path / "gradcam_cam.jpg").shape[:2] == (64, 64)
    assert "encoder.layers[-2].ln_1" in capsys.readouterr().out


def test_swin_example_offline(tmp_path, capsys):
    swin = load_script("swinT_example.py")
    code = swin.main(
        ["--weights", "none", "--image-size", "64", "--output-dir", str(tmp_path), "--method", "layercam"]
    )
    assert code == 0, capsys.readouterr().err
    assert read_image(tmp_path / "layercam_cam.jpg").shape[:2] == (64, 64)
    assert "features[-1][-1].norm1" in capsys.readouterr().out


def test_guided_gradcam_example(tmp_path, capsys):
    guided = load_script("guided_gradcam_example.py")
    assert guided.main(["--output-dir", str(tmp_path)]) == 0, capsys.readouterr().err
    grid = read_image(tmp_path / "guided_gradcam.jpg")
    assert grid.shape[1] == 4 * 128  # image, Grad-CAM, guided backprop, guided Grad-CAM
    assert grid.shape[0] > 2 * 128  # two classes, with captions
    out = capsys.readouterr().out
    assert "star" in out and "ring" in out
    # the Grad-CAM panels of the two classes differ (a class-specific map)
    gradcam = grid[:, 128:256].astype(np.int32)
    half = grid.shape[0] // 2
    assert np.abs(gradcam[half - 128 : half] - gradcam[-128:]).mean() > 5


def test_per_layer_example(tmp_path, capsys):
    per_layer = load_script("per_layer_example.py")
    assert per_layer.main(["--output-dir", str(tmp_path), "--image-size", "64"]) == 0, capsys.readouterr().err
    grid = read_image(tmp_path / "per_layer.jpg")
    assert grid.shape[1] == 3 * 64  # three layers side by side
    assert grid.shape[0] > 2 * 64  # gradcam and layercam rows


@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        (
            "vit_example.py",
            ["--weights", "none", "--image-size", "32", "--target-layer", "qqq"],
            "Top-level",
        ),
        ("swinT_example.py", ["--model", "swin_x"], "unknown model 'swin_x'"),
        ("guided_gradcam_example.py", ["--target-category", "99"], "out of range"),
        ("per_layer_example.py", ["--target-layer", "features[3]", "features[9]"], "features[9]"),
    ],
)
def test_examples_report_errors_in_one_line(tmp_path, capsys, name, argv, expected):
    assert load_script(name).main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{name}: error:"), err
    assert expected in err


# --------------------------------------------------------------------------- cam.py main(), in-process


# every registered method that applies to a CNN (the demo model)
@pytest.mark.parametrize("method", [m.name for m in methods() if not m.capabilities.needs_attention])
def test_every_method_on_the_demo(cam_script, tmp_path, method, capsys):
    code = cam_script.main(["--method", method, "--image-size", "64", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert_three_images(tmp_path, method, 64)


@pytest.mark.parametrize("flag", ["--aug-smooth", "--eigen-smooth"])
def test_smoothing_flags(cam_script, tmp_path, flag, capsys):
    assert cam_script.main([flag, "--image-size", "64", "--output-dir", str(tmp_path)]) == 0, (
        capsys.readouterr().err
    )
    assert_three_images(tmp_path, "gradcam", 64)


def test_torchvision_model_with_random_weights(cam_script, tmp_path, capsys):
    argv = ["--model", "resnet18", "--weights", "none", "--image-size", "64", "--output-dir", str(tmp_path)]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    assert_three_images(tmp_path, "gradcam", 64)
    assert "layer4[-1]" in capsys.readouterr().out


def test_per_layer_writes_layers_side_by_side(cam_script, tmp_path, capsys):
    argv = ["--per-layer", "--image-size", "64", "--output-dir", str(tmp_path)]
    argv += ["--target-layer", "features[3]", "features[5]", "features[-1]"]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    cam = read_image(tmp_path / "gradcam_cam.jpg")
    cam_gb = read_image(tmp_path / "gradcam_cam_gb.jpg")
    assert cam.shape[1] == 3 * 64 and cam_gb.shape[1] == 3 * 64
    assert cam.shape[0] > 64  # a caption strip names each layer
    # the three panels differ: each layer has its own map
    panels = [cam[-64:, i * 64 : (i + 1) * 64].astype(np.int32) for i in range(3)]
    assert np.abs(panels[0] - panels[2]).mean() > 2


def test_per_layer_default_layers_and_repeated_flag(cam_script, tmp_path, capsys):
    argv = ["--per-layer", "--image-size", "64", "--output-dir", str(tmp_path)]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    assert read_image(tmp_path / "gradcam_cam.jpg").shape[1] == 3 * 64  # the demo's three candidate layers
    argv = ["--per-layer", "--image-size", "64", "--output-dir", str(tmp_path / "b")]
    argv += ["--target-layer", "features[3]", "--target-layer", "features[-1]"]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    assert read_image(tmp_path / "b" / "gradcam_cam.jpg").shape[1] == 2 * 64


def test_several_target_categories_one_row_each(cam_script, tmp_path, capsys):
    argv = ["--target-category", "3", "5", "--image-size", "64", "--output-dir", str(tmp_path)]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    for suffix in ("cam", "gb", "cam_gb"):
        image = read_image(tmp_path / f"gradcam_{suffix}.jpg")
        assert image.shape[1] == 64 and image.shape[0] > 2 * 64
    assert "3 star, 5 ring" in capsys.readouterr().out


def test_image_path_size_mean_std(cam_script, tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = (rng.random((90, 70, 3)) * 255).astype(np.uint8)
    cv2.circle(image, (35, 45), 15, (0, 0, 255), -1)
    path = tmp_path / "input.png"
    cv2.imwrite(str(path), image)
    argv = ["--image-path", str(path), "--image-size", "48", "56", "--output-dir", str(tmp_path / "out")]
    argv += ["--mean", "0.5", "0.5", "0.5", "--std", "0.3", "0.3", "0.3"]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    for suffix in ("cam", "gb", "cam_gb"):
        assert read_image(tmp_path / "out" / f"gradcam_{suffix}.jpg").shape[:2] == (48, 56)


def _save_retrained_checkpoint(path: Path) -> None:
    """A 3-class resnet18 'training checkpoint', saved from a DataParallel wrapper."""
    torch.manual_seed(0)
    model = torch.nn.DataParallel(torchvision.models.resnet18(weights=None, num_classes=3))
    torch.save({"epoch": 7, "best_acc": 0.9, "model_state_dict": model.state_dict()}, path)


def test_num_classes_with_a_retrained_checkpoint(cam_script, tmp_path, capsys):
    checkpoint = tmp_path / "retrained.pth"
    _save_retrained_checkpoint(checkpoint)
    argv = [
        "--model",
        "resnet18",
        "--weights",
        str(checkpoint),
        "--num-classes",
        "3",
        "--target-category",
        "2",
    ]
    argv += ["--image-size", "64", "--output-dir", str(tmp_path / "out")]
    assert cam_script.main(argv) == 0, capsys.readouterr().err
    assert_three_images(tmp_path / "out", "gradcam", 64)
    assert "class 2" in capsys.readouterr().out

    # forgetting --num-classes: a clear error that says which value to pass
    argv = [
        "--model",
        "resnet18",
        "--weights",
        str(checkpoint),
        "--image-size",
        "64",
        "--output-dir",
        str(tmp_path),
    ]
    assert cam_script.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cam.py: error:")
    assert "--num-classes 3" in err and "fc.weight" in err


def test_default_weights_offline_says_internet(cam_script, tmp_path, capsys, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    assert (
        cam_script.main(["--model", "resnet18", "--weights", "DEFAULT", "--output-dir", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cam.py: error:")
    assert "internet" in err and "--weights none" in err and "resnet18" in err


def test_target_category_out_of_range(cam_script, tmp_path, capsys):
    assert cam_script.main(["--target-category", "6", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and "6 outputs" in err


def test_non_checkpoint_weights_file(cam_script, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("these are not weights\n")
    assert cam_script.main(["--weights", str(not_a_checkpoint), "--output-dir", str(tmp_path)]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--weights", "pretrained"], "'DEFAULT' (pretrained), 'none' (random)"),
        (["--model", "resnet5O"], "Did you mean"),
        (["--image-path", "no/such/image.png"], "does not exist"),
        (["--image-size", "1", "2", "3"], "--image-size takes one or two"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--num-classes", "0"], "num_classes must be a positive int"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--per-layer", "--method", "fullgrad"], "per_layer does not apply to fullgrad"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(cam_script, tmp_path, capsys, argv, expected):
    assert cam_script.main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cam.py: error:")
    assert expected in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(cam_script, tmp_path, capsys):
    assert cam_script.main(["--device", "cuda", "--output-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_traceback_flag_and_argparse_errors(cam_script, tmp_path):
    with pytest.raises(ValueError, match="layer path"):
        cam_script.main(["--target-layer", "nope", "--traceback", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        cam_script.main(["--method", "gradcam+++"])
    assert info.value.code == 2
