"""Vision transformers from timm, torchvision and Hugging Face: default target layers,
token-to-grid layout (class, distillation and register tokens, non-square inputs),
which methods give maps, and a warning (not a silent blank map) where they cannot.

Every model is built offline with random weights.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_model_untouched, get_model, make_input, model_snapshot, optional
from methods import (
    ATTENTION_METHODS,
    PERTURBATION_METHODS,
    RANDOM_METHODS,
    blank_explained,
    build,
    capabilities,
    method_names,
)

import camlib
from camlib import EigenCAM, GradCAM
from camlib.models import default_target_layer_paths, default_target_layers
from camlib.utils.model_targets import ClassifierOutputTarget
from camlib.utils.reshape_transforms import num_prefix_tokens, tokens_to_grid

timm = optional("timm")

METHODS = method_names()


def _explains_target_layers_with_gradients(name: str) -> bool:
    caps = capabilities(name)  # wrappers declare their default base method's needs
    return caps.gradients and not caps.own_layers  # FullGrad picks its own layers


GRADIENT_METHODS = [m for m in METHODS if _explains_target_layers_with_gradients(m)]
ZERO_GRADIENT = "gradient of the target score w.r.t. target layer"

#: name -> (timm model name, create_model kwargs, input size, prefix tokens). Small depths and
#: widths keep the perturbation methods (one forward pass per channel) fast.
TIMM_SPECS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 4}, (64, 64), 1),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 4}, (64, 64), 2),
    "vit_registers": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 4, "reg_tokens": 4}, (64, 64), 5),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 64, "embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8), "window_size": 2},
        (64, 64),
        None,
    ),
    "convnext": ("convnext_atto", {}, (64, 64), None),
}


@functools.cache
def timm_model(key: str) -> torch.nn.Module:
    name, kwargs, _, _ = TIMM_SPECS[key]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


def timm_input(key: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *TIMM_SPECS[key][2], generator=torch.Generator().manual_seed(1))


def _blank_is_expected(method: str, positions: int) -> bool:
    # e.g. FEM keeps positions above mean + 2 std: with n positions the largest z-score is
    # (n - 1) / sqrt(n), so a grid of fewer than 6 positions can never pass (Swin's and ConvNeXt's
    # last 2x2 stage here).
    return method in RANDOM_METHODS or positions < capabilities(method).min_positions


@pytest.mark.parametrize("method", method_names(attention=True))
@pytest.mark.parametrize("key", list(TIMM_SPECS))
def test_every_method_on_timm_default_layers(key, method):
    model = timm_model(key)
    name = TIMM_SPECS[key][0]
    layers = default_target_layers(model, f"timm:{name}")
    x = timm_input(key, 1 if method in PERTURBATION_METHODS else 2)
    before = model_snapshot(model)
    targets = [ClassifierOutputTarget(c) for c in (1, 2)[: x.shape[0]]]
    if method in ATTENTION_METHODS and key in ("swin", "convnext"):  # windowed attention, or none
        with pytest.raises(ValueError, match=r"no self-attention module|windowed attention"):
            build(method, model, layers)(x, targets)
        assert_model_untouched(model, before)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = build(method, model, layers)(x, targets)
    assert not [w for w in caught if ZERO_GRADIENT in str(w.message)], "the default layer gets no gradient"
    assert maps.shape == (x.shape[0], *x.shape[2:]) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-5
    blank = maps.reshape(x.shape[0], -1).max(axis=1) == 0
    if not _blank_is_expected(method, 4 if key in ("swin", "convnext") else 16) and not blank_explained(method, caught):
        assert not blank.any(), f"{method} gave a blank map on {key}"
    assert_model_untouched(model, before)


def test_prefix_tokens_are_read_from_the_model():
    for key, (_, _, _, prefix) in TIMM_SPECS.items():
        assert num_prefix_tokens(timm_model(key)) == prefix, key
    assert num_prefix_tokens(get_model("vit_b_16")) == 1
    assert num_prefix_tokens(get_model("swin_t")) is None


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("vit", (32, 32)),  # 2x2 grid after 1 class token
        ("deit_distilled", (32, 32)),  # 2 prefix tokens + 2x2 grid: 6 tokens, too few to guess
        ("vit_registers", (48, 48)),  # class + 4 registers + 3x3 grid: 14 tokens
    ],
)
def test_small_grids_with_extra_tokens_match_an_explicit_transform(key, size):
    name, kwargs, _, prefix = TIMM_SPECS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **{**kwargs, "img_size": size}).eval()
    x = torch.randn(2, 3, *size)
    layers = [model.blocks[-2].norm1]
    h, w = size[0] // 16, size[1] // 16
    explicit = functools.partial(tokens_to_grid, prefix=prefix, height=h, width=w)
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(4)]
    for cls in (GradCAM, EigenCAM):
        np.testing.assert_allclose(
            cls(model, layers)(x, targets), cls(model, layers, reshape_transform=explicit)(x, targets), atol=1e-6
        )


def test_dinov2_register_model_by_name():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=10, img_size=42, depth=3)
    model.eval()
    layers = default_target_layers(model, "timm:vit_small_patch14_reg4_dinov2")
    assert num_prefix_tokens(model) == 5
    x = torch.randn(1, 3, 42, 42)
    maps = GradCAM(model, layers)(x, [ClassifierOutputTarget(2)])
    explicit = GradCAM(model, layers, reshape_transform=functools.partial(tokens_to_grid, prefix=5, height=3, width=3))
    np.testing.assert_allclose(maps, explicit(x, [ClassifierOutputTarget(2)]), atol=1e-6)
    assert maps.max() > 0


@pytest.mark.parametrize(
    ("kwargs", "size", "grid"),
    [
        ({"img_size": (32, 64)}, (32, 64), (2, 4)),  # built for a non-square size
        ({"img_size": 32, "dynamic_img_size": True}, (48, 80), (3, 5)),  # any size at call time
        ({"img_size": 32, "dynamic_img_size": True, "class_token": False, "global_pool": "avg"}, (64, 32), (4, 2)),
    ],
)
def test_non_square_inputs(kwargs, size, grid):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=3, **kwargs).eval()
    x = torch.randn(2, 3, *size)
    layers = [model.blocks[-2].norm1]
    prefix = num_prefix_tokens(model)
    explicit = functools.partial(tokens_to_grid, prefix=prefix, height=grid[0], width=grid[1])
    for method in ("GradCAM", "ScoreCAM", "AblationCAM"):
        automatic = build(method, model, layers)(x, None)
        assert automatic.shape == (2, *size)
        np.testing.assert_allclose(
            automatic, build(method, model, layers, reshape_transform=explicit)(x, None), atol=1e-5
        )


def test_non_square_swin():
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=(64, 128), embed_dim=32,
        depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=2,
    ).eval()
    layers = default_target_layers(model, "timm:swin_tiny_patch4_window7_224")
    maps = GradCAM(model, layers)(torch.randn(1, 3, 64, 128), [ClassifierOutputTarget(1)])
    assert maps.shape == (1, 64, 128) and maps.max() > 0


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m not in PERTURBATION_METHODS])
@pytest.mark.parametrize("arch", ["timm_vit", "timm_deit", "vit_b_16"])
def test_last_block_warns_for_gradient_methods(method, arch):
    """The last block's patch tokens do not reach the class token(s): a warning says so and
    names a layer that works, for every gradient method."""
    if arch == "vit_b_16":
        model, x, layer = get_model("vit_b_16"), make_input("vit_b_16"), get_model("vit_b_16").encoder.layers[-1]
    else:
        model = timm_model("vit" if arch == "timm_vit" else "deit_distilled")
        x, layer = timm_input("vit"), model.blocks[-1]
    with pytest.warns(UserWarning, match=r"last block's patch tokens.*EigenCAM"):
        maps = build(method, model, [layer])(x, [ClassifierOutputTarget(1)] * x.shape[0])
    assert np.isfinite(maps).all()


@pytest.mark.parametrize("method", ["EigenCAM", "KPCA_CAM", "ScoreCAM", "AblationCAM"])
def test_last_block_works_without_gradients(method):
    model = timm_model("vit")
    x = timm_input("vit", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = build(method, model, [model.blocks[-1]])(x, [ClassifierOutputTarget(1)])
    assert maps.max() > 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vit_b_16", "encoder.layers[-2].ln_1"),
        ("swin_t", "features[-1][-1].norm1"),
        ("timm:vit_tiny_patch16_224", "blocks[-2].norm1"),
        ("timm:deit_tiny_distilled_patch16_224", "blocks[-2].norm1"),
        ("timm:vit_small_patch14_reg4_dinov2", "blocks[-2].norm1"),
        ("timm:swin_tiny_patch4_window7_224", "layers[-1].blocks[-1].norm1"),
        ("timm:swinv2_tiny_window8_256", "layers[-1].blocks[-1].norm1"),
        ("timm:convnext_atto", "stages[-1]"),
        ("timm:maxvit_tiny_tf_224", "stages[-1]"),
    ],
)
def test_default_target_layer_paths(name, expected):
    assert default_target_layer_paths(name) == [expected]


def test_torchvision_transformers_default_layers_resolve():
    for name in ("vit_b_16", "swin_t"):
        model = get_model(name)
        layers = default_target_layers(model, name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            maps = GradCAM(model, layers)(make_input(name), [ClassifierOutputTarget(5)] * 2)
        assert maps.max() > 0


def test_deit_parity_with_reference():
    """The reference needs a reshape_transform dropping the two prefix tokens; camlib does it itself."""
    ref = pytest.importorskip("pytorch_grad_cam")
    ref_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model = timm_model("deit_distilled")
    x = timm_input("deit_distilled")
    layers = default_target_layers(model, "timm:deit_tiny_distilled_patch16_224")
    transform = functools.partial(tokens_to_grid, prefix=2, height=4, width=4)
    for name in ("GradCAM", "GradCAMPlusPlus", "LayerCAM"):
        cam = getattr(ref, name)(model, layers, reshape_transform=transform)
        try:
            expected = cam(x, [ref_targets.ClassifierOutputTarget(c) for c in (1, 2)])
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
        got = getattr(camlib, name)(model, layers)(x, [ClassifierOutputTarget(c) for c in (1, 2)])
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=name)


# -- Hugging Face transformers ----------------------------------------------------------------


def _hf_models():
    transformers = pytest.importorskip("transformers")
    tiny = {"image_size": 32, "num_labels": 5}
    vit = {**tiny, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
           "intermediate_size": 64}  # fmt: skip
    torch.manual_seed(0)
    return {
        "vit": (transformers.ViTForImageClassification(transformers.ViTConfig(**vit)), "vit.layers[-2].layernorm_before", 1),
        "deit": (
            transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**vit)),
            "deit.layers[-2].layernorm_before",
            2,
        ),
        "swin": (
            transformers.SwinForImageClassification(
                transformers.SwinConfig(**tiny, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=2)
            ),
            "swin.encoder.layers[-1].blocks[-1].layernorm_before",
            None,
        ),
        "convnext": (
            transformers.ConvNextForImageClassification(
                transformers.ConvNextConfig(num_labels=5, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
            ),
            "convnext.encoder.stages[-1]",
            None,
        ),
    }


@pytest.fixture(scope="module")
def hf_models():
    models = _hf_models()
    for model, _, _ in models.values():
        model.eval()
    return models


@pytest.mark.parametrize("key", ["vit", "deit", "swin", "convnext"])
def test_hugging_face_classifiers_without_wrappers(key, hf_models):
    from camlib.utils.find_layers import get_layer_by_path

    model, path, prefix = hf_models[key]
    assert num_prefix_tokens(model) == prefix
    layer = get_layer_by_path(model, path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = model_snapshot(model)
    with torch.no_grad():
        top = model(x).logits.argmax(1).tolist()
    for method in ("GradCAM", "EigenCAM", "ScoreCAM", "AblationCAM", "LayerCAM", "FinerCAM"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            default = build(method, model, [layer])(x, None)
            explicit = build(method, model, [layer])(x, [ClassifierOutputTarget(c) for c in top])
        assert default.shape == (2, 32, 32) and np.isfinite(default).all()
        assert default.reshape(2, -1).max(axis=1).min() > 0, method
        if capabilities(method).top_class_default:  # else targets=None means something else (FinerCAM)
            np.testing.assert_allclose(default, explicit, atol=1e-5, err_msg=method)
    assert_model_untouched(model, before)


def test_hugging_face_vit_parity_with_reference(hf_models):
    """The reference needs a wrapper returning .logits and a reshape_transform; camlib needs neither."""
    ref = pytest.importorskip("pytorch_grad_cam")
    from camlib.utils.reshape_transforms import vit_reshape_transform

    model, _, _ = hf_models["vit"]

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).logits

    layers = [model.vit.layers[-2].layernorm_before]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    wrapper = LogitsOnly(model).eval()
    cam = ref.GradCAM(wrapper, layers, reshape_transform=functools.partial(vit_reshape_transform, height=4, width=4))
    try:
        expected = cam(x, None)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(GradCAM(model, layers)(x), expected, atol=1e-4)


def test_hugging_face_last_layer_warns(hf_models):
    model, _, _ = hf_models["vit"]
    with pytest.warns(UserWarning, match="last block's patch tokens"):
        GradCAM(model, [model.vit.layers[-1]])(torch.randn(1, 3, 32, 32), [ClassifierOutputTarget(0)])
