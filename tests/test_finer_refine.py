"""FinerCAM and RefineCAM: parity with pytorch-grad-cam, one pass, aug_smooth, hygiene, errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import optional
from torch import nn

from camlib import GradCAM, GradCAMPlusPlus, LayerCAM
from camlib.finer_cam import FinerCAM, finer_targets
from camlib.fullgrad_cam import FullGrad
from camlib.refine_cam import RefineCAM, refine_maps
from camlib.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

pytorch_grad_cam = optional("pytorch_grad_cam")
ref_refine = optional("pytorch_grad_cam.refine_cam")
ref_image = optional("pytorch_grad_cam.utils.image")
ref_targets = optional("pytorch_grad_cam.utils.model_targets")

TOL = 1e-4
REF_METHODS = {GradCAM: "GradCAM", LayerCAM: "LayerCAM", GradCAMPlusPlus: "GradCAMPlusPlus"}  # names in the oracle


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Small models on a shared CPU run faster without intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCHS = {
    "resnet18": (
        lambda m: [m.layer4[-1]],
        lambda m: [m.layer2[-1], m.layer3[-1], m.layer4[-1]],
    ),
    "mobilenet_v3_small": (
        lambda m: [m.features[-1]],
        lambda m: [m.features[3], m.features[8], m.features[-1]],
    ),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)(weights=None).eval()
    finer_layers, refine_layers = ARCHS[request.param]
    return model, finer_layers, refine_layers, torch.randn(3, 3, 64, 64)


def _reference_copy(model):
    # pytorch-grad-cam switches the model to eval and leaves gradients in it: give it a copy.
    return copy.deepcopy(model)


class _CountForwards:
    """Counts the model's forward passes during a ``with`` block."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.count = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


# -- FinerCAM ------------------------------------------------------------------------

FINER_CASES = [
    {},
    {"alpha": 0.5, "comparison_categories": [1, 4], "target_idx": 5},
    {"alpha": 2.0, "comparison_categories": [2]},
]


@pytest.mark.parametrize("base", [GradCAM, LayerCAM])
@pytest.mark.parametrize("kwargs", FINER_CASES)
def test_finer_parity_with_reference(arch, base, kwargs):
    model, finer_layers, _, x = arch
    ours = FinerCAM(model, finer_layers(model), base_method=base)(x, **kwargs)
    ref_model = _reference_copy(model)
    reference = pytorch_grad_cam.FinerCAM(ref_model, finer_layers(ref_model), base_method=getattr(pytorch_grad_cam, REF_METHODS[base]))(
        x, **kwargs
    )
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_finer_parity_with_explicit_per_image_targets(arch):
    model, finer_layers, _, x = arch
    spec = [(1, [2, 3], 1.0), (7, [0], 0.5), (4, [5, 6, 9], 0.8)]
    ours = FinerCAM(model, finer_layers(model))(x, [FinerWeightedTarget(*s) for s in spec])
    ref_model = _reference_copy(model)
    reference = pytorch_grad_cam.FinerCAM(ref_model, finer_layers(ref_model))(
        x, [ref_targets.FinerWeightedTarget(*s) for s in spec]
    )
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_finer_runs_the_model_once_and_equals_base_with_finer_targets(arch):
    model, finer_layers, _, x = arch
    cam = FinerCAM(model, finer_layers(model))
    with _CountForwards(model) as counter:
        maps = cam(x, alpha=0.7, per_layer=True)
    assert counter.count == 1
    targets = finer_targets(cam.outputs, alpha=0.7)
    expected = GradCAM(model, finer_layers(model))(x, targets, per_layer=True)
    assert maps.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_finer_targets_golden():
    logits = torch.tensor([[0.0, 5.0, 4.5, 1.0, 4.9], [2.0, 2.0, 0.0, 1.0, -1.0]])
    # Row 0: top class 1; |s - 5| = [5, 0, .5, 4, .1] -> order 1, 4, 2, 3, 0.
    # Row 1: tie at the top; argmax gives 0, and 0 stays the main class.
    targets = finer_targets(logits)
    assert [(t.main_category, t.comparison_categories) for t in targets] == [(1, [4, 2, 3]), (0, [1, 3, 2])]
    # target_idx = 3: |s - 1| = [1, 4, 3.5, 0, 3.9] -> order 3, 0, 2, 4, 1.
    targets = finer_targets(logits, alpha=0.3, comparison_categories=[1, -1], target_idx=3)
    assert [(t.main_category, t.comparison_categories, t.alpha) for t in targets] == [
        (3, [0, 1], 0.3),
        (3, [0, 4], 0.3),
    ]
    targets = finer_targets(logits[1:], target_idx=1)  # tie: the requested class is the main one
    assert (targets[0].main_category, targets[0].comparison_categories) == (1, [0, 3, 2])


def test_finer_targets_few_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default ranks are clamped silently
        targets = finer_targets(torch.tensor([[0.1, 0.9, 0.3]]))
    assert targets[0].comparison_categories == [2, 0]
    with pytest.warns(UserWarning, match=r"\[3, 7\] ignored"):
        targets = finer_targets(torch.tensor([[0.1, 0.9, 0.3]]), comparison_categories=[1, 3, 7])
    assert targets[0].comparison_categories == [2]
    with pytest.raises(ValueError, match="1 output"):
        finer_targets(torch.tensor([[0.5]]))


def test_finer_aug_smooth_is_the_mean_over_augmentations():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with FinerCAM(model, [model.layer4[-1]]) as cam:
        maps = cam(x, alpha=0.5, aug_smooth=True)
        expected = []
        for transform in cam.base_cam.tta_transforms:
            augmented = cam(transform.augment_image(x), alpha=0.5)
            expected.append(transform.deaugment_mask(torch.from_numpy(augmented)[:, None])[:, 0])
    assert maps.shape == (2, 64, 64)
    np.testing.assert_allclose(maps, torch.stack(expected).mean(dim=0).numpy(), atol=1e-6)
    per_layer = FinerCAM(model, [model.layer3[-1], model.layer4[-1]])(x, aug_smooth=True, per_layer=True)
    assert per_layer.shape == (2, 2, 64, 64)


def test_finer_with_a_gradient_free_or_input_gradient_base():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="ignores target_layers"):
        cam = FinerCAM(model, [model.layer4[-1]], base_method=FullGrad)
    assert cam.compute_input_gradient
    assert cam(x).shape == (2, 64, 64)


def test_finer_errors():
    model = torchvision.models.resnet18(weights=None)
    layers = [model.layer4[-1]]
    with pytest.raises(TypeError, match="the class itself"):
        FinerCAM(model, layers, base_method=GradCAM(model, layers))
    with pytest.raises(TypeError, match="camlib CAM class"):
        FinerCAM(model, layers, base_method=pytorch_grad_cam.GradCAM)
    cam = FinerCAM(model, layers)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="alpha"):
        cam(x, alpha="strong")
    with pytest.raises(ValueError, match="target_idx=1000 is out of range"):
        cam(x, target_idx=1000)
    with pytest.warns(UserWarning, match="ignored"):
        cam(x, [ClassifierOutputTarget(1)], target_idx=3)


# -- RefineCAM -----------------------------------------------------------------------


@pytest.mark.parametrize("base", [GradCAMPlusPlus, GradCAM])
def test_refine_parity_with_reference(arch, base):
    model, _, refine_layers, x = arch
    classes = [1, 2, 3]
    ours = RefineCAM(model, refine_layers(model), base_method=base)(
        x, [ClassifierOutputTarget(c) for c in classes]
    )
    ref_model = _reference_copy(model)
    reference = ref_refine.RefineCAM(ref_model, refine_layers(ref_model), base_method=getattr(pytorch_grad_cam, REF_METHODS[base]))(
        x, [ref_targets.ClassifierOutputTarget(c) for c in classes]
    )
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_refine_one_pass_for_all_layers(arch):
    model, _, refine_layers, x = arch
    cam = RefineCAM(model, refine_layers(model))
    with _CountForwards(model) as counter:
        maps = cam(x)
    assert counter.count == 1  # pytorch-grad-cam runs one pass per layer
    per_layer = GradCAMPlusPlus(model, refine_layers(model))(x, per_layer=True)
    np.testing.assert_allclose(maps, refine_maps(torch.from_numpy(per_layer)).numpy(), atol=1e-6)
    # per_layer=True gives the factors of the product
    np.testing.assert_allclose(cam(x, per_layer=True), per_layer, atol=1e-6)


def test_reference_normalisation_loop_is_a_no_op():
    """pytorch-grad-cam's RefineCAM means to normalise each layer's map before the
    product, but ``for cam in cam_per_layer: cam = ...`` only rebinds the loop variable.

    1. With real base methods it makes no difference: each map is already in [0, 1],
       and the reference's result is exactly the product without the loop.
    2. With maps that are not in [0, 1] the loop visibly does nothing: a pixel that is
       negative in both layers wins, where the intended normalisation (RefineCAM
       here) keeps the pixel that both layers highlight.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    layers = [model.layer3[-1], model.layer4[-1]]
    x = torch.randn(2, 3, 64, 64)
    reference = ref_refine.RefineCAM(model, layers)
    per_layer = np.array([base(x, None) for base in reference.base_cam_per_layer])
    assert per_layer.min() >= 0 and per_layer.max() <= 1
    np.testing.assert_array_equal(reference(x), ref_image.scale_cam_image(np.prod(per_layer, axis=0)))

    class FixedMaps:
        """Stands in for a base method whose maps are not normalised."""

        def __init__(self, maps: np.ndarray) -> None:
            self.maps = maps

        def __call__(self, input_tensor, targets, eigen_smooth):
            return self.maps

    layer_a = np.array([[[-1.0, 0.5, 0.0]]], dtype=np.float32)
    layer_b = np.array([[[-2.0, 3.0, 0.0]]], dtype=np.float32)
    reference.base_cam_per_layer = [FixedMaps(layer_a), FixedMaps(layer_b)]
    defective = reference(x)  # product [2, 1.5, 0]: the doubly negative pixel wins
    np.testing.assert_allclose(defective[0, 0], [1.0, 0.75, 0.0], atol=1e-6)
    intended = refine_maps(torch.from_numpy(np.stack([layer_a, layer_b], axis=1))).numpy()
    np.testing.assert_allclose(intended[0, 0], [0.0, 1.0, 0.0], atol=1e-6)


def test_refine_aug_smooth_is_the_mean_over_augmentations():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with RefineCAM(model, [model.layer3[-1], model.layer4[-1]], base_method=GradCAM) as cam:
        maps = cam(x, aug_smooth=True)
        expected = []
        for transform in cam.base_cam.tta_transforms:
            augmented = cam(transform.augment_image(x))
            expected.append(transform.deaugment_mask(torch.from_numpy(augmented)[:, None])[:, 0])
    assert maps.shape == (2, 64, 64)
    np.testing.assert_allclose(maps, torch.stack(expected).mean(dim=0).numpy(), atol=1e-6)


def test_refine_errors_and_kwargs():
    model = torchvision.models.resnet18(weights=None)
    layers = [model.layer3[-1], model.layer4[-1]]
    with pytest.raises(ValueError, match="chooses its own layers"):
        RefineCAM(model, layers, base_method=FullGrad)
    with pytest.raises(TypeError, match="the class itself"):
        RefineCAM(model, layers, base_method=GradCAM(model, layers))
    with pytest.raises(ValueError, match="target_layers is empty"):
        RefineCAM(model, [])
    cam = RefineCAM(model, layers, base_method=GradCAM, uses_gradients=True, batch_size=4)
    assert cam.base_cam.batch_size == 4


# -- shared: context managers, exceptions, hygiene ----------------------------------


def _make(kind: str, model: nn.Module):
    layers = [model.layer3[-1], model.layer4[-1]]
    return FinerCAM(model, layers) if kind == "finer" else RefineCAM(model, layers)


@pytest.mark.parametrize("kind", ["finer", "refine"])
def test_hygiene_after_a_call_and_after_an_exception(kind):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()

    def check(cam):
        assert list(model.modules()) == modules
        assert all(m.training for m in model.modules())
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert _hooks(model) == 0
        assert all(p.grad is None for p in model.parameters())
        assert x.grad is None and not x.requires_grad and torch.equal(x, x_before)
        # the per-call stage override on the base CAM is gone
        assert not {"_default_targets", "aggregate_multi_layers"} & set(vars(cam.base_cam))

    with _make(kind, model) as cam:
        assert cam(x).shape == (2, 64, 64)
    check(cam)
    with pytest.raises(IndexError), _make(kind, model) as cam:
        cam(x, [ClassifierOutputTarget(5000), ClassifierOutputTarget(1)])
    check(cam)


@pytest.mark.parametrize("kind", ["finer", "refine"])
@pytest.mark.parametrize("error", [IndexError, RuntimeError, KeyError])
def test_exceptions_propagate_out_of_with(kind, error):
    model = torchvision.models.resnet18(weights=None)

    def failing_target(output):
        raise error("raised inside the target")

    with pytest.raises(error, match="raised inside the target"), _make(kind, model) as cam:
        cam(torch.randn(1, 3, 32, 32), [failing_target])
    assert _hooks(model) == 0


def test_reference_swallows_index_error(capsys):
    # What the tests above guard against: pytorch-grad-cam's __exit__ returns True on IndexError.
    model = torchvision.models.resnet18(weights=None)
    with pytorch_grad_cam.FinerCAM(model, [model.layer4[-1]]) as cam:
        cam(torch.randn(1, 3, 32, 32), [ref_targets.ClassifierOutputTarget(5000)])
    assert "IndexError" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    gpu_model = copy.deepcopy(model).cuda()
    layers = lambda m: [m.layer3[-1], m.layer4[-1]]  # noqa: E731
    np.testing.assert_allclose(
        FinerCAM(gpu_model, layers(gpu_model))(x.cuda()), FinerCAM(model, layers(model))(x), atol=1e-3
    )
    np.testing.assert_allclose(
        RefineCAM(gpu_model, layers(gpu_model))(x.cuda()), RefineCAM(model, layers(model))(x), atol=1e-3
    )
