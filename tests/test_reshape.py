"""Transformer tokens and channels-last maps are laid out without a hand-written transform."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from conftest import get_model, make_input

from camlib import EigenCAM, GradCAM
from camlib.utils.reshape_transforms import (
    infer_reshape_transform,
    swinT_reshape_transform,
    tokens_to_grid,
    vit_reshape_transform,
)


@pytest.mark.parametrize(
    ("tokens", "input_hw", "expected"),
    [
        (196, (224, 224), (0, 14, 14)),  # no class token
        (197, (224, 224), (1, 14, 14)),  # ViT: class token
        (198, (224, 224), (2, 14, 14)),  # DeiT: class + distillation tokens
        (201, (224, 224), (5, 14, 14)),  # class + 4 register tokens
        (281, (224, 320), (1, 14, 20)),  # non-square input
        (253, (224, 300), (1, 14, 18)),  # width not a multiple of the patch size
        (17, (32, 32), (1, 4, 4)),
    ],
)
def test_token_grid_inference(tokens, input_hw, expected):
    transform = infer_reshape_transform((2, tokens, 8), input_hw)
    x = torch.arange(2 * tokens * 8, dtype=torch.float32).reshape(2, tokens, 8)
    prefix, h, w = expected
    torch.testing.assert_close(transform(x), tokens_to_grid(x, prefix, h, w))
    assert transform(x).shape == (2, 8, h, w)


def test_uninferable_tokens_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot lay out 23 tokens.*pass\s+reshape_transform"):
        infer_reshape_transform((1, 23, 8), (224, 224))


def test_channels_last_is_detected():
    transform = infer_reshape_transform((1, 7, 7, 768), (224, 224))
    x = torch.randn(1, 7, 7, 768)
    torch.testing.assert_close(transform(x), swinT_reshape_transform(x))
    assert infer_reshape_transform((1, 512, 7, 7), (224, 224)) is None
    assert infer_reshape_transform((1, 7, 7, 7), (224, 224)) is None  # ambiguous: channels first


def test_reference_transforms():
    x = torch.randn(2, 197, 16)
    torch.testing.assert_close(vit_reshape_transform(x), tokens_to_grid(x, 1, 14, 14))
    y = torch.randn(2, 49, 16)
    assert swinT_reshape_transform(y).shape == (2, 16, 7, 7)


def test_vit_map_equals_explicit_transform():
    model = get_model("vit_b_16")
    x = make_input("vit_b_16")
    layer = [model.encoder.layers[-2].ln_1]
    automatic = GradCAM(model, layer)(x)
    explicit = GradCAM(model, layer, reshape_transform=functools.partial(vit_reshape_transform, height=2, width=2))(x)
    np.testing.assert_allclose(automatic, explicit, atol=1e-6)
    assert automatic.max() > 0


def test_swin_map_equals_explicit_transform():
    model = get_model("swin_t")
    x = make_input("swin_t")
    layer = [model.features[-1][-1].norm1]
    automatic = EigenCAM(model, layer)(x)
    explicit = EigenCAM(model, layer, reshape_transform=functools.partial(swinT_reshape_transform, height=2, width=2))(x)
    np.testing.assert_allclose(automatic, explicit, atol=1e-6)


def test_last_vit_block_warns_instead_of_silent_blank_map():
    model = get_model("vit_b_16")
    with pytest.warns(UserWarning, match="last block's patch tokens"):
        maps = GradCAM(model, [model.encoder.layers[-1]])(make_input("vit_b_16"))
    assert maps.max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradCAM(model, [model.encoder.layers[-2]])(make_input("vit_b_16"))
