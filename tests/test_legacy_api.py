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


# -- how the reference's usage examples drive it ----------------------------------------------------------
def _example_image() -> np.ndarray:
    """A generated RGB image in [0, 1] (the examples read a photo)."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    return np.float32(np.stack([xx, yy, (xx * yy) ** 0.5], axis=-1))


def _cam_py(library, method, model, aug_smooth, eigen_smooth, category):
    """The flow of the reference's cam.py: a method from its table, ``with``, ``cam.batch_size = 32``,
    the map of image 0, guided backpropagation and their product through ``deprocess_image``."""
    import cv2

    root = library
    image = __import__(f"{library.__name__}.utils.image", fromlist=["x"])
    targets_module = __import__(f"{library.__name__}.utils.model_targets", fromlist=["x"])
    rgb_img = _example_image()
    input_tensor = image.preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    targets = None if category is None else [targets_module.ClassifierOutputReST(category)]
    with getattr(root, method)(model=model, target_layers=[model.features]) as cam:
        cam.batch_size = 32
        grayscale_cam = cam(input_tensor=input_tensor, targets=targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        grayscale_cam = grayscale_cam[0, :]
        cam_image = image.show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
    gb_model = root.GuidedBackpropReLUModel(model=model, device="cpu")
    gb = gb_model(input_tensor, target_category=None)
    cam_mask = cv2.merge([grayscale_cam, grayscale_cam, grayscale_cam])
    return grayscale_cam, cam_image, image.deprocess_image(cam_mask * gb), image.deprocess_image(gb)


@pytest.mark.parametrize("aug_smooth", [False, True], ids=["plain", "aug_smooth"])
@pytest.mark.parametrize(
    ("method", "category"),
    [("GradCAM", None), ("HiResCAM", 2), ("GradCAMPlusPlus", None), ("XGradCAM", 1), ("LayerCAM", None),
     ("GradCAMElementWise", 3), ("ScoreCAM", None), ("AblationCAM", 2)],
)
def test_cam_py_flow(method, category, aug_smooth):
    import camlib as ours_root

    if aug_smooth and method in ("ScoreCAM", "AblationCAM"):
        pytest.skip("six passes of a perturbation method: aug_smooth is covered by the gradient methods")

    model = _model()
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        theirs = _cam_py(ref, method, copy.deepcopy(model), aug_smooth, False, category)
    ours = _cam_py(ours_root, method, model, aug_smooth, False, category)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4)
    for a, b in zip(ours[1:], theirs[1:]):  # uint8 images: at most one step of rounding
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def _swin_reshape_transform(tensor, height=2, width=2):
    """As the reference's Swin example writes it (7 x 7 at 224 px; 2 x 2 at 64 px)."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.fixture(scope="module")
def small_swin():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=64, embed_dim=16,
        depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2,
    ).eval()


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM"])
def test_swin_example(method, small_swin):
    """The reference's Swin example: timm's Swin, its last block's norm2, its reshape_transform."""
    model, x = small_swin, _images(batch=1)
    results = []
    for library in (ref, camlib):
        cam = getattr(library, method)(model=model, target_layers=[model.layers[-1].blocks[-1].norm2],
                                       reshape_transform=_swin_reshape_transform)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if library is ref else "error")
            results.append(cam(input_tensor=x, targets=None, eigen_smooth=False, aug_smooth=False))
        if library is ref:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(results[1], results[0], atol=1e-4)


class _ClipClassifier(torch.nn.Module):
    """The reference's CLIP example wraps CLIP as a classifier over text labels; here the labels are
    token ids already (no tokenizer download): softmax over ``logits_per_image``."""

    def __init__(self, clip, input_ids):
        super().__init__()
        self.clip, self.input_ids = clip, input_ids

    def forward(self, x):
        outputs = self.clip(pixel_values=x, input_ids=self.input_ids)
        return outputs.logits_per_image.softmax(dim=1)


def _clip_reshape_transform(tensor, height=4, width=4):
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.mark.parametrize("method", ["GradCAM", "LayerCAM"])
def test_clip_example(method):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=8),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    model = _ClipClassifier(transformers.CLIPModel(config).eval(), torch.tensor([[1, 5, 7, 2], [1, 9, 3, 2]])).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    results = []
    for library in (ref, camlib):
        layers = [model.clip.vision_model.encoder.layers[-1].layer_norm1]
        cam = getattr(library, method)(model=model, target_layers=layers, reshape_transform=_clip_reshape_transform)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if library is ref else "error")
            results.append(cam(input_tensor=x, targets=None))
        if library is ref:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
    assert results[1].max() > 0
    np.testing.assert_allclose(results[1], results[0], atol=1e-4)
