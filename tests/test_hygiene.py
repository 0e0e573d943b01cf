"""The user's model is left exactly as it was; captured values are what the layer produced.

Several tests also run pytorch-grad-cam 1.5.7 to show the defect camlib fixes.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot, optional

from camlib import EigenCAM, GradCAM
from camlib.utils.model_targets import ClassifierOutputTarget

ref = optional("pytorch_grad_cam")


class InPlaceAfterTarget(torch.nn.Module):
    """The target layer's output is modified in place afterwards (like ``out += identity``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.target = torch.nn.Identity()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        out = self.target(self.conv(x))
        out += 1.0
        return self.fc(torch.relu(out).mean(dim=(2, 3)))


def test_captured_activation_survives_inplace_ops():
    model = InPlaceAfterTarget().eval()
    x = torch.randn(1, 3, 6, 6)
    expected = model.conv(x).detach()
    cam = GradCAM(model, [model.target])
    cam(x, [ClassifierOutputTarget(0)])
    torch.testing.assert_close(cam.activations_and_grads.activations[0], expected)

    # the reference keeps a reference to the tensor that `+=` later changes (on CPU)
    reference = ref.GradCAM(model, [model.target])
    reference(x, [ref.utils.model_targets.ClassifierOutputTarget(0)])
    torch.testing.assert_close(reference.activations_and_grads.activations[0], expected + 1.0)
    reference.activations_and_grads.release()


def test_no_hooks_and_same_state_after_calls():
    model = TinyCNN().train()
    before = model_snapshot(model)
    with GradCAM(model, [model.features[-1]]) as cam:
        cam(torch.randn(2, 3, 16, 16))
        assert hooks_left(model) == 0  # hooks only live during a call
        cam(torch.randn(2, 3, 16, 16), aug_smooth=True)
    assert_model_untouched(model, before)
    assert model.training


def test_reference_leaves_model_modified():
    """What camlib fixes: the reference leaves hooks, eval mode and parameter gradients behind."""
    model = TinyCNN().train()
    cam = ref.GradCAM(model, [model.features[-1]])
    cam(torch.randn(2, 3, 16, 16), None)
    assert hooks_left(model) > 0
    assert not model.training
    assert any(p.grad is not None for p in model.parameters())
    cam.activations_and_grads.release()


def test_no_autograd_graph_outlives_a_call():
    saved = []

    class Marker:
        pass

    class Double(torch.autograd.Function):
        """Doubles its input; its graph node holds a Marker, alive exactly as long as the graph."""

        @staticmethod
        def forward(ctx, x):
            ctx.marker = Marker()
            saved.append(weakref.ref(ctx.marker))
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(Double.apply(self.conv(x)).mean(dim=(2, 3)))

    model = Net().eval()
    cam = GradCAM(model, [model.conv])
    cam(torch.randn(1, 3, 8, 8))
    gc.collect()
    assert saved[-1]() is None, "camlib kept the autograd graph alive"
    assert not cam.outputs.requires_grad

    reference = ref.GradCAM(model, [model.conv])
    reference(torch.randn(1, 3, 8, 8), None)
    gc.collect()
    assert saved[-1]() is not None, "the reference keeps its last graph alive (self.outputs)"
    reference.activations_and_grads.release()


def test_exception_in_target_leaves_model_clean():
    model = TinyCNN().eval()
    before = model_snapshot(model)

    def bad_target(output):
        raise KeyError("bad target")

    with pytest.raises(KeyError):
        GradCAM(model, [model.features[-1]])(torch.randn(1, 3, 16, 16), [bad_target])
    assert_model_untouched(model, before)
    assert torch.is_grad_enabled()


def test_frozen_model_still_gets_gradients():
    model = TinyCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    maps = GradCAM(model, [model.features[-1]])(x)
    assert maps.max() > 0
    assert all(not p.requires_grad for p in model.parameters())


def test_non_gradient_methods_record_no_graph():
    model = TinyCNN().eval()
    cam = EigenCAM(model, [model.features[-1]])
    cam(torch.randn(1, 3, 16, 16))
    assert cam.outputs.grad_fn is None


def test_input_on_another_dtype_and_maps_on_cpu():
    model = TinyCNN().eval().double()
    maps = GradCAM(model, [model.features[-1]])(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    assert maps.dtype == np.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_equal_cpu_maps():
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    cpu = GradCAM(model, [model.features[-1]])(x)
    model_cuda = TinyCNN().eval().cuda()
    gpu = GradCAM(model_cuda, [model_cuda.features[-1]])(x)
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)
