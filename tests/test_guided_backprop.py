"""Tests for camlib.guided_backprop: guided backpropagation, deconvnet and Guided Grad-CAM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from camlib.guided_backprop import (
    DeconvnetReLU,
    DeconvnetReLUModel,
    GuidedBackpropReLU,
    GuidedBackpropReLUasModule,
    GuidedBackpropReLUModel,
    guided_grad_cam,
)

N_CLASSES = 5


class TinyNet(nn.Module):
    """Small CNN with the awkward cases: an inplace ReLU, a ReLU reused twice, nesting, BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.shared_relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, N_CLASSES)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.shared_relu(self.block(x)) + x
        x = self.shared_relu(x)
        if self.fail:
            raise RuntimeError("failure in the middle of forward")
        return self.head(x.mean(dim=(2, 3)))


def make_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (net.features[1], net.block[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture
def net() -> TinyNet:
    return make_net()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _toy_net() -> nn.Sequential:
    """x (3 values) -> W1 x -> ReLU -> W2 (.) ; small enough to differentiate by hand."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
        net[3].weight.copy_(torch.tensor([[2.0, 3.0, -4.0], [1.0, 1.0, 1.0]]))
    return net


TOY_INPUT = torch.tensor([1.0, -1.0, 0.0]).reshape(1, 3, 1, 1)  # hidden = W1 x = (1, -1, 0)


# --------------------------------------------------------------------------- golden values


def test_guided_rule_golden():
    # At the ReLU: input (1, -1, 0), incoming gradient W2[0] = (2, 3, -4).
    # Guided: g * [h > 0] * [g > 0] = (2, 0, 0); back through W1: W1^T (2, 0, 0) = (2, 0, 0).
    out = GuidedBackpropReLUModel(_toy_net())(TOY_INPUT, target_category=0)
    assert out.shape == (1, 1, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], [2.0, 0.0, 0.0])


def test_deconvnet_rule_golden():
    # Deconvnet ignores the forward mask: max(g, 0) = (2, 3, 0); W1^T (2, 3, 0) = (2, 3, 0).
    out = DeconvnetReLUModel(_toy_net())(TOY_INPUT, target_category=0)
    np.testing.assert_array_equal(out[0, 0], [2.0, 3.0, 0.0])


def test_rule_functions_golden():
    x = torch.tensor([1.0, -1.0, 2.0, 0.5], requires_grad=True)
    g = torch.tensor([-1.0, 5.0, 3.0, 2.0])
    torch.testing.assert_close(GuidedBackpropReLU.apply(x), torch.relu(x))
    (guided,) = torch.autograd.grad(GuidedBackpropReLU.apply(x), x, g)
    torch.testing.assert_close(guided, torch.tensor([0.0, 0.0, 3.0, 2.0]))
    (deconv,) = torch.autograd.grad(DeconvnetReLU.apply(x), x, g)
    torch.testing.assert_close(deconv, torch.tensor([0.0, 5.0, 3.0, 2.0]))
    module_out = GuidedBackpropReLUasModule()(x)
    torch.testing.assert_close(module_out, torch.relu(x))


def test_guided_equals_relu_gradient_for_positive_incoming_gradient():
    x = torch.tensor([0.7, -0.3, 1.2], dtype=torch.float64, requires_grad=True)
    # On positive incoming gradients, away from 0, guided backprop is the true ReLU gradient.
    (guided,) = torch.autograd.grad(GuidedBackpropReLU.apply(x), x, torch.ones(3, dtype=torch.float64))
    (true,) = torch.autograd.grad(torch.relu(x), x, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(guided, true)


# --------------------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("target", [None, 0, 3])
def test_guided_matches_reference_batch_one(net, images, target):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel as Reference

    x = images[:1]
    ours = GuidedBackpropReLUModel(net, device="cpu")(x, target_category=target)
    theirs = Reference(copy.deepcopy(net), device="cpu")(x.clone(), target)
    assert ours.shape == theirs.shape == (8, 8, 3)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.abs(ours).max() > 0


# --------------------------------------------------------------------------- batches and targets


@pytest.mark.parametrize("model_class", [GuidedBackpropReLUModel, DeconvnetReLUModel])
def test_batch_equals_single_calls(net, images, model_class):
    method = model_class(net)
    batch = method(images, target_category=[0, 1, 4])
    assert batch.shape == (3, 8, 8, 3) and batch.dtype == np.float32
    for i, target in enumerate([0, 1, 4]):
        np.testing.assert_allclose(batch[i], method(images[i : i + 1], target), rtol=0, atol=1e-6)


def test_target_forms(net, images):
    method = GuidedBackpropReLUModel(net)
    with torch.no_grad():
        top = net.eval()(images).argmax(dim=1).tolist()
    net.train()
    expected_top = method(images, target_category=top)
    np.testing.assert_array_equal(method(images), expected_top)
    expected_two = method(images, target_category=[2, 2, 2])
    for same in (
        2,
        np.int64(2),
        -3,
        (2, 2, 2),
        np.array([2, 2, 2]),
        torch.tensor([2, 2, 2]),
        torch.tensor(2),
    ):
        np.testing.assert_array_equal(method(images, target_category=same), expected_two)


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        ([0, 1], ValueError, "2 entries but the batch has 3"),
        (N_CLASSES, ValueError, "out of range"),
        ([0, 1, -N_CLASSES - 1], ValueError, "out of range"),
        (True, TypeError, "bool"),
        (torch.tensor(1.0), TypeError, "float"),
        ([0, 1.5, 2], TypeError, r"got 1\.5 \(float\) in \[0, 1\.5, 2\]"),
        ("cat", TypeError, "str"),
    ],
)
def test_target_errors(net, images, target, error, message):
    with pytest.raises(error, match=message):
        GuidedBackpropReLUModel(net)(images, target_category=target)


def test_input_errors(net, images):
    method = GuidedBackpropReLUModel(net)
    with pytest.raises(TypeError, match="ndarray"):
        method(images.numpy())
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        method(images[0])
    with pytest.raises(TypeError, match="floating point"):
        method(images.to(torch.uint8))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        GuidedBackpropReLUModel(lambda x: x)


def test_model_output_errors(images):
    class ReturnsDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return {"logits": self.relu(self.conv(x)).mean(dim=(2, 3))}

    with pytest.raises(TypeError, match="returned dict"):
        GuidedBackpropReLUModel(ReturnsDict())(images)
    conv_only = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with pytest.raises(ValueError, match=r"\[B, n_classes\]"):
        GuidedBackpropReLUModel(conv_only)(images)


def test_warns_without_relu_modules(images):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(4))
    model(images)  # materialise the lazy layer
    with pytest.warns(UserWarning, match="no torch.nn.ReLU modules"):
        out = GuidedBackpropReLUModel(model)(images, 0)
    assert out.shape == (3, 8, 8, 3)


# --------------------------------------------------------------------------- hygiene


def _snapshot(model: nn.Module):
    return [
        (name, module, module.training, getattr(module, "inplace", None))
        for name, module in model.named_modules(remove_duplicate=False)
    ]


def _assert_untouched(model: nn.Module, before, state_before) -> None:
    after = _snapshot(model)
    assert len(after) == len(before)
    for (name_a, mod_a, train_a, inplace_a), (name_b, mod_b, train_b, inplace_b) in zip(after, before):
        assert name_a == name_b
        assert mod_a is mod_b, f"module {name_a} was replaced"
        assert train_a == train_b, f"training flag of {name_a} changed"
        assert inplace_a == inplace_b, f"inplace flag of {name_a} changed"
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {name}"
        assert not module._backward_hooks, f"backward hook left on {name}"
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name}.grad was written"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state_before[key], rtol=0, atol=0, msg=f"{key} changed")


@pytest.mark.parametrize("model_class", [GuidedBackpropReLUModel, DeconvnetReLUModel])
def test_model_untouched_after_call(net, images, model_class):
    net.train()
    net.block.eval()  # mixed flags must come back exactly
    before = _snapshot(net)
    state = copy.deepcopy(net.state_dict())
    model_class(net)(images)
    _assert_untouched(net, before, state)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("model_class", [GuidedBackpropReLUModel, DeconvnetReLUModel])
def test_model_untouched_after_exception(net, images, model_class):
    net.train()
    before = _snapshot(net)
    state = copy.deepcopy(net.state_dict())
    net.fail = True
    with pytest.raises(RuntimeError, match="failure in the middle of forward"):
        model_class(net)(images)
    _assert_untouched(net, before, state)
    net.fail = False
    with pytest.raises(ValueError, match="entries"):
        model_class(net)(images, target_category=[1])
    _assert_untouched(net, before, state)


def test_relus_swapped_only_during_call(net, images):
    seen = []

    def record(module, inputs, output):
        seen.append(type(net.features._modules["2"]).__name__)

    handle = net.head.register_forward_hook(record)
    try:
        GuidedBackpropReLUModel(net)(images[:1])
    finally:
        handle.remove()
    assert seen == ["_ReLURuleModule"]
    assert isinstance(net.features[2], nn.ReLU) and net.features[2].inplace


def test_input_and_grad_mode_untouched(net, images):
    x = images.clone().requires_grad_(True)
    x_before = x.detach().clone()
    with torch.no_grad():
        out = GuidedBackpropReLUModel(net)(x, 1)
        assert not torch.is_grad_enabled()
    assert x.grad is None and x.requires_grad
    torch.testing.assert_close(x.detach(), x_before, rtol=0, atol=0)
    plain = images.clone()
    GuidedBackpropReLUModel(net)(plain, 1)
    assert not plain.requires_grad and plain.grad is None
    np.testing.assert_array_equal(out, GuidedBackpropReLUModel(net)(images, 1))


# --------------------------------------------------------------------------- Guided Grad-CAM


def test_guided_grad_cam_numpy_and_torch():
    rng = np.random.default_rng(0)
    cam = rng.random((2, 4, 5)).astype(np.float32)
    gb = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    expected = cam[..., None] * gb
    np.testing.assert_array_equal(guided_grad_cam(cam, gb), expected)
    np.testing.assert_array_equal(guided_grad_cam(cam[0], gb[0]), expected[0])
    out = guided_grad_cam(torch.from_numpy(cam), gb)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), expected)
    out = guided_grad_cam(cam, torch.from_numpy(gb))
    np.testing.assert_array_equal(out.numpy(), expected)


def test_guided_grad_cam_errors():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(2, 4, 5, 3\)"):
        guided_grad_cam(np.ones((4, 5)), np.ones((2, 4, 5, 3)))
    with pytest.raises(TypeError, match="list"):
        guided_grad_cam([[1.0]], np.ones((1, 1, 3)))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(images):
    cpu_out = GuidedBackpropReLUModel(make_net(), device="cpu")(images, [0, 1, 2])
    cuda_net = make_net()
    cuda_out = GuidedBackpropReLUModel(cuda_net, device="cuda")(images, [0, 1, 2])
    assert next(cuda_net.parameters()).is_cuda
    np.testing.assert_allclose(cuda_out, cpu_out, rtol=1e-4, atol=1e-5)
