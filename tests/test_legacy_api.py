"""Older pytorch-grad-cam spellings run unchanged, with one warning that shows the modern call.

Each test is written as the older client code is (README of the 1.2/1.3 era,
scripts of 1.3 and 1.4), and compared with grad-cam 1.5.7 (the oracle) running
the modern call on the same model. Every warning is asserted; nothing else
may warn (``warnings.simplefilter("error")`` around the rest).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN

import camlib
from camlib import GradCAM
from camlib.guided_backprop import GuidedBackpropReLUModel
from camlib.utils.legacy import LegacyAPIWarning

ref = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget  # noqa: E402


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")


def _model(seed: int = 0) -> torch.nn.Module:
    return TinyCNN(num_classes=5, seed=seed).eval()


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _reference(name, model, layers, x, categories, **kwargs):
    """grad-cam 1.5.7's modern call, on a copy of the model (it leaves the model in eval mode and,
    for guided backpropagation, with new ReLUs); ``layers`` are modules of ``model``."""
    paths = {id(module): path for path, module in model.named_modules()}
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    cam = getattr(ref, name)(copied, [modules[paths[id(layer)]] for layer in layers])
    if hasattr(cam, "batch_size"):
        cam.batch_size = 64
    targets = None if categories is None else [RefTarget(c) for c in categories]
    with contextlib.redirect_stdout(None):
        result = cam(x, targets, **kwargs)
    cam.activations_and_grads.release()
    return result


@pytest.fixture
def model():
    return _model()


@contextlib.contextmanager
def one_warning(match: str, category=LegacyAPIWarning):
    """Exactly one warning of ``category`` matching ``match``, and nothing else."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert len(caught) == 1, messages
    assert issubclass(caught[0].category, category), messages
    assert re.search(match, str(caught[0].message)), messages
    assert caught[0].filename == __file__, f"attributed to {caught[0].filename}, not the user's line"


@pytest.fixture(autouse=True)
def _errors_elsewhere():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- constructors --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "ScoreCAM", "AblationCAM"])
def test_target_layer_keyword(name, model):
    x = _images()
    with one_warning(r"target_layer=layer .*target_layers=\[layer\]"):
        cam = getattr(camlib, name)(model=model, target_layer=model.features[-1])
    ours = cam(input_tensor=x, targets=[camlib.utils.model_targets.ClassifierOutputTarget(c) for c in (1, 3)])
    theirs = _reference(name, model, [model.features[-1]], x, [1, 3])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_use_cuda_true_with_a_cpu_model_says_where_it_runs(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with one_warning(r"use_cuda=True, but the model is on cpu.*runs on cpu.*never moves your model"):
        cam = GradCAM(model=model, target_layers=[model.features[-1]], use_cuda=True)
    assert next(model.parameters()).device.type == "cpu"
    x = _images()
    ours = cam(input_tensor=x, targets=None)
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, None), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_use_cuda_false_matching_the_model_only_says_it_is_not_needed(model):
    with one_warning(r"use_cuda is not needed.*\(cpu\)"):
        GradCAM(model=model, target_layers=[model.features[-1]], use_cuda=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_use_cuda_false_with_a_cuda_model_runs_on_cuda():
    model = _model().cuda()
    with one_warning(r"use_cuda=False, but the model is on cuda.*model.cpu\(\)"):
        cam = GradCAM(model=model, target_layers=[model.features[-1]], use_cuda=False)
    assert next(model.parameters()).is_cuda
    assert cam(_images().cuda(), None).shape == (2, 64, 64)


def test_positional_use_cuda_of_the_1_3_layout(model):
    """``GradCAM(model, target_layers, use_cuda, reshape_transform)`` (1.3 to 1.4)."""
    x = _images()
    with one_warning(r"third positional argument True is use_cuda"):
        cam = GradCAM(model, [model.features[-1]], True, None)
    assert cam.reshape_transform is None
    np.testing.assert_allclose(cam(x, None), _reference("GradCAM", model, [model.features[-1]], x, None), atol=1e-4)


def test_positional_use_cuda_with_ablation_cam_keeps_the_other_arguments(model):
    from camlib.ablation_layer import AblationLayer

    layer = AblationLayer()
    with one_warning(r"use_cuda"):
        cam = camlib.AblationCAM(model, [model.features[-1]], False, None, layer, 8)
    assert cam.batch_size == 8


def test_1_2_readme_snippet(model):
    """The README of the 1.2 era: a single target layer, use_cuda, an int target_category."""
    x = _images(batch=1)
    with one_warning(r"use_cuda.*target_layer=layer"):
        cam = GradCAM(model=model, target_layer=model.features[-1], use_cuda=False)
    with one_warning(r"target_category=2 .*ClassifierOutputTarget"):
        grayscale_cam = cam(input_tensor=x, target_category=2)
    grayscale_cam = grayscale_cam[0, :]
    theirs = _reference("GradCAM", model, [model.features[-1]], x, [2])[0]
    np.testing.assert_allclose(grayscale_cam, theirs, atol=1e-4)


def test_1_3_readme_snippet_with_statement(model):
    """The README of 1.3 to 1.4: ``with`` and ``use_cuda`` beside target_layers, aug/eigen smoothing."""
    x = _images()
    with one_warning(r"use_cuda"):
        with GradCAM(model=model, target_layers=[model.features[-1]], use_cuda=False) as cam:
            with one_warning(r"target_category=\[1, 4\]"):
                maps = cam(input_tensor=x, target_category=[1, 4], aug_smooth=True, eigen_smooth=False)
    theirs = _reference("GradCAM", model, [model.features[-1]], x, [1, 4], aug_smooth=True)
    np.testing.assert_allclose(maps, theirs, atol=1e-4)


# -- calls -------------------------------------------------------------------------------------------
@pytest.fixture
def cam(model):
    return GradCAM(model=model, target_layers=[model.features[-1]])


def test_target_category_int_for_the_whole_batch(cam, model):
    x = _images(batch=3)
    with one_warning(r"target_category=2 .*\[2, 2, 2\]"):
        ours = cam(input_tensor=x, target_category=2)
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, [2, 2, 2]), atol=1e-4)


def test_target_category_list_one_per_image(cam, model):
    x = _images()
    with one_warning(r"target_category=\[0, 3\]"):
        ours = cam(input_tensor=x, target_category=[0, 3])
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, [0, 3]), atol=1e-4)


def test_target_category_none(cam, model):
    x = _images()
    with one_warning(r"target_category=None .*targets=None"):
        ours = cam(input_tensor=x, target_category=None)
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, None), atol=1e-4)


@pytest.mark.parametrize("categories", [[1, 2], (1, 2), np.array([1, 2]), torch.tensor([1, 2])], ids=["list", "tuple", "numpy", "tensor"])
def test_positional_class_indices(cam, model, categories):
    x = _images()
    with one_warning(r"class indices .* as targets"):
        ours = cam(x, categories)
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, [1, 2]), atol=1e-4)


def test_positional_int_and_numpy_int(cam, model):
    x = _images()
    theirs = _reference("GradCAM", model, [model.features[-1]], x, [4, 4])
    with one_warning(r"as targets"):
        ours = cam(x, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    with one_warning(r"as targets"):
        ours = cam(x, np.int64(4))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_forward_takes_target_category(cam, model):
    x = _images()
    with one_warning(r"target_category"):
        ours = cam.forward(x, target_category=[1, 2])
    np.testing.assert_allclose(ours, _reference("GradCAM", model, [model.features[-1]], x, [1, 2]), atol=1e-4)


def test_wrapper_method_takes_class_indices(model):
    x = _images()
    cam = camlib.RefineCAM(model, [model.features[-2], model.features[-1]])
    expected = cam(x, [camlib.utils.model_targets.ClassifierOutputTarget(c) for c in (1, 2)])
    with one_warning(r"target_category=\[1, 2\]"):
        ours = cam(x, target_category=[1, 2])
    np.testing.assert_array_equal(ours, expected)


def test_one_warning_per_call_site_with_the_default_filter(cam):
    x = _images()
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for _ in range(3):
            cam(x, target_category=1)
    assert len(caught) == 1 and caught[0].category is LegacyAPIWarning


def test_batch_size_set_after_construction(model):
    """``cam.batch_size = 32`` (how 1.2 to 1.4 scripts sized ScoreCAM/AblationCAM batches)."""
    x = _images(batch=1)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        cam = camlib.ScoreCAM(model=model, target_layers=[model.features[-1]])
        cam.batch_size = 4
        ours = cam(x, [camlib.utils.model_targets.ClassifierOutputTarget(1)])
    finally:
        handle.remove()
    assert max(seen[1:]) == 4, seen
    np.testing.assert_allclose(ours, _reference("ScoreCAM", model, [model.features[-1]], x, [1]), atol=1e-4)


def test_errors_name_the_modern_spelling(model, cam):
    with pytest.raises(TypeError, match="not both"):
        GradCAM(model=model, target_layers=[model.features[-1]], target_layer=model.features[-1])
    with pytest.raises(TypeError, match="target_category must be an int"):
        cam(_images(), target_category=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'target_catgory'"):
        cam(_images(), target_catgory=1)
    with pytest.raises(TypeError, match="not both"):
        cam(_images(), [1, 2], target_category=[1, 2])


# -- guided backpropagation ---------------------------------------------------------------------------
def _relu_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("category", [None, 2])
def test_guided_backprop_use_cuda_keyword(category):
    """``GuidedBackpropReLUModel(model=model, use_cuda=True)(x, target_category=...)`` (before 1.5)."""
    net, x = _relu_net(), _images(batch=1)
    theirs = ref.GuidedBackpropReLUModel(copy.deepcopy(net), device="cpu")(x.clone(), target_category=category)
    with one_warning(r"use_cuda.*runs on cpu"):
        gb_model = GuidedBackpropReLUModel(model=net, use_cuda=True)
    assert next(net.parameters()).device.type == "cpu"
    ours = gb_model(x, target_category=category)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_guided_backprop_positional_use_cuda():
    net, x = _relu_net(), _images(batch=1)
    with one_warning(r"GuidedBackpropReLUModel\(model, use_cuda\)"):
        gb_model = GuidedBackpropReLUModel(net, False)
    theirs = ref.GuidedBackpropReLUModel(copy.deepcopy(net))(x.clone(), 1)
    np.testing.assert_allclose(gb_model(x, 1), theirs, atol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'use_gpu'"):
        GuidedBackpropReLUModel(net, use_gpu=True)
