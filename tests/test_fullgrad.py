"""FullGrad: parity with pytorch-grad-cam, 3-D volumes, golden values, hygiene."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import optional
from torch import nn

from camlib.fullgrad_cam import FullGrad, effective_bias, fullgrad_map, has_spatial_bias
from camlib.utils.model_targets import ClassifierOutputTarget

pytorch_grad_cam = optional("pytorch_grad_cam")
ref_targets = optional("pytorch_grad_cam.utils.model_targets")

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Small models on a shared CPU run faster without intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random init leaves BN's effective bias at 0; give every bias term a real value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.out_channels, generator=generator) * 0.1)
    return model


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


@pytest.fixture(scope="module", params=["resnet18", "squeezenet1_1"])
def arch(request):
    """A torchvision model in eval mode, its input and per-image targets, and the reference's maps."""
    torch.manual_seed(0)
    model = _randomise_biases(getattr(torchvision.models, request.param)(weights=None)).eval()
    x = torch.randn(2, 3, 64, 64)
    classes = [3, 7]
    reference = {}
    ref_cam = pytorch_grad_cam.FullGrad(copy.deepcopy(model), [])
    for eigen in (False, True):
        reference[eigen] = ref_cam(x, [ref_targets.ClassifierOutputTarget(c) for c in classes], eigen_smooth=eigen)
    return model, x, classes, reference


def test_parity_with_reference(arch):
    model, x, classes, reference = arch
    with FullGrad(model, []) as cam:
        maps = cam(x, [ClassifierOutputTarget(c) for c in classes])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, reference[False], atol=TOL)
    # With compute_input_gradient the whole forward pass records a graph, so
    # every one of the (20-odd) bias layers is reached by the backward pass.
    bias_layers = [m for m in model.modules() if has_spatial_bias(m)]
    assert cam.target_layers == bias_layers and len(bias_layers) >= 10
    gradients = cam.activations_and_grads.gradients
    assert len(gradients) == len(bias_layers)
    assert all(g is not None and bool(g.any()) for g in gradients)


def test_eigen_smooth_parity_up_to_sign(arch):
    # camlib fixes the sign of the principal component (largest entry positive);
    # the reference keeps LAPACK's, so a map may come out as 1 - map.
    model, x, classes, reference = arch
    with FullGrad(model, []) as cam:
        maps = cam(x, [ClassifierOutputTarget(c) for c in classes], eigen_smooth=True)
    for ours, ref in zip(maps, reference[True]):
        error = min(np.abs(ours - ref).max(), np.abs(ours - (1 - ref)).max())
        assert error < TOL


def test_target_layers_warns_instead_of_printing(capsys):
    model = torchvision.models.resnet18(weights=None)
    with pytest.warns(UserWarning, match="ignores target_layers"):
        FullGrad(model, [model.layer4[-1]])
    assert capsys.readouterr().out == ""


def test_no_warning_for_empty_target_layers(recwarn):
    FullGrad(torchvision.models.resnet18(weights=None), [])
    assert not [w for w in recwarn if "target_layers" in str(w.message)]


# -- 3-D -------------------------------------------------------------------------------


class _Net3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(2, 3, 3, padding=1),
            nn.BatchNorm3d(3),
            nn.ReLU(),
            nn.Conv3d(3, 4, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.head(self.body(x))


class _Net2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        return self.head(self.body(x))


def _normalise(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    return m / (m.max() + 1e-7)


def _slow_fullgrad_3d(model: nn.Module, x: torch.Tensor, classes: list) -> np.ndarray:
    """FullGrad written out directly: one image, one channel, one resize at a time."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.BatchNorm3d))]
    outputs = {}
    handles = [layer.register_forward_hook(lambda mod, i, o: outputs.__setitem__(mod, o)) for layer in layers]
    x = x.clone().requires_grad_()
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    score = sum(logits[b, c] for b, c in enumerate(classes))
    grads = torch.autograd.grad(score, [x] + [outputs[layer] for layer in layers])
    size = x.shape[2:]
    result = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            total = torch.zeros(size)
            for c in range(x.shape[1]):
                total += _normalise((x[b, c] * grads[0][b, c]).abs())
            for layer, grad in zip(layers, grads[1:]):
                if isinstance(layer, nn.BatchNorm3d):
                    bias = layer.bias - layer.running_mean * layer.weight / torch.sqrt(
                        layer.running_var + layer.eps
                    )
                else:
                    bias = layer.bias
                for c in range(grad.shape[1]):
                    channel = _normalise((bias[c] * grad[b, c]).abs())
                    total += F.interpolate(
                        channel[None, None], size=size, mode="trilinear", align_corners=False
                    )[0, 0]
            result.append(_normalise(total))
    return torch.stack(result).numpy()


def test_3d_matches_slow_implementation():
    torch.manual_seed(1)
    model = _randomise_biases(_Net3d()).eval()
    x = torch.randn(2, 2, 4, 8, 8)
    classes = [1, 4]
    with FullGrad(model, []) as cam:
        maps = cam(x, [ClassifierOutputTarget(c) for c in classes])
    assert maps.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(maps, _slow_fullgrad_3d(model, x, classes), atol=TOL)
    eigen = FullGrad(model, [])(x, eigen_smooth=True)
    assert eigen.shape == (2, 4, 8, 8) and eigen.min() >= 0
    np.testing.assert_allclose(eigen.max(axis=(1, 2, 3)), 1.0, atol=1e-5)  # not a blank map


def test_3d_golden_values():
    # y = mean(ReLU(2x + 0.5)) over 4 voxels. The gradient w.r.t. the conv
    # output is 1/4 on the active voxels (x in {1, 0, 2}), 0 on x = -3.
    # Input term |x * dy/dx| = [0, 1, 0, 2] / 2      -> normalised [0, .5, 0, 1]
    # Bias term |0.5 * dy/dz| = [0, 1, 1, 1] / 8     -> normalised [0, 1, 1, 1]
    # Sum [0, 1.5, 1, 2], scaled to [0, 1]: [0, .75, .5, 1].
    conv = nn.Conv3d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(0.5)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    x = torch.tensor([-3.0, 1.0, 0.0, 2.0]).reshape(1, 1, 1, 2, 2)
    maps = FullGrad(model, [])(x, [ClassifierOutputTarget(0)])
    np.testing.assert_allclose(maps.reshape(-1), [0.0, 0.75, 0.5, 1.0], atol=1e-5)


def test_fullgrad_map_linear_in_resize():
    # Summing a layer's scaled channels before the resize equals resizing each channel.
    torch.manual_seed(0)
    x, gx = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    bias, grads = torch.randn(5), torch.randn(2, 5, 4, 4)
    expected = sum(_normalise((gx[b, c] * x[b, c]).abs()) for c in range(3) for b in [0])
    per_channel = [_normalise((bias[c] * grads[0, c]).abs()) for c in range(5)]
    expected = expected + sum(
        F.interpolate(m[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        for m in per_channel
    )
    result = fullgrad_map(x, gx, [bias], [grads])
    torch.testing.assert_close(result[0], expected, atol=1e-4, rtol=0)


def test_effective_bias_of_batch_norm():
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
    expected = bn(torch.zeros(1, 2, 1, 1)).reshape(-1)  # the output for a zero input is the bias
    torch.testing.assert_close(effective_bias(bn), expected)


def test_layers_that_do_not_run_add_nothing():
    # An auxiliary head used only in training (Inception, GoogLeNet) is skipped in eval mode.
    class WithAux(nn.Module):
        def __init__(self, aux: bool) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.aux = nn.Conv2d(4, 2, 1) if aux else None
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            features = self.features(x)
            if self.training and self.aux is not None:
                self.aux(features)
            return self.head(features)

    torch.manual_seed(0)
    with_aux = _randomise_biases(WithAux(aux=True))
    without_aux = WithAux(aux=False)
    without_aux.load_state_dict({k: v for k, v in with_aux.state_dict().items() if not k.startswith("aux")})
    x = torch.randn(2, 3, 16, 16)
    cam = FullGrad(with_aux, [])
    assert with_aux.aux in cam.target_layers
    np.testing.assert_allclose(cam(x), FullGrad(without_aux, [])(x), atol=1e-6)


def test_shared_module_is_used_once_with_one_warning():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cam = FullGrad(model, [])
    assert cam.target_layers == [conv]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = cam(torch.randn(1, 3, 8, 8))
    assert maps.shape == (1, 8, 8)
    assert [str(w.message) for w in caught if "ran 2 times" in str(w.message)] != []
    assert len(caught) == 1 and caught[0].filename == __file__


def test_aug_smooth_is_the_mean_over_augmentations():
    torch.manual_seed(0)
    model = _randomise_biases(_Net2d()).eval()
    x = torch.randn(2, 3, 16, 16)
    cam = FullGrad(model, [])
    maps = cam(x, aug_smooth=True)
    expected = []
    for transform in cam.tta_transforms:
        augmented = cam(transform.augment_image(x))
        expected.append(transform.deaugment_mask(torch.from_numpy(augmented)[:, None])[:, 0])
    np.testing.assert_allclose(maps, torch.stack(expected).mean(dim=0).numpy(), atol=1e-6)


# -- errors ----------------------------------------------------------------------------


def test_per_layer_is_refused():
    cam = FullGrad(_Net3d(), [])
    with pytest.raises(ValueError, match="per_layer"):
        cam(torch.randn(1, 2, 4, 8, 8), per_layer=True)


def test_batch_norm_without_running_stats_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats"):
        FullGrad(model, [])


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        FullGrad("resnet", [])
    with pytest.raises(TypeError, match="target_layers"):
        FullGrad(_Net3d(), "layer4")


# -- hygiene -------------------------------------------------------------------------


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(m, m.training) for m in model.modules()],
        list(model.modules()),
    )


def _assert_untouched(model: nn.Module, snapshot, x: torch.Tensor, x_before: torch.Tensor) -> None:
    state, flags, modules = snapshot
    assert list(model.modules()) == modules
    assert all(m.training == flag for m, flag in flags)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert _hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and not x.requires_grad
    assert torch.equal(x, x_before)


def test_model_and_input_untouched_after_a_call():
    torch.manual_seed(0)
    model = _randomise_biases(torchvision.models.resnet18(weights=None)).train()
    snapshot = _snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()
    with FullGrad(model, []) as cam:
        cam(x)
        cam(x, eigen_smooth=True)
    _assert_untouched(model, snapshot, x, x_before)


def test_model_untouched_after_an_exception_and_it_propagates():
    torch.manual_seed(0)
    model = _randomise_biases(torchvision.models.resnet18(weights=None)).train()
    snapshot = _snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()
    with pytest.raises(IndexError), FullGrad(model, []) as cam:
        cam(x, [ClassifierOutputTarget(5000), ClassifierOutputTarget(1)])
    _assert_untouched(model, snapshot, x, x_before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = _randomise_biases(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(2, 3, 64, 64)
    cpu = FullGrad(model, [])(x)
    gpu = FullGrad(copy.deepcopy(model).cuda(), [])(x.cuda())
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
