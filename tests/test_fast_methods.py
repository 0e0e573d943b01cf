"""GroupCAM, PolyCAM and OptiCAM (ReciproCAM: tests/test_recipro_cam.py): golden values on hand-set tiny models, paths, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot

from camlib.group_cam import GroupCAM, group_masks
from camlib.opti_cam import OptiCAM, opti_cam_mask
from camlib.poly_cam import PolyCAM, local_relevance_normalization, poly_cam_masks, poly_combine
from camlib.utils.image import gaussian_blur
from camlib.utils.model_targets import ClassifierOutputTarget


class ConvGapLinear(torch.nn.Module):
    """1x1 conv (identity), global average pooling, linear head: maps computable on paper."""

    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2, len(bias))
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


W = [[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]
B = [0.1, -0.2, 0.0]
X = torch.tensor(
    [[[[1.0, 0.0, 2.0], [0.5, 3.0, 1.0], [0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.0, 0.5, 4.0]]]]
)


def _minmax(a):
    a = np.maximum(a, 0)
    return (a - a.min()) / (a.max() - a.min() + 1e-7)


# -- GroupCAM ----------------------------------------------------------------------------------------
def test_group_masks_by_hand():
    # two channels, gradients averaging to 1 and -1: one group each; 70th percentile of [0, 1, 2, 3] is 2.1
    activations = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[-1.0, -4.0], [-2.0, -3.0]]]])
    grads = torch.stack([torch.ones(2, 2), -torch.ones(2, 2)])[None]
    masks, valid = group_masks(activations, grads, groups=2, size=(2, 2))
    np.testing.assert_allclose(masks[0, 0].numpy(), [[0, 0], [0, 1]])  # only 3 > 2.1 survives, then scaled
    np.testing.assert_allclose(masks[0, 1].numpy(), [[0, 1], [0, 0]])  # -1 * A = [1, 4, 2, 3]: 4 > 3.7
    assert valid.tolist() == [[True, True]]
    flat, flat_valid = group_masks(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2), groups=1, size=(4, 4))
    assert flat_valid.tolist() == [[False]] and float(flat.abs().max()) == 0.0


def _group_cam_by_hand(model, x, category, groups):
    """Group-CAM written out image by image, group by group, with numpy's percentile."""
    store = {}
    handle = model.features[4].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        x = x.clone().requires_grad_(False)
        out = model(x)
        (grad,) = torch.autograd.grad(out[0, category], store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    weighted = grad.mean(dim=(2, 3))[:, :, None, None] * a
    blurred = gaussian_blur(x, 50.0, 51, border="reflect")
    with torch.no_grad():
        base = torch.softmax(model(blurred), -1)[0, category]
        total = torch.zeros(x.shape[2:])
        for chunk in weighted.chunk(groups, 1):
            m = torch.relu(chunk.sum(1, keepdim=True))
            m = torch.where(m > float(np.percentile(m.numpy(), 70)), m, torch.zeros_like(m))
            m = torch.nn.functional.interpolate(m, size=x.shape[2:], mode="bilinear", align_corners=False)
            if m.max() == m.min():
                continue
            m = (m - m.min()) / (m.max() - m.min())
            score = torch.softmax(model(x * m + blurred * (1 - m)), -1)[0, category] - base
            total += score * m[0, 0]
    return _minmax(torch.relu(total).numpy())


def test_group_cam_golden():
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with GroupCAM(model, [model.features[4]], groups=4, batch_size=3, progress=False) as cam:
        got = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    for i, category in enumerate((1, 3)):
        np.testing.assert_allclose(got[i], _group_cam_by_hand(model, x[i : i + 1], category, 4), atol=1e-4)


def test_group_cam_errors():
    model = TinyCNN().eval()
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        GroupCAM(model, [model.features[4]], groups=0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        GroupCAM(model, [model.features[4]], blur_kernel=50)
    with pytest.raises(TypeError, match="softmax must be True or False"):
        GroupCAM(model, [model.features[4]], softmax=1)


# -- PolyCAM -----------------------------------------------------------------------------------------
def test_poly_combine_by_hand():
    coarse = torch.full((1, 1, 1), 2.0)
    fine = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])
    # LNorm: the fine map's level at 1x1 is its mean, 2, upsampled: fine / 2; times the upsampled coarse map, 2
    np.testing.assert_allclose(poly_combine([fine, coarse]).numpy(), fine.numpy())
    np.testing.assert_allclose(poly_combine([fine, coarse], lnorm=False).numpy(), 2 * fine.numpy())
    np.testing.assert_allclose(local_relevance_normalization(fine, (1, 1)).numpy(), fine.numpy() / 2)


def test_poly_cam_masks_by_hand():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    low, high = np.percentile([0, 1, 2, 4], [0.1, 99.9])
    expected = np.clip((np.array([[0.0, 1.0], [2.0, 4.0]]) - low) / high, 0, 1)
    np.testing.assert_allclose(poly_cam_masks(maps, (2, 2))[0].numpy(), expected, rtol=1e-5)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("variant", ["+", "-", "+-"])
def test_poly_cam_golden(variant):
    """ConvGapLinear (the activations are the input): the channel weights written out with numpy."""
    model = ConvGapLinear(W, B).eval()
    w, b, a = np.array(W), np.array(B), X[0].numpy()
    category = 1

    def prob(image):
        return _softmax(w @ image.mean(axis=(1, 2)) + b)[category]

    weights = []
    for k in range(2):
        low, high = np.percentile(a[k], [0.1, 99.9])
        mask = np.clip((a[k] - low) / max(high, 1e-12), 0, 1)
        plus, minus = prob(a * mask), prob(a * (1 - mask))
        weights.append({"+": plus, "-": max(prob(a) - minus, 0), "+-": max(plus + prob(a) - minus, 0)}[variant])
    expected = _minmax(np.maximum(np.tensordot(weights, a, axes=1), 0))
    with PolyCAM(model, [model.conv], variant=variant, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_poly_cam_two_layers_and_errors():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    layers = [model.features[2], model.features[6]]  # 16x16 and 8x8
    with PolyCAM(model, layers, variant="+", batch_size=64, progress=False) as cam:
        forward_order = cam(x, [ClassifierOutputTarget(0)])
    with PolyCAM(model, layers[::-1], variant="+", batch_size=64, progress=False) as cam:
        np.testing.assert_allclose(cam(x, [ClassifierOutputTarget(0)]), forward_order, atol=1e-6)
    with pytest.raises(ValueError, match="per_layer"):
        PolyCAM(model, layers)(x, per_layer=True)
    with pytest.raises(ValueError, match="variant must be one of"):
        PolyCAM(model, layers, variant="pm")
    with pytest.raises(TypeError, match="lnorm must be True or False"):
        PolyCAM(model, layers, lnorm="yes")


# -- OptiCAM -----------------------------------------------------------------------------------------
def _opti_score(u, a, w, b, category):
    """The objective of ConvGapLinear written out: logit of X masked by the min-max scaled map."""
    s = np.tensordot(_softmax(u), np.maximum(a, 0), axes=1)
    s = (s - s.min()) / max(s.max() - s.min(), 1e-12)
    return (w @ (a * s).mean(axis=(1, 2)) + b)[category]


def test_opti_cam_golden():
    model = ConvGapLinear(W, B).eval()
    w, b, a = np.array(W), np.array(B), X[0].numpy().astype(np.float64)
    category = 0
    # no step: uniform weights, the map is the mean of the ReLU'd channels
    with OptiCAM(model, [model.conv], iterations=0, progress=False) as cam:
        np.testing.assert_allclose(cam(X, [ClassifierOutputTarget(category)])[0], _minmax(np.maximum(a, 0).mean(0)), atol=1e-5)
    # one Adam step moves each weight by learning_rate in the direction that raises the score (finite differences)
    u = np.full(2, 0.5)
    grad = [(_opti_score(u + d, a, w, b, category) - _opti_score(u - d, a, w, b, category)) / 2e-4 for d in np.eye(2) * 1e-4]
    stepped = u + 0.1 * np.sign(grad)
    expected = _minmax(np.tensordot(_softmax(stepped), np.maximum(a, 0), axes=1))
    with OptiCAM(model, [model.conv], iterations=1, learning_rate=0.1, progress=False) as cam:
        got = cam(X, [ClassifierOutputTarget(category)])
        weights = cam.optimised_weights(cam.capture(X, [ClassifierOutputTarget(category)]), 0)
    np.testing.assert_allclose(weights[0].numpy(), _softmax(stepped), atol=1e-5)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_opti_cam_raises_the_masked_score_and_leaves_the_model_alone():
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(4)]
    before = model_snapshot(model)
    scores = []
    for iterations in (0, 20):
        cam = OptiCAM(model, [model.features[4]], iterations=iterations, progress=False)
        capture = cam.capture(x, targets)
        weights = cam.optimised_weights(capture, 0)
        with torch.no_grad():
            logits = torch.log(weights)  # softmax(log w) = w
            mask = opti_cam_mask(torch.relu(capture.activations[0]), logits, (16, 16))
            scores.append(model(x * mask[:, None]).gather(1, torch.tensor([[2], [4]]))[:, 0])
    assert (scores[1] > scores[0]).all()
    assert_model_untouched(model, before)


def test_opti_cam_errors():
    model = TinyCNN().eval()
    with pytest.raises(ValueError, match="iterations must be a non-negative integer"):
        OptiCAM(model, [model.features[4]], iterations=-1)
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        OptiCAM(model, [model.features[4]], learning_rate=0)
