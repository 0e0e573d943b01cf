"""PolyCAM: golden values on hand-set tiny models, the layers' combination by hand, batches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN

from camlib import PolyCAM
from camlib.poly_cam import local_relevance_normalization, poly_cam_masks, poly_combine
from camlib.utils.model_targets import ClassifierOutputTarget


class ConvGapLinear(torch.nn.Module):
    """1x1 identity conv, global average pooling, linear head: the activations are the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


X = torch.tensor(
    [[[[1.0, 0.0, 2.0], [0.5, 3.0, 1.0], [0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.0, 0.5, 4.0]]]]
)


def _minmax(a):
    a = np.maximum(a, 0)
    return (a - a.min()) / (a.max() - a.min() + 1e-7)


def test_poly_combine_by_hand():
    coarse = torch.full((1, 1, 1), 2.0)
    fine = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])
    # LNorm: the fine map's level at 1x1 is its mean, 2, upsampled: fine / 2; times the upsampled coarse map, 2
    np.testing.assert_allclose(poly_combine([fine, coarse]).numpy(), fine.numpy())
    np.testing.assert_allclose(poly_combine([fine, coarse], lnorm=False).numpy(), 2 * fine.numpy())
    np.testing.assert_allclose(local_relevance_normalization(fine, (1, 1)).numpy(), fine.numpy() / 2)


def test_masks_by_hand():
    # 0.1th / 99.9th percentiles of [0, 1, 2, 4] (linear): 0.003 and 3.994
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    low, high = 0.003, 3.994
    expected = np.clip((np.array([[0.0, 1.0], [2.0, 4.0]]) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(poly_cam_masks(maps, (2, 2))[0].numpy(), expected, rtol=1e-5)
    # signed activations: a channel below zero everywhere keeps its shape (dividing by the 99.9th
    # percentile alone, as the authors' code does for post-ReLU activations, would saturate it to ones)
    negative = poly_cam_masks(-maps.flip(-1) - 1, (2, 2))[0].numpy()
    np.testing.assert_allclose(negative, (1 - expected[:, ::-1]).clip(0, 1), atol=1e-5)
    assert negative.min() == 0


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("variant", ["+", "-", "+-"])
def test_golden(variant):
    """ConvGapLinear (the activations are the input): the channel weights written out with numpy."""
    model = ConvGapLinear().eval()
    w, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    a = X[0].numpy()
    category = 1

    def prob(image):
        return _softmax(w @ image.mean(axis=(1, 2)) + b)[category]

    weights = []
    for k in range(2):
        low, high = np.percentile(a[k], [0.1, 99.9])
        mask = np.clip((a[k] - low) / max(high - low, 1e-12), 0, 1)
        plus, minus = prob(a * mask), prob(a * (1 - mask))
        weights.append({"+": plus, "-": max(prob(a) - minus, 0), "+-": max(plus + prob(a) - minus, 0)}[variant])
    expected = _minmax(np.maximum(np.tensordot(weights, a, axes=1), 0))
    with PolyCAM(model, [model.conv], variant=variant, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_golden_raw_scores_on_paper():
    """PCAM+ with raw scores, on a 2x2 input whose channels are 0/1 masks already: channel 0 = 1 at (0, 0)
    only, channel 1 = 1 at (1, 1) only. Their masks are themselves (0.1th percentile 0, 99.9th 1), so
    w_0 = y_1(X * M_0) = (0.5 * 1/4 + 2 * 0) - 0.2 = -0.075 and w_1 = (0.5 * 0 + 2 * 1/4) - 0.2 = 0.3:
    the map ReLU(w_0 A_0 + w_1 A_1) is 0.3 at (1, 1), 0 elsewhere -> 1 at (1, 1) after scaling."""
    model = ConvGapLinear().eval()
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 1, 1] = 1.0
    got = PolyCAM(model, [model.conv], variant="+", softmax=False, progress=False)(x, [ClassifierOutputTarget(1)])
    np.testing.assert_allclose(got[0], [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)
    # PCAM-: w_k = ReLU(y(X) - y(X * (1 - M_k))), y(X) = 0.5/4 + 2/4 - 0.2 = 0.425; X * (1 - M_0) keeps
    # channel 1 only (y = 0.3), X * (1 - M_1) channel 0 only (y = -0.075): w = (0.125, 0.5), so the map is
    # 0.125 at (0, 0) and 0.5 at (1, 1): 0.25 and 1 after scaling
    got = PolyCAM(model, [model.conv], variant="-", softmax=False, progress=False)(x, [ClassifierOutputTarget(1)])
    np.testing.assert_allclose(got[0], [[0.25, 0.0], [0.0, 1.0]], atol=1e-6)
    # PCAM+/-: w_k = ReLU(w+_k + y(X) - y(X * (1 - M_k))) = (-0.075 + 0.125, 0.3 + 0.5) = (0.05, 0.8)
    got = PolyCAM(model, [model.conv], variant="+-", softmax=False, progress=False)(x, [ClassifierOutputTarget(1)])
    np.testing.assert_allclose(got[0], [[0.0625, 0.0], [0.0, 1.0]], atol=1e-6)


def test_two_layers_any_order_and_batches_equal_single_images():
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    layers = [model.features[2], model.features[6]]  # 16x16 and 8x8
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    with PolyCAM(model, layers, variant="+", batch_size=64, progress=False) as cam:
        batched = cam(x, targets)
        singles = np.concatenate([cam(x[i : i + 1], targets[i : i + 1]) for i in range(2)])
    with PolyCAM(model, layers[::-1], variant="+", batch_size=64, progress=False) as cam:
        np.testing.assert_allclose(cam(x, targets), batched, atol=1e-6)
    np.testing.assert_allclose(batched, singles, atol=1e-6)
    assert (batched.reshape(2, -1).max(axis=1) > 0).all()


def test_bad_arguments():
    model = TinyCNN().eval()
    layers = [model.features[2], model.features[6]]
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="per_layer"):
        PolyCAM(model, layers)(x, per_layer=True)
    with pytest.raises(ValueError, match="eigen_smooth"):
        PolyCAM(model, layers)(x, eigen_smooth=True)
    with pytest.raises(ValueError, match=r"variant must be one of .*got 'pm'"):
        PolyCAM(model, layers, variant="pm")
    with pytest.raises(TypeError, match="lnorm must be True or False"):
        PolyCAM(model, layers, lnorm="yes")
    with pytest.raises(TypeError, match="softmax must be True or False"):
        PolyCAM(model, layers, softmax=None)
