"""Video and volumes: torchvision's r3d_18 on clips and small 3-D medical-style networks
(a one-channel volume classifier, a voxel-wise segmenter), every method end to end."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import Tiny3D, assert_model_untouched, model_snapshot
from methods import PERTURBATION_METHODS, RANDOM_METHODS, blank_explained, build, capabilities, method_names

import camlib
from camlib import GradCAM
from camlib.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

METHODS = method_names()
#: Methods that take 5-D input (the others say so with a ValueError, checked in test_methods.py).
VOLUMETRIC = [m for m in METHODS if capabilities(m).volumetric]


@functools.cache
def r3d():
    torch.manual_seed(0)
    return torchvision.models.video.r3d_18(weights=None, num_classes=4).eval()


class VolumeSegmenter(torch.nn.Module):
    """A tiny 3-D encoder-decoder: one-channel volume in, per-voxel scores for 3 classes out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.BatchNorm3d(8), torch.nn.ReLU(),
            torch.nn.Conv3d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm3d(16), torch.nn.ReLU(),
        )  # fmt: skip
        self.decoder = torch.nn.Sequential(
            torch.nn.Upsample(scale_factor=2, mode="trilinear"), torch.nn.Conv3d(16, 3, 3, padding=1)
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("method", VOLUMETRIC)
def test_every_method_on_r3d_18(method):
    model = r3d()
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # [B, C, T, H, W]
    if method in PERTURBATION_METHODS:
        clips = clips[:1]  # one forward pass per channel
    # layer2 (128 channels, 2x8x8) keeps the perturbation methods fast; a method reading the
    # classifier's weights needs the layer the head reads
    layers = [model.layer4[-1]] if capabilities(method).classifier_weights else [model.layer2[-1]]
    targets = [ClassifierOutputTarget(c) for c in (1, 3)[: clips.shape[0]]]
    before = model_snapshot(model)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = build(method, model, layers, batch_size=128)(clips, targets) if method in PERTURBATION_METHODS \
            else build(method, model, layers)(clips, targets)  # fmt: skip
    assert maps.shape == (clips.shape[0], 4, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-5
    if method not in RANDOM_METHODS and not blank_explained(method, caught):
        assert maps.max() > 0
    assert_model_untouched(model, before)


@pytest.mark.parametrize("method", VOLUMETRIC)
def test_every_method_on_a_volume_segmenter(method):
    model = VolumeSegmenter().eval()
    volume = torch.randn(1, 1, 8, 12, 10, generator=torch.Generator().manual_seed(1))  # anisotropic [D, H, W]
    with torch.no_grad():
        lesion = (model(volume).argmax(1)[0] == 2).numpy()
    assert lesion.any()
    target = [SemanticSegmentationTarget(2, lesion)]
    if capabilities(method).classifier_weights:  # the segmenter has no final linear classifier
        with pytest.raises(TypeError, match=r"nn\.Linear"):
            build(method, model, [model.encoder])
        return
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = build(method, model, [model.encoder])(volume, target)
    assert maps.shape == (1, 8, 12, 10) and np.isfinite(maps).all() and maps.max() > 0


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM"])
def test_volume_classifier_parity_with_reference(method):
    """A one-channel volume classifier. The reference's gradient methods handle 5-D input (its
    ScoreCAM does not: it upsamples in 2-D); maps of the input's size, so no resizing differences."""
    ref = pytest.importorskip("pytorch_grad_cam")
    ref_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model = Tiny3D().eval()
    x = torch.randn(2, 1, 6, 10, 10, generator=torch.Generator().manual_seed(2))
    layers = [model.features[-1]]
    cam = getattr(ref, method)(model, layers)
    try:
        expected = cam(x, [ref_targets.ClassifierOutputTarget(c) for c in (0, 2)])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    got = getattr(camlib, method)(model, layers)(x, [ClassifierOutputTarget(c) for c in (0, 2)])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_clip_maps_follow_time():
    """A moving square: the map of each frame peaks where the square is in that frame."""
    model = r3d()
    clip = torch.zeros(1, 3, 4, 32, 32)
    for t in range(4):
        clip[0, :, t, 4:12, 4 + 6 * t : 12 + 6 * t] = 3.0
    maps = camlib.EigenCAM(model, [model.layer1[-1]])(clip)
    assert maps.shape == (1, 4, 32, 32)
    columns = [int(np.argmax(maps[0, t].sum(axis=0))) for t in range(4)]
    assert columns == sorted(columns) and columns[-1] > columns[0]


def test_five_d_input_errors_are_explicit():
    model = Tiny3D().eval()
    with pytest.raises(ValueError, match="aug_smooth works on 4-D"):
        GradCAM(model, [model.features[-1]])(torch.randn(1, 1, 6, 10, 10), aug_smooth=True)
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        GradCAM(model, [model.features[-1]])(torch.randn(1, 1, 2, 6, 10, 10))
