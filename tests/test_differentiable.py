"""Differentiable maps (BaseCAM.differentiable_maps): gradcheck, equality with the ordinary maps, model hygiene."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import hooks_left
from torch import nn

from camlib import GradCAM, ScoreCAM
from camlib.registry import methods
from camlib.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

DIFFERENTIABLE = [info.cls for info in methods() if info.capabilities.differentiable]


class Tiny(nn.Module):
    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.tanh(self.norm(self.conv1(x)))
        return self.fc(self.pool(torch.tanh(self.conv2(x))).flatten(1))


class _WithWeight(nn.Module):
    """Runs ``inner`` with ``conv1.weight`` replaced by ``self.weight`` (a gradcheck input)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.weight = None

    def forward(self, x):
        return torch.func.functional_call(self.inner, {"conv1.weight": self.weight}, (x,))


def _tiny(seed: int = 0, dtype=torch.float64, batch_norm: bool = False) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(batch_norm).to(dtype).eval()


def test_the_differentiable_methods_are_the_expected_ones():
    names = {cls.__name__ for cls in DIFFERENTIABLE}
    assert {"GradCAM", "HiResCAM", "GradCAMElementWise", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "CAM"} <= names


@pytest.mark.parametrize("method", DIFFERENTIABLE, ids=lambda c: c.__name__)
def test_gradcheck_with_respect_to_a_parameter(method):
    model = _WithWeight(_tiny())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    weight = model.inner.conv1.weight.detach().clone().requires_grad_()
    model.weight = weight
    cam = method(model, [model.inner.conv2])

    def maps_of(w):
        model.weight = w
        return cam.differentiable_maps(x, targets)

    assert torch.autograd.gradcheck(maps_of, (weight,), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("method", DIFFERENTIABLE, ids=lambda c: c.__name__)
def test_values_equal_the_ordinary_maps(method):
    model = _tiny(dtype=torch.float32)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = [ClassifierOutputTarget(c) for c in (0, 1, 2)]
    cam = method(model, [model.conv2])
    maps = cam.differentiable_maps(x, targets)
    assert maps.requires_grad and maps.shape == (3, 8, 8)
    np.testing.assert_allclose(maps.detach().numpy(), cam(x, targets), atol=1e-5)


def test_several_targets_per_image_give_one_map_each():
    model = _tiny(dtype=torch.float32)
    x = torch.randn(2, 2, 8, 8)
    cam = GradCAM(model, [model.conv2])
    maps = cam.differentiable_maps(x, [[ClassifierOutputTarget(0), ClassifierOutputTarget(1)]] * 2)
    assert maps.shape == (2, 2, 8, 8)
    for k in range(2):
        np.testing.assert_allclose(maps[:, k].detach().numpy(), cam(x, [ClassifierOutputTarget(k)] * 2), atol=1e-5)
    with pytest.raises(ValueError, match="same number of targets"):
        cam.differentiable_maps(x, [[ClassifierOutputTarget(0)], [ClassifierOutputTarget(0), ClassifierOutputTarget(1)]])
    with pytest.raises(ValueError, match="one entry per image"):
        cam.differentiable_maps(x, [ClassifierOutputTarget(0)])


def test_training_mode_runs_once_and_leaves_no_trace():
    model = _tiny(dtype=torch.float32, batch_norm=True).train()
    reference = _tiny(dtype=torch.float32, batch_norm=True).train()
    x = torch.randn(4, 2, 8, 8)
    maps = GradCAM(model, [model.conv2]).differentiable_maps(x, [ClassifierOutputTarget(1)] * 4)
    reference(x)  # the user's own forward pass: batch-norm statistics move once
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(model.norm.running_mean, reference.norm.running_mean)
    assert int(model.norm.num_batches_tracked) == 1
    assert hooks_left(model) == 0
    assert all(p.grad is None for p in model.parameters()), "nothing is written into .grad before backward()"
    maps.mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is not None


def test_a_loss_on_the_map_trains_the_layers_before_and_after_the_target_layer():
    model = _tiny(dtype=torch.float32)
    x = torch.randn(2, 2, 8, 8)
    maps = GradCAM(model, [model.conv2]).differentiable_maps(x, [ClassifierOutputTarget(0)] * 2)
    wanted = torch.zeros_like(maps)
    wanted[:, :4] = 1
    nn.functional.mse_loss(maps, wanted).backward()
    for name in ("conv1", "conv2", "fc"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name


def test_under_autocast():
    model = _tiny(dtype=torch.float32)
    x = torch.randn(2, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = GradCAM(model, [model.conv2]).differentiable_maps(x, [ClassifierOutputTarget(0)] * 2)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all() and maps.requires_grad
    maps.sum().backward()


def test_with_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    store = dist.FileStore(os.fspath(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _tiny(dtype=torch.float32)
        wrapped = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(2, 2, 8, 8)
        maps = GradCAM(wrapped, [model.conv2]).differentiable_maps(x, [ClassifierOutputTarget(0)] * 2)
        maps.mean().backward()
        assert model.conv1.weight.grad is not None
    finally:
        dist.destroy_process_group()


def test_other_targets_and_errors():
    model = _tiny(dtype=torch.float32)
    x = torch.randn(2, 2, 8, 8)
    maps = GradCAM(model, [model.conv2]).differentiable_maps(x, [BinaryClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, 8, 8)
    with pytest.raises(TypeError, match=r"ScoreCAM cannot return differentiable maps.*GradCAM"):
        ScoreCAM(model, [model.conv2]).differentiable_maps(x, [ClassifierOutputTarget(0)] * 2)

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            self.conv(x)
            return torch.zeros(x.shape[0], 3)

    constant = Constant()
    with warnings.catch_warnings(), pytest.raises(ValueError, match="do not depend"):
        GradCAM(constant, [constant.conv]).differentiable_maps(x, [ClassifierOutputTarget(0)] * 2)
