"""Every method x several architectures: contract of the output and hygiene of the model."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import ARCHS, assert_model_untouched, get_model, make_input, model_snapshot
from methods import PERTURBATION_METHODS, RANDOM_METHODS, build, capabilities, method_names

from camlib.capabilities import Capabilities
from camlib.demo import CLASS_NAMES, demo_preprocess, demo_target_layers, load_demo_model, make_sample
from camlib.utils.model_targets import ClassifierOutputTarget

METHODS = method_names()
HEAVY_ARCHS = {"vgg11", "densenet121", "vit_b_16", "swin_t"}


#: Architectures whose target layer in ARCHS does not feed the final linear layer through global pooling.
LAYER_NOT_BEFORE_CLASSIFIER = {"vgg11", "mobilenet_v3_small", "densenet121"}


def _not_applicable(method: str, arch: str) -> bool:
    # a method reading the classifier's weights needs the layer right before pooling
    return capabilities(method).classifier_weights and arch in LAYER_NOT_BEFORE_CLASSIFIER


def test_every_method_is_collected():
    expected = {
        "GradCAM", "HiResCAM", "GradCAMElementWise", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "EigenCAM",
        "EigenGradCAM", "KPCA_CAM", "ScoreCAM", "AblationCAM", "FullGrad", "FEM", "ShapleyCAM", "SegEigenCAM",
        "RandomCAM", "FinerCAM", "RefineCAM", "CAM", "SESS",
    }
    missing = expected - set(METHODS)
    assert not missing, f"methods missing from camlib.__all__: {sorted(missing)}"


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", METHODS)
def test_method_on_architecture(method, arch):
    model = get_model(arch)
    _, layers_of, shape, num_classes = ARCHS[arch]
    x = make_input(arch)
    if method in PERTURBATION_METHODS and arch in HEAVY_ARCHS:
        # one forward per channel (768 for the transformers): one image keeps the suite fast;
        # batches of several images are covered on the other architectures
        x = x[:1]
    shape = tuple(x.shape)
    x_before = x.clone()
    targets = [ClassifierOutputTarget((7 * i + 1) % num_classes) for i in range(shape[0])]
    before = model_snapshot(model)
    cam = build(method, model, layers_of(model))
    if x.ndim == 5 and not capabilities(method).volumetric:
        with pytest.raises(ValueError, match="4-D"):
            cam(x, targets)
        assert_model_untouched(model, before)
        return
    if _not_applicable(method, arch):
        with pytest.raises(ValueError, match="input features"):
            cam(x, targets)
        assert_model_untouched(model, before)
        return
    with cam, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = cam(x, targets)
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (shape[0], *shape[2:])
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-5
    assert torch.equal(x, x_before), "the input tensor was modified"
    assert_model_untouched(model, before)


BATCH_ARCHS = ["tiny_cnn", "resnet18", "tiny_3d"]


@pytest.mark.parametrize("arch", BATCH_ARCHS)
@pytest.mark.parametrize("method", [m for m in METHODS if m not in RANDOM_METHODS])
def test_batch_equals_single_images(method, arch):
    """A map does not depend on the other images of the batch, and per-image targets are honoured."""
    model = get_model(arch)
    _, layers_of, _, num_classes = ARCHS[arch]
    x = make_input(arch, seed=3)
    if x.ndim == 5 and not capabilities(method).volumetric:
        pytest.skip(f"{method} takes 4-D input only (test_method_on_architecture checks the error)")
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2 % num_classes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = build(method, model, layers_of(model))(x, targets)
        single = [build(method, model, layers_of(model))(x[i : i + 1], [targets[i]])[0] for i in range(2)]
    np.testing.assert_allclose(batch, np.stack(single), atol=2e-4)


@pytest.mark.parametrize("method", METHODS)
def test_per_layer_maps(method):
    model = get_model("resnet18")
    x = make_input("resnet18")
    if not capabilities(method).per_layer:
        with pytest.raises(ValueError, match="per_layer"):
            build(method, model, [model.layer3[-1], model.layer4[-1]])(x, per_layer=True)
        return
    # a method reading the classifier's weights needs layers with its 512 input features;
    # the others compare two resolutions.
    caps = capabilities(method)
    layers = [model.layer4[0], model.layer4[-1]] if caps.classifier_weights else [model.layer3[-1], model.layer4[-1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = build(method, model, layers)
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002 (RandomCAM draws from numpy's global generator, as pytorch-grad-cam)
        per_layer = cam(x, per_layer=True)
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002
        mean = cam(x)
    assert per_layer.shape == (2, 2, 64, 64)
    assert per_layer.dtype == np.float32
    assert per_layer.min() >= 0 and per_layer.max() <= 1 + 1e-5
    if caps.layer_fusion == "mean":
        # the default output is the mean of the per-layer maps, rescaled
        combined = per_layer.mean(axis=1)
        combined = combined - combined.min(axis=(1, 2), keepdims=True)
        combined = combined / (1e-7 + combined.max(axis=(1, 2), keepdims=True))
        np.testing.assert_allclose(mean, combined, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_aug_smooth_and_eigen_smooth(method):
    model = get_model("tiny_cnn")
    x = make_input("tiny_cnn")
    before = model_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with build(method, model, ARCHS["tiny_cnn"][1](model)) as cam:
            smooth = cam(x, aug_smooth=True)
            if not capabilities(method).eigen_smooth:
                with pytest.raises(ValueError, match="eigen_smooth"):
                    cam(x, eigen_smooth=True)
                eigen = both = smooth
            else:
                eigen = cam(x, eigen_smooth=True)
                both = cam(x, aug_smooth=True, eigen_smooth=True)
    for maps in (smooth, eigen, both):
        assert maps.shape == (2, 16, 16) and maps.dtype == np.float32
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-5
    assert_model_untouched(model, before)


def test_gradient_method_under_no_grad():
    from camlib import GradCAM

    model = get_model("resnet18")
    x = make_input("resnet18")
    expected = GradCAM(model, [model.layer4[-1]])(x)
    with torch.no_grad():
        got = GradCAM(model, [model.layer4[-1]])(x)
    with torch.inference_mode():
        got_inference = GradCAM(model, [model.layer4[-1]])(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got_inference, expected, atol=1e-6)
    assert torch.is_grad_enabled()


class _TargetError(Exception):
    pass


def _raising_target(output):
    raise _TargetError("target failed")


def _raise_in_forward(module, args, output):
    raise _TargetError("the model failed mid-forward")


@pytest.mark.parametrize("where", ["forward", "target"])
@pytest.mark.parametrize("arch", ["tiny_cnn", "tiny_3d"])
@pytest.mark.parametrize("method", METHODS)
def test_exception_mid_call_leaves_model_untouched(method, arch, where):
    if where == "target" and not capabilities(method).calls_targets:  # class-agnostic, or reads target.category
        pytest.skip(f"{method} never calls the targets")
    model = get_model(arch)
    model.train()  # a training-mode model must come back in training mode
    handle = None
    try:
        before = model_snapshot(model)
        cam = build(method, model, ARCHS[arch][1](model))
        x = make_input(arch)
        if x.ndim == 5 and not capabilities(method).volumetric:
            pytest.skip(f"{method} takes 4-D input only (test_method_on_architecture checks the error)")
        targets = None
        if where == "target":
            targets = [_raising_target] * x.shape[0]
        else:
            handle = model.fc.register_forward_hook(_raise_in_forward)
        with pytest.raises(_TargetError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cam(x, targets)
        if handle is not None:
            handle.remove()
            handle = None
        assert_model_untouched(model, before)
        assert torch.is_grad_enabled()
    finally:
        if handle is not None:
            handle.remove()
        model.eval()


def _dilated(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)


def _check_demo_maps(maps: np.ndarray, masks: np.ndarray, categories: tuple, caps) -> None:
    """Finite, in [0, 1], not blank or constant, energy on the objects (on the explained one if class-specific)."""
    assert maps.shape == (len(categories), 128, 128) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-5
    assert maps.max(axis=(1, 2)).min() > 0.99 and maps.std(axis=(1, 2)).min() > 0.05, "a blank or constant map"
    if caps.stochastic:
        return
    objects = _dilated(masks[list(categories)].any(axis=0))
    for i, category in enumerate(categories):
        share = maps[i][objects].sum() / maps[i].sum()
        assert share > 1.1 * objects.mean(), f"image {i}: {share:.2f} of the energy on the objects"
        if caps.class_specific and not caps.own_layers:
            target = _dilated(masks[category])
            share = maps[i][target].sum() / maps[i].sum()
            assert share > 2 * target.mean(), f"{CLASS_NAMES[category]}: {share:.2f} of the energy on it"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_the_object_on_the_demo_image(method):
    """Not a blank map: on the bundled demo model and its sample image (a star and a ring), with the
    explained class present, every map is finite, non-constant and puts its energy on the objects;
    a class-specific map puts it on the explained object. Nothing warns."""
    caps = capabilities(method)
    if caps.needs_attention:
        pytest.skip(f"{method} explains transformers' attention; the demo model is a CNN")
    image, _, masks = make_sample(128)
    model = load_demo_model()
    x = demo_preprocess(image).repeat(2, 1, 1, 1)
    categories = (CLASS_NAMES.index("star"), CLASS_NAMES.index("ring"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002 - RandomCAM draws from numpy's global generator, as pytorch-grad-cam
        maps = build(method, model, demo_target_layers(model), batch_size=256)(
            x, [ClassifierOutputTarget(c) for c in categories]
        )
    _check_demo_maps(maps, masks, categories, caps)


@pytest.mark.parametrize("kind", ["zeros", "constant", "noise", "wrong object"])
def test_the_blank_map_check_can_fail(kind):
    """The check above rejects an all-zero, a constant, a uniform-noise map, and a map on the other object."""
    _, _, masks = make_sample(128)
    categories = (CLASS_NAMES.index("star"), CLASS_NAMES.index("ring"))
    maps = {
        "zeros": np.zeros((2, 128, 128)),
        "constant": np.full((2, 128, 128), 0.5),
        "noise": np.random.default_rng(0).random((2, 128, 128)),
        "wrong object": np.stack([masks[categories[1]], masks[categories[0]]]).astype(np.float32),
    }[kind]
    with pytest.raises(AssertionError):
        _check_demo_maps(maps, masks, categories, Capabilities())
