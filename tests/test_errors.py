"""Bad input gets a clear TypeError/ValueError naming what was received and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, hooks_left, model_snapshot

from camlib import BaseCAM, EigenCAM, GradCAM
from camlib.utils.model_targets import ClassifierOutputTarget


@pytest.fixture
def model():
    return TinyCNN().eval()


def test_target_layers_must_be_a_list(model):
    with pytest.raises(TypeError, match=r"wrap it in a list: target_layers=\[layer\]"):
        GradCAM(model, model.features[-1])
    with pytest.raises(TypeError, match=r"list of modules"):
        GradCAM(model, "features.6")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        GradCAM(model, ["features.6"])
    with pytest.raises(ValueError, match="target_layers is empty"):
        GradCAM(model, [])


def test_layer_not_in_model(model):
    other = TinyCNN()
    with pytest.raises(ValueError, match=r"not a submodule of the model; pass a module\s+from model.named_modules"):
        GradCAM(model, [other.features[-1]])


def test_layer_that_never_runs(model):
    model.unused = torch.nn.Conv2d(16, 16, 1)
    before = model_snapshot(model)
    cam = GradCAM(model, [model.unused])
    with pytest.raises(ValueError, match="did not run during the forward pass"):
        cam(torch.randn(1, 3, 16, 16))
    assert_model_untouched(model, before)


class TupleLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()


class TupleModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleLayer()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        y, _ = self.block(x)
        return self.fc(y.mean(dim=(2, 3)))


def test_tuple_output_needs_reshape_transform():
    torch.manual_seed(0)
    model = TupleModel().eval()
    with pytest.raises(TypeError, match=r"returned a tuple, not a tensor.*reshape_transform"):
        GradCAM(model, [model.block])(torch.randn(1, 3, 8, 8))
    assert hooks_left(model) == 0
    # with a transform the tuple output works, and equals the map of the conv inside
    x = torch.randn(2, 3, 8, 8)
    via_tuple = GradCAM(model, [model.block], reshape_transform=lambda out: out[0])(x)
    direct = GradCAM(model, [model.block.conv])(x)
    np.testing.assert_allclose(via_tuple, direct, atol=1e-6)


class FlatModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 6)
        self.fc2 = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_activation_rank_that_cannot_be_handled():
    model = FlatModel().eval()
    with pytest.raises(ValueError, match=r"activation of shape \[1, 6\].*Choose a layer that outputs a spatial map"):
        GradCAM(model, [model.fc1])(torch.randn(1, 3, 2, 2))


def test_wrong_number_of_targets(model):
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(ValueError, match="got 2 targets for a batch of 3 images"):
        GradCAM(model, [model.features[-1]])(x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    with pytest.raises(TypeError, match="wrap it"):
        GradCAM(model, [model.features[-1]])(x[:1], ClassifierOutputTarget(0))
    with pytest.raises(TypeError, match="must be callable"):
        GradCAM(model, [model.features[-1]])(x[:1], ["3"])
    # class indices where the targets go are the older spelling (camlib.utils.legacy), with one per image
    with pytest.warns(FutureWarning, match="before 1.3.6"), pytest.raises(ValueError, match="got 2 targets"):
        GradCAM(model, [model.features[-1]])(x, [3, 4])


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.zeros((1, 3, 16, 16), dtype=np.float32), TypeError, "torch.from_numpy"),
        (torch.zeros(3, 16, 16), ValueError, r"unsqueeze\(0\)"),
        (torch.zeros(16, 16), ValueError, "4-D"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.int64), TypeError, "floating-point"),
        (torch.full((1, 3, 16, 16), float("nan")), ValueError, "NaN or Inf"),
        (torch.full((1, 3, 16, 16), float("inf")), ValueError, "NaN or Inf"),
        (torch.zeros(0, 3, 16, 16), ValueError, "empty batch"),
    ],
)
def test_bad_input_tensor(model, bad, error, message):
    with pytest.raises(error, match=message):
        GradCAM(model, [model.features[-1]])(bad)


def test_uint8_input_is_cast_with_a_warning(model):
    # a uint8 image given to a model that prepares its own input (camlib.utils.legacy.uint8_input)
    with pytest.warns(UserWarning, match="input_tensor is uint8"):
        GradCAM(model, [model.features[-1]])(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_finite_input_is_not_mistaken_for_inf(model, dtype):
    """The finiteness check sums first; a sum that overflows must fall back to the
    element-wise check rather than reject finite values."""
    x = torch.full((1, 3, 16, 16), 3e38, dtype=dtype)
    x[0, 0, 0, 0] = -1.0
    try:
        maps = GradCAM(model, [model.features[-1]])(x)
    except ValueError as error:  # the model itself overflows on such an input: refused, never NaN maps
        assert "input_tensor contains" not in str(error) and "not finite" in str(error)
    else:
        assert maps.shape == (1, 16, 16) and np.isfinite(maps).all()
    x[0, 0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        GradCAM(model, [model.features[-1]])(x)


class DictModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return {"scores": y.mean(dim=(2, 3))}


def test_non_tensor_output_with_targets_none():
    model = DictModel().eval()
    with pytest.raises(TypeError, match="returned a dict, not a tensor of class scores"):
        GradCAM(model, [model.conv])(torch.randn(1, 3, 8, 8))
    # explicit targets work on any output structure
    maps = GradCAM(model, [model.conv])(torch.randn(1, 3, 8, 8), [lambda out: out["scores"][1]])
    assert maps.shape == (1, 8, 8)


def test_model_without_parameters():
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match="no parameters or buffers"):
        EigenCAM(model, [model[0]])


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"torch.nn.Module, got function"):
        GradCAM(lambda x: x, [])


def test_exceptions_propagate_out_of_with(model):
    """pytorch-grad-cam's __exit__ swallows IndexError; camlib never swallows."""
    with pytest.raises(IndexError), GradCAM(model, [model.features[-1]]):
        raise IndexError("must not be swallowed")


def test_error_in_model_forward_leaves_no_trace(model):
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model.fc = torch.nn.Sequential(Boom())
    model.train()
    before = model_snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        GradCAM(model, [model.features[-1]])(torch.randn(1, 3, 16, 16))
    assert_model_untouched(model, before)
    assert torch.is_grad_enabled()


def test_get_cam_weights_must_be_implemented(model):
    class NoWeights(BaseCAM):
        pass

    with pytest.raises(NotImplementedError, match="NoWeights must implement get_cam_weights"):
        NoWeights(model, [model.features[-1]])(torch.randn(1, 3, 16, 16))


def test_bad_batch_size(model):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        GradCAM(model, [model.features[-1]], batch_size=0)


def test_unknown_kpca_kernel(model):
    from camlib import KPCA_CAM

    with pytest.raises(ValueError, match="unknown kernel 'gaussian'"):
        KPCA_CAM(model, [model.features[-1]], kernel="gaussian")
