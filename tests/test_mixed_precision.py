"""Mixed precision: float16 and bfloat16 models (converted, or run under torch.autocast) give
float32 maps for every method, close to the float32 model's maps.

bfloat16 is what CPUs run in practice; float16 convolutions also run on the CPU here. The
CUDA tests (float16 and autocast, the common GPU setups) skip without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot
from methods import RANDOM_METHODS, build, capabilities, method_names

from camlib import AblationCAM, AblationLayer, DeepFeatureFactorization, GradCAM, GuidedBackpropReLUModel
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.svd_on_activations import get_2d_projection, get_2d_projection_kernel

METHODS = method_names()
HALF = [torch.bfloat16, torch.float16]
#: Smallest correlation with the float32 map, per method where the default (0.98) is too strict.
#: FullGrad sums input x gradient and every bias x gradient: half-precision biases and input
#: gradients move it most.
MIN_CORRELATION = {"FullGrad": 0.9}


@pytest.fixture(scope="module")
def reference_model():
    return TinyCNN(num_classes=5).eval()


def _maps(method, model, x, context=None, device="cpu"):
    torch.manual_seed(0)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    with warnings.catch_warnings(), context or contextlib.nullcontext():
        warnings.simplefilter("ignore")
        return build(method, model, [model.features[-1]])(x.to(device), targets)


def _check_close(method, got, expected):
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1 + 1e-5
    if method in RANDOM_METHODS:
        return
    blank = got.reshape(len(got), -1).max(axis=1) == 0
    if capabilities(method).gain_over_baseline and blank.any():
        # a blank map is a result (nothing raises the target's score): the float32 model's map is blank too
        np.testing.assert_array_equal(blank, expected.reshape(len(expected), -1).max(axis=1) == 0)
        got, expected = got[~blank], expected[~blank]
        if not len(got):
            return
    assert got.max() > 0
    correlation = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    assert correlation > MIN_CORRELATION.get(method, 0.98), f"{method}: correlation {correlation:.3f}"


@pytest.mark.parametrize("mode", ["bfloat16", "float16", "autocast-bfloat16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_in_half_precision(method, mode, reference_model):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = _maps(method, reference_model, x)
    if mode.startswith("autocast"):
        model, context = reference_model, torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        model, context = copy.deepcopy(reference_model).to(getattr(torch, mode)), None
    before = model_snapshot(model)
    got = _maps(method, model, x, context)  # a float32 input: cast to the model's dtype
    _check_close(method, got, expected)
    assert_model_untouched(model, before)
    if not mode.startswith("autocast"):
        assert all(p.dtype == getattr(torch, mode) for p in model.parameters())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", ["GradCAM", "EigenCAM", "KPCA_CAM", "ScoreCAM", "AblationCAM", "LayerCAM"])
def test_vision_transformer_in_half_precision(method, dtype):
    """LayerNorm tokens: Ablation-CAM's 'minimum - 1e7' would be -inf in float16 (NaN maps)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, num_classes=5).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layers = [model.blocks[-2].norm1]
    expected = build(method, model, layers)(x, [ClassifierOutputTarget(2)])
    half = copy.deepcopy(model).to(dtype)
    got = build(method, half, [half.blocks[-2].norm1])(x.to(dtype), [ClassifierOutputTarget(2)])
    _check_close(method, got, expected)


def test_ablation_value_stays_finite_in_float16():
    layer = AblationLayer()
    acts = torch.tensor([[[-1.0, 2.0], [3.0, 4.0]]], dtype=torch.float16)
    assert layer.ablation_value(acts).item() == torch.finfo(torch.float16).min
    assert layer.ablation_value(acts.float()).item() == -1.0 - 1e7  # float32: the reference's value
    assert torch.isfinite(layer.ablate(acts, [0, 1])).all()


def test_projections_upcast_half_activations():
    """pytorch-grad-cam's numpy SVD rejects float16; camlib computes in float32 and returns float32."""
    acts = torch.randn(2, 8, 5, 5)
    for dtype in HALF:
        for projection in (get_2d_projection, get_2d_projection_kernel):
            got = projection(acts.to(dtype))
            assert got.dtype == torch.float32
            np.testing.assert_allclose(got, projection(acts.to(dtype).float()), atol=1e-5)
    assert get_2d_projection(acts.half().numpy()).dtype == np.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast is switched off inside
        torch.testing.assert_close(get_2d_projection(acts), get_2d_projection(acts.double()).float())
    ref_svd = pytest.importorskip("pytorch_grad_cam.utils.svd_on_activations")
    with pytest.raises(TypeError, match="float16"):
        ref_svd.get_2d_projection(acts.half().numpy())


def test_autocast_map_equals_the_cast_model_map(reference_model):
    """Under autocast the captured activations are bfloat16, the maps computed from them float32."""
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = GradCAM(reference_model, [reference_model.features[-1]])
        maps = cam(x, [ClassifierOutputTarget(1)] * 2)
    assert maps.dtype == np.float32
    assert cam.activations_and_grads.activations[0].dtype == torch.float32


def test_deep_feature_factorization_and_guided_backprop_in_bfloat16(reference_model):
    model = copy.deepcopy(reference_model).to(torch.bfloat16)
    x = torch.randn(2, 3, 16, 16)
    _, maps, scores = DeepFeatureFactorization(model, model.features[-1], computation_on_concepts=model.fc)(
        x, n_components=2
    )
    assert scores.dtype == np.float32 and scores.shape == (2, 5) and np.isfinite(scores).all()
    assert maps[0].shape == (2, 16, 16)
    guided = GuidedBackpropReLUModel(model)(x, target_category=1)
    assert guided.dtype == np.float32 and guided.shape == (2, 16, 16, 3) and np.abs(guided).max() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["float16", "bfloat16", "autocast-float16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_in_half_precision_on_cuda(method, mode, reference_model):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = _maps(method, reference_model, x)
    model = copy.deepcopy(reference_model).cuda()
    context = None
    if mode.startswith("autocast"):
        context = torch.autocast("cuda", dtype=torch.float16)
    else:
        model = model.to(getattr(torch, mode))
    _check_close(method, _maps(method, model, x, context, device="cuda"), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resnet_float16_on_cuda_gradients_do_not_underflow():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    expected = GradCAM(model, [model.layer4[-1]])(x, targets)
    half = copy.deepcopy(model).cuda().half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-gradient warning
        got = GradCAM(half, [half.layer4[-1]])(x.cuda(), targets)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98
    ablation = AblationCAM(half, [half.layer4[-1]], batch_size=256)(x.cuda(), targets)
    assert np.isfinite(ablation).all()
