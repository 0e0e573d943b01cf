"""GroupCAM: golden values computed on paper, the authors' algorithm written out, batches, precision, bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN

from camlib import GroupCAM
from camlib.group_cam import group_masks
from camlib.registry import get_method
from camlib.utils.image import gaussian_blur
from camlib.utils.messages import BlankMapWarning
from camlib.utils.model_targets import ClassifierOutputTarget


class ConvGapLinear(torch.nn.Module):
    """1x1 identity conv, global average pooling, linear head: every score is a mean, computable on paper."""

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


#: channel 0 peaks at (1, 1), channel 1 at (0, 0)
X = torch.tensor([[[[1.0, 0.0], [2.0, 3.0]], [[4.0, 1.0], [0.0, 2.0]]]])
#: a 3-tap blur with a huge sigma is a 3-tap mean; mirrored borders on 2 pixels: [a, b] -> [(a + 2b) / 3, (2a + b) / 3]
FLAT_BLUR = {"blur_sigma": 1e4, "blur_kernel": 3}


def _cam(model, **kwargs):
    return GroupCAM(model, [model.conv], groups=2, progress=False, **FLAT_BLUR, **kwargs)


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


def test_golden_on_paper():
    """Class 1, raw scores. Grad-CAM weights: w_1 / 4 = (0.125, 0.5), both positive, one channel per group.
    Each group map keeps only its peak (the 70th percentile of 4 distinct values lies between the two largest):
    M_0 = 1 at (1, 1), M_1 = 1 at (0, 0). The blurred input, along H then W:
    channel 0 [[17, 16], [10, 11]] / 9, channel 1 [[14, 13], [16, 20]] / 9.
    A masked input is the blurred one with one pixel put back, so its score gain is w_1 . (X_p - blur_p) / 4:
    s_0 = (0.5 (3 - 11/9) + 2 (2 - 20/9)) / 4 = 1/9, s_1 = (0.5 (1 - 17/9) + 2 (4 - 14/9)) / 4 = 10/9.
    The map s_0 M_0 + s_1 M_1, min-max scaled: 1 at (0, 0), 0.1 at (1, 1), 0 elsewhere."""
    model = ConvGapLinear().eval()
    blurred = gaussian_blur(X, 1e4, 3, border="reflect")[0]
    np.testing.assert_allclose(blurred[0].numpy(), np.array([[17, 16], [10, 11]]) / 9, rtol=1e-5)
    np.testing.assert_allclose(blurred[1].numpy(), np.array([[14, 13], [16, 20]]) / 9, rtol=1e-5)
    got = _cam(model, softmax=False)(X, [ClassifierOutputTarget(1)])
    np.testing.assert_allclose(got[0], [[1.0, 0.0], [0.0, 0.1]], atol=1e-5)


def test_golden_with_probabilities():
    """The same masks; the gains are differences of softmax probabilities (the authors' default)."""
    model = ConvGapLinear().eval()
    w, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    a = X[0].numpy()
    blurred = np.stack([np.array([[17, 16], [10, 11]]) / 9, np.array([[14, 13], [16, 20]]) / 9])

    def prob(image):
        z = w @ image.mean(axis=(1, 2)) + b
        e = np.exp(z - z.max())
        return (e / e.sum())[1]

    gains = []
    for peak in ((1, 1), (0, 0)):
        mask = np.zeros((2, 2))
        mask[peak] = 1
        gains.append(prob(a * mask + blurred * (1 - mask)) - prob(blurred))
    assert gains[0] < 0 < gains[1]  # only the second group raises class 1's probability
    expected = np.maximum(gains[1] * np.array([[1.0, 0], [0, 0]]) + gains[0] * np.array([[0, 0], [0, 1.0]]), 0)
    expected = expected / expected.max()
    np.testing.assert_allclose(_cam(model)(X, [ClassifierOutputTarget(1)])[0], expected, atol=1e-5)


def test_no_valid_group_gives_a_blank_map_and_says_why():
    """Class 2 has weights (-1, 0): every ReLU'd group map is 0, no group masks anything."""
    model = ConvGapLinear().eval()
    with pytest.warns(BlankMapWarning, match=r"image\(s\) \[0\] is blank: every channel group's map is constant"):
        got = _cam(model, softmax=False)(X, [ClassifierOutputTarget(2)])
    assert got.max() == 0


def test_no_gain_gives_a_blank_map_and_says_why():
    """On noise, the untrained TinyCNN finds classes 1 and 3 more in the blurred input than in any group's
    masked input: no region to show. Its top classes are raised by some groups: maps, and no warning."""
    model = TinyCNN(num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = GroupCAM(model, [model.features[-1]], progress=False)
    with pytest.warns(BlankMapWarning, match=r"image\(s\) \[0, 1\] is blank: no channel group's masked input raises"):
        got = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert got.max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlankMapWarning)
        top = cam(x)
    assert (top.reshape(2, -1).max(axis=1) > 0).all()
    assert get_method("groupcam").capabilities.gain_over_baseline


def _group_cam_by_hand(model, x, category, groups):
    """Group-CAM as the authors' code computes it, one image and one group at a time, numpy's percentile."""
    store = {}
    handle = model.features[4].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
        (grad,) = torch.autograd.grad(out[0, category], store["a"])
    finally:
        handle.remove()
    weighted = grad.mean(dim=(2, 3))[:, :, None, None] * store["a"].detach()
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
    total = torch.relu(total).numpy()
    return (total - total.min()) / (total.max() - total.min() + 1e-7)


def test_matches_the_authors_algorithm_and_batches_equal_single_images():
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        categories = model(x).argmax(1).tolist()  # classes the model sees: maps that are not blank
    with GroupCAM(model, [model.features[4]], groups=4, batch_size=5, progress=False) as cam:
        batched = cam(x, [ClassifierOutputTarget(c) for c in categories])
        singles = [cam(x[i : i + 1], [ClassifierOutputTarget(c)])[0] for i, c in enumerate(categories)]
    for i, category in enumerate(categories):
        np.testing.assert_allclose(batched[i], singles[i], atol=1e-6)
        np.testing.assert_allclose(batched[i], _group_cam_by_hand(model, x[i : i + 1], category, 4), atol=1e-4)
    assert all(m.max() > 0 for m in batched)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_model_gives_the_float32_map(dtype):
    """The top class (a target the untrained model sees): masks, blur and blend in float32."""
    model = TinyCNN(num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlankMapWarning)
        expected = GroupCAM(model, [model.features[-1]], progress=False)(x)
        half = copy.deepcopy(model).to(dtype)
        got = GroupCAM(half, [half.features[-1]], progress=False)(x)
    assert got.dtype == np.float32 and got.max() > 0
    for g, e in zip(got, expected):
        assert np.corrcoef(g.ravel(), e.ravel())[0, 1] > 0.98


def test_bad_arguments():
    model = TinyCNN().eval()
    layers = [model.features[4]]
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        GroupCAM(model, layers, groups=0)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        GroupCAM(model, layers, groups=True)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        GroupCAM(model, layers, blur_kernel=50)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        GroupCAM(model, layers, blur_sigma=0)
    with pytest.raises(TypeError, match="softmax must be True or False"):
        GroupCAM(model, layers, softmax=1)
    with pytest.raises(ValueError, match="eigen_smooth"):
        GroupCAM(model, layers, progress=False)(torch.randn(1, 3, 16, 16), eigen_smooth=True)
